"""The Debian package's whole life under a real systemd (PID 1 of a PID and mount namespace in
the IPVS VM, as in test_capabilities_kernel.py): `apt-get install ./*.deb` starts the service,
which answers a scrape on 10320 as its own system user; an upgrade to a rebuilt package keeps
an edited /etc/default/ingress-ipvs-exporter and restarts the service with it; `apt-get remove`
stops it; `apt-get purge` removes its files and its user.

The package is make deb's (dist/, built on the host: the VM has no network); the "rebuilt"
one is that package repacked with the next Debian revision.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from ipvs_testlib import scrape, sh, unavailable
from test_capabilities_kernel import _in_systemd, _wait_metrics, private_systemd

REPO = Path(__file__).resolve().parents[2]
NAME = "ingress-ipvs-exporter"
DEFAULT = Path(f"/etc/default/{NAME}")
URL = "http://127.0.0.1:10320/metrics"
APT = ("env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "-y", "-q")


def _debs(tmp: Path) -> tuple[Path, Path]:
    """make deb's package, and the same repacked as revision +1 (what a rebuild gives)."""
    found = sorted((REPO / "dist").glob(f"{NAME}_*_amd64.deb"))
    if not found:
        unavailable("no dist/ingress-ipvs-exporter_*_amd64.deb: make deb")
    first = found[-1]
    tree = tmp / "tree"
    sh("dpkg-deb", "-R", str(first), str(tree))
    control = (tree / "DEBIAN/control").read_text()
    version = re.search(r"(?m)^Version: (.+)-(\d+)$", control)
    assert version, control
    bumped = f"{version.group(1)}-{int(version.group(2)) + 1}"
    (tree / "DEBIAN/control").write_text(control.replace(version.group(0), f"Version: {bumped}"))
    second = tmp / f"{NAME}_{bumped}_amd64.deb"
    sh("dpkg-deb", "--root-owner-group", "-Zxz", "-b", str(tree), str(second))
    return first, second


def _state(pid1: int, prop: str) -> str:
    return _in_systemd(pid1, "systemctl", "show", "-p", prop, "--value", f"{NAME}.service").strip()


def _apt(pid1: int, *args: str) -> None:
    res = subprocess.run(
        ["nsenter", "-t", str(pid1), "-a", *APT, *args],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert res.returncode == 0, f"apt-get {' '.join(args)}: {res.stdout[-3000:]}\n{res.stderr[-3000:]}"


def _user_exists() -> bool:
    return subprocess.run(["getent", "passwd", NAME], capture_output=True, check=False).returncode == 0


@pytest.mark.kernel
def test_deb_install_upgrade_remove_purge(netns, tmp_path):
    if not os.access("/lib/systemd/systemd", os.X_OK) or not shutil.which("apt-get"):
        unavailable("systemd or apt is not installed: scripts/install-deps test")
    first, second = _debs(tmp_path)
    name, path = netns
    sh("ipvsadm", "-A", "-f", "256", "-s", "rr", ns=name)
    # virtme-ng bind-mounts a generated file on /etc/shadow, which useradd (adduser, in the
    # package's postinst) cannot replace: the same content as a plain file, as on a node.
    shadow = Path("/etc/shadow")
    if os.path.ismount(shadow) or f" {shadow} " in Path("/proc/self/mountinfo").read_text():
        text = shadow.read_text()
        sh("umount", str(shadow))
        shadow.write_text(text)
    # systemd's default unit: an empty target, so that nothing else of the host's starts
    idle = Path("/etc/systemd/system/captest-idle.target")
    idle.write_text("[Unit]\nDescription=nothing but what the test starts\n")
    try:
        with private_systemd(idle.name) as pid1:
            # install: enabled, started, serving 10320 as its own user
            _apt(pid1, "install", str(first))
            assert _state(pid1, "ActiveState") == "active" and _state(pid1, "UnitFileState") == "enabled"
            got = _wait_metrics(URL, lambda s: any(n == "ipvs_up" for n, _ in s), "the installed service")
            assert [dict(labels)["version"] for n, labels in got if n == "ipvs_exporter_build_info"]
            pid = _state(pid1, "MainPID")
            status = _in_systemd(pid1, "cat", f"/proc/{pid}/status")
            uid = re.search(r"(?m)^Uid:\s+(\d+)", status).group(1)
            assert _in_systemd(pid1, "getent", "passwd", uid).startswith(f"{NAME}:"), uid
            assert f"path=/opt/{NAME}/venv/bin/ingress_ipvs_exporter " in _state(pid1, "ExecStart")

            # the operator edits the flags; the upgrade keeps them and restarts the service
            edited = f'ARGS="--listen-address :10320 --namespace-path {path}"\n'
            DEFAULT.write_text(edited)
            _apt(pid1, "install", str(second))
            assert DEFAULT.read_text() == edited
            assert second.name.split("_")[1] in _in_systemd(pid1, "dpkg-query", "-W", NAME)
            assert _state(pid1, "ActiveState") == "active" and _state(pid1, "MainPID") != pid
            up = ("ipvs_up", frozenset({("namespace", path)}))
            got = _wait_metrics(URL, lambda s: up in s, "the upgraded service with the edited flags")
            assert got[up] == 1, got.get(up)

            # remove: stopped, its venv gone, configuration and user kept
            _apt(pid1, "remove", NAME)
            assert _state(pid1, "ActiveState") in ("inactive", "")
            with pytest.raises(OSError):
                scrape(URL)
            assert not Path(f"/opt/{NAME}/venv").exists() and DEFAULT.exists() and _user_exists()

            # purge: configuration, files and user gone
            _apt(pid1, "purge", NAME)
            assert not DEFAULT.exists() and not Path(f"/opt/{NAME}").exists() and not _user_exists()
            res = subprocess.run(["dpkg-query", "-W", "-f=${Status}", NAME], capture_output=True, text=True)
            assert "installed" not in res.stdout.replace("not-installed", ""), res.stdout
    finally:  # the rest lives in the VM's throw-away overlays of /etc, /var and /opt
        idle.unlink(missing_ok=True)
