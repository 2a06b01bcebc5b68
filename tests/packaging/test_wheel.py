"""The binary wheel (scripts/build-wheel) carries its own libnl, and the sdist fails clearly without it.

Runs on the host, no kernel: builds the wheel (or takes dist/'s when it is newer than every
source), installs it into a fresh venv and shows that the extension's libnl resolves to the
copy inside that venv, and that the console script runs. Needs the build packages
(scripts/install-deps build) and PyPI for the build and the runtime dependencies.
"""
from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD_WHEEL = REPO / "scripts" / "build-wheel"
# What the wheel is built from: a newer one of these makes dist/'s wheel stale.
SOURCES = ["pyproject.toml", "setup.py", "build_ipvs.py", "csrc/*", "src/ingress_ipvs_exporter/*.py"]
TIMEOUT = 600


def _env(**extra: str) -> dict[str, str]:
    """The environment without this venv's traces, so the new venv stands alone."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if not p.startswith(str(REPO / ".venv")))
    env["COLUMNS"] = "1000"  # pip renders build errors with rich: no wrapping of long lines
    env.update(extra)
    return env


def _run(argv, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("env", _env())
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=TIMEOUT,
                          check=False, **kw)


def _project_version() -> str:
    text = (REPO / "pyproject.toml").read_text()
    return re.search(r'(?m)^version\s*=\s*"([^"]+)"', text).group(1)


def _fresh_wheel() -> Path | None:
    """dist/'s manylinux wheel of this version when it is newer than every source, else None."""
    wheels = sorted((REPO / "dist").glob(f"ingress_ipvs_exporter-{_project_version()}-*manylinux*.whl"),
                    key=lambda p: p.stat().st_mtime)
    if not wheels:
        return None
    newest_source = max(p.stat().st_mtime for pattern in SOURCES for p in REPO.glob(pattern))
    return wheels[-1] if wheels[-1].stat().st_mtime > newest_source else None


@pytest.fixture(scope="module")
def wheel() -> Path:
    found = _fresh_wheel()
    if found:
        return found
    res = _run([BUILD_WHEEL], cwd=REPO, env=dict(os.environ, COLUMNS="1000"))
    assert res.returncode == 0, f"scripts/build-wheel failed:\n{res.stdout}\n{res.stderr}"
    built = Path(res.stdout.strip().splitlines()[-1])
    assert built.is_file(), f"scripts/build-wheel printed {built!r}, which is not a file"
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory) -> Path:
    """A new venv with only the wheel (and its PyPI dependencies) installed."""
    root = tmp_path_factory.mktemp("wheelvenv") / "venv"
    res = _run([sys.executable, "-m", "venv", root])
    assert res.returncode == 0, res.stderr
    res = _run([root / "bin" / "python", "-m", "pip", "install", "-q", wheel], cwd=root)
    assert res.returncode == 0, f"pip install {wheel.name} failed:\n{res.stdout}\n{res.stderr}"
    return root


def _site_packages(venv: Path) -> Path:
    out = _run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['platlib'])"])
    return Path(out.stdout.strip()).resolve()


def test_wheel_is_manylinux_with_libnl_inside(wheel: Path):
    assert re.search(r"-manylinux_\d+_\d+_x86_64\.whl$", wheel.name), wheel.name
    import zipfile
    names = zipfile.ZipFile(wheel).namelist()
    libs = [n for n in names if n.startswith("ingress_ipvs_exporter.libs/")]
    assert any(re.search(r"/libnl-3-[0-9a-f]+\.so", n) for n in libs), libs
    assert any(re.search(r"/libnl-genl-3-[0-9a-f]+\.so", n) for n in libs), libs
    assert any(re.match(r"ingress_ipvs_exporter/_ipvs_cffi.*\.so$", n) for n in names), names


def test_installed_extension_links_the_bundled_libnl(venv: Path):
    site = _site_packages(venv)
    (ext,) = (site / "ingress_ipvs_exporter").glob("_ipvs_cffi*.so")
    res = _run(["ldd", ext])
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
        assert path.is_relative_to(site / "ingress_ipvs_exporter.libs"), \
            f"{name} resolves to {path}, not to the wheel's copy under {site}"
        assert not str(path).startswith(("/usr/lib", "/lib")), f"{name} resolves to the system's {path}"


def test_loaded_process_maps_only_the_bundled_libnl(venv: Path):
    """What ldd predicts is what the dynamic loader does: no system libnl gets mapped."""
    site = _site_packages(venv)
    code = ("import ingress_ipvs_exporter._ipvs_cffi\n"
            "print('\\n'.join(sorted({l.split()[-1] for l in open('/proc/self/maps') if 'libnl' in l})))")
    res = _run([venv / "bin" / "python", "-c", code], cwd=venv)
    assert res.returncode == 0, res.stderr
    mapped = [Path(p).resolve() for p in res.stdout.split()]
    assert len(mapped) >= 2, res.stdout
    for path in mapped:
        assert path.is_relative_to(site), f"the exporter loaded {path}, not the wheel's libnl"


def test_console_script_runs(venv: Path, wheel: Path):
    exe = venv / "bin" / "ingress_ipvs_exporter"
    res = _run([exe, "--help"], cwd=venv)
    assert res.returncode == 0, res.stderr
    for flag in ("--listen-address", "--namespace-path", "--telemetry-path", "--version"):
        assert flag in res.stdout, f"--help lacks {flag}:\n{res.stdout}"
    res = _run([exe, "--version"], cwd=venv)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"ingress_ipvs_exporter {_project_version()}"


def _missing_line(why: str) -> str:
    """build_ipvs.py's one-line message, read from its source (importing it would run the build)."""
    tree = ast.parse((REPO / "build_ipvs.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and [t.id for t in node.targets if isinstance(t, ast.Name)] == ["MISSING"]:
            return ast.literal_eval(node.value).format(why=why)
    raise AssertionError("build_ipvs.py has no MISSING message")


def test_source_build_without_libnl_says_what_to_install(tmp_path: Path):
    """Building from source where pkg-config cannot find libnl stops with one actionable line."""
    src = tmp_path / "src-copy"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "build_ipvs.py", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "csrc", src / "csrc")
    shutil.copytree(REPO / "src", src / "src",
                    ignore=shutil.ignore_patterns("*.so", "_ipvs_cffi.c", "__pycache__", "*.egg-info"))
    res = _run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "-w", tmp_path / "out"], cwd=src,
               env=_env(PKG_CONFIG_PATH="/nonexistent", PKG_CONFIG_LIBDIR="/nonexistent"))
    output = res.stdout + res.stderr
    assert res.returncode != 0, f"the build succeeded without libnl:\n{output}"
    want = _missing_line("pkg-config has no libnl-genl-3.0")
    assert "apt-get install pkg-config libnl-genl-3-dev" in want and "libnl3-devel" in want
    assert want in [line.strip() for line in output.splitlines()], \
        f"pip's output lacks the line\n  {want}\n---\n{output}"
    assert not list(tmp_path.glob("out/*.whl"))
