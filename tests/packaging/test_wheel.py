"""The binary wheels (scripts/build-wheel) carry their own libnl and need no glibc newer than
their manylinux2014 tag, and a source build fails with one line when a prerequisite is missing.

Runs on the host, no kernel: takes the wheels (conftest.py), checks both, installs the x86_64
one into a fresh venv and shows that the extension's libnl resolves to the copy inside that
venv, and that the console script runs. Needs scripts/install-deps test and PyPI.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from packaging_lib import ARCHES, clean_env, project_version, run

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(wheels: dict[str, Path]) -> Path:
    """The x86_64 wheel: the one this host can load."""
    return wheels["x86_64"]


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory) -> Path:
    """A new venv with only the wheel (and its PyPI dependencies) installed."""
    root = tmp_path_factory.mktemp("wheelvenv") / "venv"
    res = run([sys.executable, "-m", "venv", root])
    assert res.returncode == 0, res.stderr
    res = run([root / "bin" / "python", "-m", "pip", "install", "-q", wheel], cwd=root)
    assert res.returncode == 0, f"pip install {wheel.name} failed:\n{res.stdout}\n{res.stderr}"
    return root


def _site_packages(venv: Path) -> Path:
    out = run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['platlib'])"])
    return Path(out.stdout.strip()).resolve()


@pytest.mark.parametrize("arch", ARCHES)
def test_wheel_is_manylinux2014_with_libnl_inside(wheels: dict[str, Path], arch: str):
    wheel = wheels[arch]
    assert wheel.name.endswith(f"-cp39-abi3-manylinux2014_{arch}.manylinux_2_17_{arch}.whl"), wheel.name
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    libs = [n for n in names if n.startswith("ingress_ipvs_exporter.libs/")]
    assert any(re.search(r"/libnl-3-[0-9a-f]+\.so", n) for n in libs), libs
    assert any(re.search(r"/libnl-genl-3-[0-9a-f]+\.so", n) for n in libs), libs
    for ext in ("_ipvs_cffi", "_speedups_cffi"):  # the netlink shim and the renderer's speedups
        assert any(re.match(rf"ingress_ipvs_exporter/{ext}\.abi3\.so$", n) for n in names), names


def _glibc_needs(so: Path) -> set[tuple[int, ...]]:
    """The GLIBC_ symbol versions an ELF object needs (readelf reads any architecture's)."""
    res = run(["readelf", "-V", "--wide", so])
    assert res.returncode == 0, res.stderr
    return {tuple(map(int, v.split("."))) for v in re.findall(r"Name: GLIBC_([0-9.]+)", res.stdout)}


@pytest.mark.parametrize("arch", ARCHES)
def test_no_object_needs_a_newer_glibc_than_the_tag(wheels: dict[str, Path], arch: str, tmp_path: Path):
    """Every shared object in the wheel, the C units and the bundled libnl alike, needs at most the
    glibc its manylinux_2_X tag promises, and is built for the wheel's architecture."""
    import zipfile

    wheel = wheels[arch]
    tag = tuple(map(int, re.search(rf"manylinux_(\d+)_(\d+)_{arch}\.whl$", wheel.name).groups()))
    with zipfile.ZipFile(wheel) as z:
        objects = [n for n in z.namelist() if re.search(r"\.so(\.|$)", n)]
        z.extractall(tmp_path, objects)
    assert len(objects) == 4, objects  # the shim, the speedups, libnl-3, libnl-genl-3
    machine = {"x86_64": "Advanced Micro Devices X86-64", "aarch64": "AArch64"}[arch]
    for name in objects:
        needs = _glibc_needs(tmp_path / name)
        assert needs and max(needs) <= tag, f"{name} needs GLIBC_{'.'.join(map(str, max(needs)))} > {tag}"
        header = run(["readelf", "-h", tmp_path / name]).stdout
        assert f"Machine:                           {machine}" in header, header


def test_wheel_carries_the_libnl_licence(wheel: Path):
    """libnl is LGPL-2.1: the wheel that bundles it carries its notice (what, licence, where the
    source is) and the licence text, in .dist-info/licenses/ (pyproject's license-files)."""
    import zipfile

    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        notice = [n for n in names if re.search(r"\.dist-info/licenses/LICENSES/libnl-NOTICE\.txt$", n)]
        lgpl = [n for n in names if re.search(r"\.dist-info/licenses/LICENSES/LGPL-2\.1\.txt$", n)]
        assert notice and lgpl, [n for n in names if ".dist-info/" in n]
        text = z.read(notice[0]).decode()
        assert "GNU LESSER GENERAL PUBLIC LICENSE" in z.read(lgpl[0]).decode()
        metadata = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert (
        "LGPL-2.1" in text and "https://github.com/thom311/libnl" in text and "apt-get source libnl3" in text
    )
    for lib in ("libnl-3", "libnl-genl-3"):
        assert f"ingress_ipvs_exporter.libs/{lib}-" in text
    assert "License-File: LICENSES/libnl-NOTICE.txt" in metadata
    assert "License-File: LICENSE" in metadata and "License-Expression: MIT" in metadata


def test_installed_extension_links_the_bundled_libnl(venv: Path):
    site = _site_packages(venv)
    (ext,) = (site / "ingress_ipvs_exporter").glob("_ipvs_cffi*.so")
    res = run(["ldd", ext])
    assert res.returncode == 0, res.stderr
    libnl = {}
    for line in res.stdout.splitlines():
        name, arrow, target = line.strip().partition(" => ")
        if name.startswith("libnl"):
            assert arrow, f"ldd: {line.strip()}"
            libnl[name] = Path(target.split(" (")[0]).resolve()
    assert any(n.startswith("libnl-3-") for n in libnl), f"no libnl-3 in:\n{res.stdout}"
    assert any(n.startswith("libnl-genl-3-") for n in libnl), f"no libnl-genl-3 in:\n{res.stdout}"
    for name, path in libnl.items():
        assert path.is_relative_to(site / "ingress_ipvs_exporter.libs"), (
            f"{name} resolves to {path}, not to the wheel's copy under {site}"
        )
        assert not str(path).startswith(("/usr/lib", "/lib")), f"{name} resolves to the system's {path}"


def test_loaded_process_maps_only_the_bundled_libnl(venv: Path):
    """What ldd predicts is what the dynamic loader does: no system libnl gets mapped."""
    site = _site_packages(venv)
    code = (
        "import ingress_ipvs_exporter._ipvs_cffi\n"
        "print('\\n'.join(sorted({l.split()[-1] for l in open('/proc/self/maps') if 'libnl' in l})))"
    )
    res = run([venv / "bin" / "python", "-c", code], cwd=venv)
    assert res.returncode == 0, res.stderr
    mapped = [Path(p).resolve() for p in res.stdout.split()]
    assert len(mapped) >= 2, res.stdout
    for path in mapped:
        assert path.is_relative_to(site), f"the exporter loaded {path}, not the wheel's libnl"


def test_console_script_runs(venv: Path, wheel: Path):
    exe = venv / "bin" / "ingress_ipvs_exporter"
    res = run([exe, "--help"], cwd=venv)
    assert res.returncode == 0, res.stderr
    for flag in ("--listen-address", "--namespace-path", "--telemetry-path", "--version"):
        assert flag in res.stdout, f"--help lacks {flag}:\n{res.stdout}"
    res = run([exe, "--version"], cwd=venv)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"ingress_ipvs_exporter {project_version()}"


def test_build_info_metric_carries_the_version(venv: Path):
    """pyproject.toml's version is the one source: the installed wheel's build-info metric says it too."""
    code = (
        "from ingress_ipvs_exporter.collector import BuildInfoCollector\n"
        "s = next(BuildInfoCollector().collect()).samples[0]\nprint(s.name, s.labels['version'], s.labels['libnl_version'])"
    )
    res = run([venv / "bin" / "python", "-c", code], cwd=venv)
    assert res.returncode == 0, res.stderr
    name, version, libnl = res.stdout.split()
    assert name == "ipvs_exporter_build_info" and version == project_version()
    assert re.fullmatch(r"3\.\d+\.\d+", libnl), libnl


def _missing_line(need: str, why: str) -> str:
    """build_ipvs.py's one-line message, from its source (importing it would run the build): its
    MISSING, NEEDS and missing() alone, evaluated."""
    tree = ast.parse((REPO / "build_ipvs.py").read_text())
    keep = [
        node
        for node in tree.body
        if (
            isinstance(node, ast.Assign)
            and {t.id for t in node.targets if isinstance(t, ast.Name)} & {"MISSING", "NEEDS"}
        )
        or (isinstance(node, ast.FunctionDef) and node.name == "missing")
    ]
    assert len(keep) == 3, "build_ipvs.py lacks MISSING, NEEDS or missing()"
    space: dict = {}
    exec(compile(ast.Module(body=keep, type_ignores=[]), "build_ipvs.py", "exec"), space)
    return space["missing"](need, why)


def _source_copy(tmp_path: Path) -> Path:
    """What `pip install .` sees in a clean checkout: the sources without this tree's build outputs."""
    src = tmp_path / "src-copy"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "build_ipvs.py", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, src / name)
    for name in ("csrc", "LICENSES"):
        shutil.copytree(REPO / name, src / name)
    shutil.copytree(
        REPO / "src",
        src / "src",
        ignore=shutil.ignore_patterns("*.so", "_*_cffi.c", "__pycache__", "*.egg-info"),
    )
    return src


def test_pip_install_from_source_links_the_system_libnl(tmp_path: Path):
    """`pip install .` into a fresh venv compiles the shim against the system's libnl-genl-3."""
    src = _source_copy(tmp_path)
    root = tmp_path / "venv"
    assert run([sys.executable, "-m", "venv", root]).returncode == 0
    res = run([root / "bin" / "python", "-m", "pip", "install", "-q", src], cwd=tmp_path)
    assert res.returncode == 0, f"pip install . failed:\n{res.stdout}\n{res.stderr}"
    (ext,) = (_site_packages(root) / "ingress_ipvs_exporter").glob("_ipvs_cffi*.so")
    ldd = run(["ldd", ext])
    libnl = [
        line.split(" => ")[1].split(" (")[0]
        for line in ldd.stdout.splitlines()
        if line.strip().startswith("libnl") and " => " in line
    ]
    assert len(libnl) == 2, ldd.stdout
    for path in libnl:
        assert not Path(path).resolve().is_relative_to(root), path
        assert re.fullmatch(r"/(usr/)?lib(64)?/(x86_64-linux-gnu/)?libnl-(genl-)?3\.so\.200", path), path
    assert not (_site_packages(root) / "ingress_ipvs_exporter.libs").exists()
    res = run([root / "bin" / "ingress_ipvs_exporter", "--version"], cwd=tmp_path)
    assert res.returncode == 0 and res.stdout.strip() == f"ingress_ipvs_exporter {project_version()}", res


def _fake_cc(tmp_path: Path, body: str) -> str:
    cc = tmp_path / "fake-cc"
    cc.write_text(f"#!/bin/sh\n{body}\n")
    cc.chmod(0o755)
    return str(cc)


def _pip_wheel(src: Path, out: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "-w", out], cwd=src, env=env)


def _assert_one_line(res: subprocess.CompletedProcess, want: str, out: Path) -> None:
    output = res.stdout + res.stderr
    assert res.returncode != 0, f"the build succeeded:\n{output}"
    assert want in [line.strip() for line in output.splitlines()], (
        f"pip's output lacks the line\n  {want}\n---\n{output}"
    )
    # the line is all the build said: no setuptools log, no traceback
    assert "Traceback" not in output and "[1 lines of output]" in output, output
    assert not list(out.glob("*.whl"))


@pytest.mark.parametrize("missing", ["libnl", "pkg-config", "compiler", "python-headers"])
def test_source_build_without_a_prerequisite_says_what_to_install(tmp_path: Path, missing: str):
    """Building from source without pkg-config, libnl's headers, a compiler or Python's headers
    stops with one actionable line naming the Debian and Fedora packages."""
    src = _source_copy(tmp_path)
    include = sysconfig.get_paths()["include"]
    if missing == "libnl":
        env = clean_env(PKG_CONFIG_PATH="/nonexistent", PKG_CONFIG_LIBDIR="/nonexistent")
        want = _missing_line("libnl", "pkg-config has no libnl-genl-3.0")
    elif (
        missing == "pkg-config"
    ):  # a PATH without pkg-config (pip and the build backend run by absolute path)
        (tmp_path / "empty-bin").mkdir()
        env, want = (
            clean_env(PATH=str(tmp_path / "empty-bin")),
            _missing_line("libnl", "pkg-config is not installed"),
        )
    elif missing == "compiler":
        env = clean_env(CC="/nonexistent/gcc")
        want = _missing_line("compiler", "cannot run /nonexistent/gcc: No such file or directory")
    else:  # the real gcc, without Python's include directory: as on a host without python3-dev
        cc = _fake_cc(
            tmp_path, f'for a; do shift; [ "$a" = "-I{include}" ] || set -- "$@" "$a"; done; exec gcc "$@"'
        )
        env, want = clean_env(CC=cc), _missing_line("python", f"{include}/Python.h")
    assert "apt-get install" in want and "dnf install" in want
    _assert_one_line(_pip_wheel(src, tmp_path / "out", env), want, tmp_path / "out")


def test_a_stale_build_dir_never_hides_a_broken_compiler(tmp_path: Path):
    """A build/ from an earlier good build is in the tree; the compiler now fails: so does the build."""
    src = _source_copy(tmp_path)
    res = _pip_wheel(src, tmp_path / "first", clean_env())
    assert res.returncode == 0 and (src / "build").is_dir(), res.stdout + res.stderr
    cc = _fake_cc(tmp_path, 'echo "cc: fatal error: killed" >&2; exit 1')
    want = _missing_line("compiler", f"{cc} failed: cc: fatal error: killed")
    _assert_one_line(_pip_wheel(src, tmp_path / "out", clean_env(CC=cc)), want, tmp_path / "out")


def _newer(wheel: Path, into: Path) -> tuple[Path, str]:
    """The wheel as a later release would be: the same files, version + ".post1" (dist-info
    renamed, METADATA's Version and RECORD's hashes rewritten)."""
    import base64
    import hashlib
    import zipfile

    old = project_version()
    new = f"{old}.post1"
    out = into / wheel.name.replace(f"-{old}-", f"-{new}-")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        record = []
        for info in src.infolist():
            name = info.filename.replace(f"-{old}.dist-info/", f"-{new}.dist-info/")
            data = src.read(info)
            if name.endswith(".dist-info/METADATA"):
                data = re.sub(rb"(?m)^Version: .*$", f"Version: {new}".encode(), data)
            if name.endswith(".dist-info/RECORD"):
                record_name = name
                continue
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{name},sha256={digest},{len(data)}")
            dst.writestr(zipfile.ZipInfo(name, info.date_time), data)
        dst.writestr(record_name, "\n".join([*record, f"{record_name},,"]) + "\n")
    return out, new


def test_wheel_install_upgrade_uninstall_as_documented(wheel: Path, tmp_path: Path):
    """The README's wheel route, step by step: install, upgrade to a newer wheel (the
    command then reports the new version), uninstall (nothing of it is left)."""
    newer, new_version = _newer(wheel, tmp_path)
    root = tmp_path / "opt" / "ingress_ipvs_exporter"
    assert run([sys.executable, "-m", "venv", root]).returncode == 0
    exe = root / "bin" / "ingress_ipvs_exporter"
    for step, expect in ((wheel, project_version()), (newer, new_version)):
        res = run([root / "bin" / "pip", "install", "-q", "--upgrade", step], cwd=tmp_path)
        assert res.returncode == 0, f"pip install --upgrade {step.name}:\n{res.stdout}\n{res.stderr}"
        res = run([exe, "--version"], cwd=tmp_path)
        assert res.returncode == 0 and res.stdout.strip() == f"ingress_ipvs_exporter {expect}", res
    shutil.rmtree(root)
    assert not exe.exists() and not any((tmp_path / "opt").iterdir())
