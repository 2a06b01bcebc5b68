"""The manylinux2014 wheels run where the issue's nodes are: the x86_64 one installs with pip into
a Debian 11 root (its own python3 3.9 and glibc 2.31, older than this host's) and serves
/metrics; the aarch64 one, installed by that root's arm64 pip under qemu-user, prints
--version and serves /metrics too (ipvs_up 0 with its reason: this host's kernel has no IPVS).

The roots are made with debootstrap into build/pkgtest/ and kept (a rerun takes seconds; a fresh
clone builds them: about two minutes). The arm64 root is only unpacked (debootstrap --foreign,
then every downloaded package extracted): its python3 runs under qemu-aarch64-static with -L,
with no binfmt_misc registration on the host. The dependencies come from PyPI, downloaded on
the host for CPython 3.9 and that architecture, and installed offline in the root.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from ipvs_testlib import running_exporter, scrape, unavailable
from packaging_lib import REPO, project_version, run

ROOTS = REPO / "build" / "pkgtest"
MIRROR = "http://deb.debian.org/debian"
SUITE = "bullseye"
PREFIX = "/opt/ingress_ipvs_exporter"
DEBIAN_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}


def _root(arch: str) -> Path:
    """build/pkgtest/bullseye-<arch>, made once with debootstrap."""
    root = ROOTS / f"{SUITE}-{DEBIAN_ARCH[arch]}"
    if (root / "usr/bin/python3.9").exists():
        return root
    if os.geteuid() != 0 or not shutil.which("debootstrap"):
        unavailable("needs root and debootstrap: scripts/install-deps test")
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    ROOTS.mkdir(parents=True, exist_ok=True)
    variant = ["--variant=minbase", f"--arch={DEBIAN_ARCH[arch]}"]
    if arch == "x86_64":
        argv = ["debootstrap", *variant, "--include=python3,python3-venv", SUITE, tmp, MIRROR]
    else:  # unpacked only: nothing of it can run here but through qemu
        argv = ["debootstrap", "--foreign", *variant, "--include=python3,python3-pip", SUITE, tmp, MIRROR]
    res = run(argv, timeout=1800)
    assert res.returncode == 0, f"debootstrap failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    if arch == "aarch64":
        for deb in sorted((tmp / "var/cache/apt/archives").glob("*.deb")):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp)], check=True, timeout=300)
    tmp.rename(root)
    return root


def _wheelhouse(wheel: Path, arch: str, root: Path) -> Path:
    """The wheel and its dependencies for CPython 3.9 on arch, in <root>/tmp/wheelhouse."""
    house = root / "tmp/wheelhouse"
    shutil.rmtree(house, ignore_errors=True)
    platforms = [f"--platform=manylinux2014_{arch}", f"--platform=manylinux_2_17_{arch}"]
    res = run(
        [
            *("python3", "-m", "pip", "download", "-q", "--only-binary=:all:", "--implementation=cp"),
            *("--python-version=3.9", *platforms, "-d", house, wheel),
        ]
    )
    assert res.returncode == 0, res.stdout + res.stderr
    return house


def _serves_ipvs_up_0(prefix: tuple, exe: str) -> None:
    with running_exporter("--namespace-path", "/run/netns/no-such-namespace", prefix=prefix, exe=exe) as (
        url,
        _proc,
    ):
        got = scrape(url)
    up = {labels: v for (name, labels), v in got.items() if name == "ipvs_up"}
    assert up and set(up.values()) == {0.0}, up
    # and why: the namespace is not there (this host has no IPVS to read anyway)
    errors = {
        dict(labels).get("reason"): v
        for (name, labels), v in got.items()
        if name == "ipvs_scrape_errors_total"
    }
    assert errors.get("namespace_missing", 0) >= 1, errors
    info = [labels for (name, labels) in got if name == "ipvs_exporter_build_info"]
    assert info and dict(info[0])["version"] == project_version(), info


@pytest.fixture(scope="module")
def bullseye_amd64(wheels: dict[str, Path]) -> Path:
    """The x86_64 wheel pip-installed into a venv at /opt/ingress_ipvs_exporter of the root."""
    root = _root("x86_64")
    house = _wheelhouse(wheels["x86_64"], "x86_64", root)
    shutil.rmtree(root / PREFIX.lstrip("/"), ignore_errors=True)
    res = run(["chroot", root, "python3", "-m", "venv", PREFIX])
    assert res.returncode == 0, res.stdout + res.stderr
    wheel = f"/tmp/wheelhouse/{wheels['x86_64'].name}"
    res = run(
        [
            "chroot",
            root,
            f"{PREFIX}/bin/pip",
            "install",
            "-q",
            "--no-index",
            "--find-links",
            "/tmp/wheelhouse",
            wheel,
        ]
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert house.is_dir()
    return root


def test_x86_64_wheel_installs_and_serves_on_debian_11(bullseye_amd64: Path):
    root = bullseye_amd64
    ldd = run(["chroot", root, "ldd", "--version"]).stdout.splitlines()[0]
    assert ldd.endswith(" 2.31"), ldd  # the root's own glibc, older than the wheel-building host's
    res = run(["chroot", root, f"{PREFIX}/bin/ingress_ipvs_exporter", "--version"])
    assert res.returncode == 0 and res.stdout.strip() == f"ingress_ipvs_exporter {project_version()}", res
    _serves_ipvs_up_0(("chroot", str(root)), f"{PREFIX}/bin/ingress_ipvs_exporter")


@pytest.fixture(scope="module")
def bullseye_arm64(wheels: dict[str, Path]) -> tuple[str, ...]:
    """The aarch64 wheel installed by the arm64 root's pip (under qemu) into <root>/opt/...;
    returns the command that runs that root's python3 with it on its path."""
    qemu = shutil.which("qemu-aarch64-static")
    if not qemu:
        unavailable("qemu-aarch64-static is not installed: scripts/install-deps test (qemu-user-static)")
    root = _root("aarch64")
    house = _wheelhouse(wheels["aarch64"], "aarch64", root)
    target = root / PREFIX.lstrip("/")
    shutil.rmtree(target, ignore_errors=True)
    python = (qemu, "-L", str(root), str(root / "usr/bin/python3.9"))
    res = run(
        [
            *python,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--find-links",
            house,
            "--target",
            target,
            house / wheels["aarch64"].name,
        ],
    )
    assert res.returncode == 0, res.stdout + res.stderr
    return ("env", f"PYTHONPATH={target}", *python)


def test_aarch64_wheel_prints_its_version_under_qemu(bullseye_arm64: tuple[str, ...]):
    res = run(
        [
            *bullseye_arm64,
            "-c",
            "import platform, sys; from ingress_ipvs_exporter.cli import main; "
            "print(platform.machine()); main(sys.argv[1:])",
            "--version",
        ]
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.split() == ["aarch64", "ingress_ipvs_exporter", project_version()], res.stdout


def test_aarch64_wheel_serves_metrics_under_qemu(bullseye_arm64: tuple[str, ...]):
    target = bullseye_arm64[1].split("=", 1)[1]
    _serves_ipvs_up_0(bullseye_arm64, f"{target}/bin/ingress_ipvs_exporter")
