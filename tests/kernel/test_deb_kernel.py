"""The Debian package's life on a node, under a real systemd: install, upgrade, remove, purge.

`make deb` builds dist/ingress-ipvs-exporter_*_amd64.deb (test-vm depends on it). In the VM,
a private systemd runs as PID 1 of its own namespaces and apt works in them as it would on a
node: `apt-get install ./the.deb` must start the service on 10320; an upgrade to a rebuilt
package (same files, a higher version) must keep an edited /etc/default file and restart the
service; `apt-get remove` must stop it and keep the conffile and the user; `apt-get purge` must
remove the conffile, /opt/ingress-ipvs-exporter and the system user. The VM's root is a
throw-away overlay of the host's, so nothing here reaches the host's dpkg database.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from ipvs_testlib import HANG_S, in_systemd, parse_samples, private_systemd, unavailable, wait_metrics

pytestmark = pytest.mark.kernel

NAME = "ingress-ipvs-exporter"
SERVICE = f"{NAME}.service"
DIST = Path(__file__).resolve().parents[2] / "dist"
DEFAULT_FILE = Path(f"/etc/default/{NAME}")
OPT = Path(f"/opt/{NAME}")
# systemd here starts only what it is asked to (BOOT), not every unit the image has enabled; a
# drop-in, as an operator may add one, keeps the service from pulling in sysinit.target and
# routes its output to a file (the VM runs no journald)
BOOT = Path("/etc/systemd/system/debtest-idle.target")
DROPIN = Path(f"/etc/systemd/system/{SERVICE}.d/debtest.conf")
LOG = Path("/run/debtest-exporter.log")
POLICY_RC = "/usr/sbin/policy-rc.d"
UP = ("ipvs_up", frozenset({("namespace", "/var/run/docker/netns/ingress_sbox")}))


def _the_deb() -> Path:
    debs = sorted(DIST.glob(f"{NAME}_*_amd64.deb"))
    if len(debs) != 1:
        unavailable(f"want one {NAME}_*_amd64.deb in {DIST} (make deb), found {len(debs)}")
    return debs[0]


def _rebuilt(deb: Path, into: Path) -> tuple[Path, str]:
    """The same package with a higher Debian revision, as a rebuild for an upgrade would be."""
    tree = into / "tree"
    subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True)
    control = tree / "DEBIAN/control"
    text = control.read_text()
    version = re.search(r"^Version: (\S+)$", text, re.M).group(1) + "+rebuilt1"
    control.write_text(re.sub(r"^Version: .*$", f"Version: {version}", text, flags=re.M))
    out = into / f"{NAME}_{version}_amd64.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(tree), str(out)], check=True)
    return out, version


# The VM's root is read-only below its overlays: when purge empties /opt, dpkg's rmdir of it
# fails there (EROFS), where on a node it succeeds (or finds /opt in use). That error alone is
# no failure of the package; the test checks what purge must have done.
VM_ONLY_ERROR = "cannot remove '/opt': Read-only file system"


def _apt(pid1: int, *args: str) -> str:
    """apt-get in systemd's namespaces, offline (every Depends: is installed on the image).
    An install runs the postinst, which makes the venv: ten minutes once, on a loaded host."""
    res = subprocess.run(
        ["nsenter", "-t", str(pid1), "-a", "env", "DEBIAN_FRONTEND=noninteractive",
         "apt-get", "-y", "--no-install-recommends", "-o", "Dpkg::Options::=--force-confdef",
         "-o", "Dpkg::Options::=--force-confold", *args],
        capture_output=True, text=True, timeout=HANG_S * 3, check=False,
    )  # fmt: skip
    errors = re.findall(r"^ (cannot remove .*)$", res.stdout, re.M)
    if res.returncode and errors and set(errors) == {VM_ONLY_ERROR}:
        return res.stdout
    assert res.returncode == 0, (
        f"apt-get {' '.join(args)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"
    )
    return res.stdout


def _show(pid1: int, *props: str) -> dict[str, str]:
    out = in_systemd(pid1, "systemctl", "show", "-p", ",".join(props), SERVICE, check=False)
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def _service_output() -> str:
    """What the service printed (the drop-in routes it to LOG)."""
    return LOG.read_text() if LOG.exists() else "(no output)"


def _scrape(pid1: int, url: str) -> dict:
    """A scrape from inside systemd's own network namespace (OSError when nothing answers)."""
    res = subprocess.run(
        ["nsenter", "-t", str(pid1), "-n", "curl", "-sSf", "--max-time", "60", url],
        capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip
    if res.returncode:
        raise ConnectionError(f"curl {url}: {res.stderr.strip()}")
    return parse_samples(res.stdout)


def _serving(pid1: int, port: int, what: str) -> dict:
    try:
        fetch = functools.partial(_scrape, pid1)
        return wait_metrics(f"http://127.0.0.1:{port}/metrics", lambda s: s.get(UP) == 0, what, 180, fetch)
    except AssertionError as exc:
        state = _show(pid1, "ActiveState", "SubState", "Result", "ExecMainStatus")
        raise AssertionError(f"{exc}\n{state}\n{_service_output()}") from None


def _writable_shadow(pid1: int) -> None:
    """The VM hides the host's /etc/shadow under a bind-mounted file, onto which useradd cannot
    rename its new copy (EBUSY): in systemd's namespace, the same text goes into /etc's own file."""
    if subprocess.run(["nsenter", "-t", str(pid1), "-a", "mountpoint", "-q", "/etc/shadow"]).returncode:
        return
    copy = Path("/run/debtest-shadow")
    shutil.copyfile("/etc/shadow", copy)
    in_systemd(pid1, "umount", "/etc/shadow")
    in_systemd(pid1, "install", "-m", "0640", "-g", "shadow", str(copy), "/etc/shadow")
    copy.unlink()


def _no_policy_rc(pid1: int) -> bool:
    """The VM boots a container image's root, whose /usr/sbin/policy-rc.d forbids maintainer
    scripts to start or stop services (exit 101); a node has none. True if it was hidden."""
    if not Path(POLICY_RC).exists():
        return False
    in_systemd(pid1, "mount", "--bind", "/bin/true", POLICY_RC)
    return True


def _user_exists(pid1: int) -> bool:
    res = subprocess.run(["nsenter", "-t", str(pid1), "-a", "getent", "passwd", NAME], capture_output=True)
    return res.returncode == 0


def test_deb_install_upgrade_remove_purge(tmp_path):
    if not os.access("/lib/systemd/systemd", os.X_OK):
        unavailable("systemd is not installed: scripts/install-deps test")
    deb = _the_deb()
    rebuilt, new_version = _rebuilt(deb, tmp_path)
    if DEFAULT_FILE.exists() or OPT.exists():
        unavailable(f"{NAME} is installed in this image already")
    BOOT.write_text("[Unit]\nDescription=nothing (test_deb_kernel)\nDefaultDependencies=no\n")
    DROPIN.parent.mkdir(parents=True, exist_ok=True)
    DROPIN.write_text(
        f"[Unit]\nDefaultDependencies=no\n[Service]\nStandardOutput=append:{LOG}\nStandardError=append:{LOG}\n"
    )
    # its own network namespace: the service's :10320 cannot meet another stream's listener
    with private_systemd(BOOT.name, own_network=True) as pid1:
        hidden = False
        try:
            _writable_shadow(pid1)
            hidden = _no_policy_rc(pid1)
            # install: the system user, the venv, the unit enabled and started on 10320
            _apt(pid1, "install", str(deb))
            scraped = _serving(pid1, 10320, "the installed service answering on 10320")
            assert scraped[("ipvs_up", UP[1])] == 0
            state = _show(pid1, "ActiveState", "UnitFileState", "User", "MainPID")
            assert state["ActiveState"] == "active" and state["UnitFileState"] == "enabled", state
            assert state["User"] == NAME and _user_exists(pid1), state
            status = in_systemd(pid1, "cat", f"/proc/{state['MainPID']}/status")
            assert re.search(r"^Uid:\s+[1-9]", status, re.M), status  # never root
            assert 'ARGS="--listen-address :10320"' in DEFAULT_FILE.read_text()

            # an operator edits the flags; the upgrade keeps the edit and restarts the service
            edited = 'ARGS="--listen-address :10321 --log.level debug"\n'
            DEFAULT_FILE.write_text(edited)
            in_systemd(pid1, "systemctl", "restart", SERVICE)
            _serving(pid1, 10321, "the service on the edited port")
            before = _show(pid1, "MainPID")["MainPID"]
            _apt(pid1, "install", str(rebuilt))
            assert DEFAULT_FILE.read_text() == edited, "the upgrade replaced an edited conffile"
            installed = in_systemd(pid1, "dpkg-query", "-W", "-f=${Version}", NAME)
            assert installed == new_version, installed
            _serving(pid1, 10321, "the upgraded service on the edited port")
            after = _show(pid1, "MainPID", "ActiveState")
            assert after["ActiveState"] == "active" and after["MainPID"] not in ("0", before), (before, after)

            # remove: stopped, the conffile and the user stay (until purge)
            _apt(pid1, "remove", NAME)
            assert _show(pid1, "ActiveState")["ActiveState"] in ("inactive", ""), _service_output()
            with pytest.raises(OSError):
                _scrape(pid1, "http://127.0.0.1:10321/metrics")
            assert DEFAULT_FILE.read_text() == edited
            assert not (OPT / "venv").exists() and _user_exists(pid1)

            # purge: the conffile, /opt and the user are gone
            _apt(pid1, "purge", NAME)
            assert not DEFAULT_FILE.exists() and not OPT.exists() and Path("/opt").is_dir()
            assert not Path(f"/lib/systemd/system/{SERVICE}").exists()
            assert not _user_exists(pid1)
        finally:
            subprocess.run(
                ["nsenter", "-t", str(pid1), "-a", "dpkg", "--purge", NAME], capture_output=True, check=False
            )
            if hidden:  # the mount propagates to the VM's namespace (shared): undo it
                in_systemd(pid1, "umount", POLICY_RC, check=False)
            shutil.rmtree(OPT, ignore_errors=True)
            shutil.rmtree(DROPIN.parent, ignore_errors=True)
            BOOT.unlink()
