"""packaging/systemd/ingress_ipvs_exporter.service: systemd accepts it as shipped, and it says
what the capability tests (tests/kernel/test_capabilities_kernel.py) proved it needs.

`systemd-analyze verify` (Debian package systemd) checks the unit offline; it also checks
that ExecStart's program exists, so it runs against a throw-away root holding the system's
unit directory and a stub /usr/local/bin/ingress_ipvs_exporter, with the unit unchanged; and
against a root where the documented pip route and install steps really ran.
"""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest
from ipvs_testlib import unavailable

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "packaging" / "systemd" / "ingress_ipvs_exporter.service"
NAME = UNIT.name
SYSTEM_UNITS = Path("/usr/lib/systemd/system")
CAPS = {"CAP_SYS_ADMIN", "CAP_NET_ADMIN", "CAP_DAC_READ_SEARCH", "CAP_NET_RAW"}


@pytest.fixture
def systemd_analyze() -> None:
    """systemd-analyze and the system's units (Debian package systemd): skip without them, fail under CI."""
    if not shutil.which("systemd-analyze") or not (SYSTEM_UNITS / "sysinit.target").exists():
        unavailable("systemd-analyze is not installed: scripts/install-deps test (apt-get install systemd)")


def _root(tmp_path: Path, unit_text: str, with_exporter: bool = True) -> Path:
    """A root directory for `systemd-analyze --root`: the system's units plus ours."""
    root = tmp_path / "root"
    shutil.copytree(SYSTEM_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/systemd/system" / NAME).write_text(unit_text)
    if with_exporter:
        stub = root / "usr/local/bin/ingress_ipvs_exporter"
        stub.parent.mkdir(parents=True)
        stub.write_text("#!/bin/sh\nexit 0\n")
        stub.chmod(0o755)
    return root


def _analyze(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["systemd-analyze", *args, f"--root={root}", NAME],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _assert_verifies(root: Path, unit: str) -> None:
    """`systemd-analyze verify` accepts the unit under root without a word (warnings included)."""
    res = subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", unit],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert res.returncode == 0 and (res.stdout + res.stderr).strip() == "", unit + res.stdout + res.stderr


def _service() -> dict[str, list[str]]:
    """[Service] key -> every value it is given (systemd keys may repeat)."""
    values: dict[str, list[str]] = {}
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if line.startswith(("[", "#")) or "=" not in line:
            continue
        key, _, value = line.partition("=")
        values.setdefault(key.strip(), []).append(value.strip())
    return values


@pytest.mark.usefixtures("systemd_analyze")
def test_systemd_analyze_verify_accepts_the_unit_as_shipped(tmp_path):
    res = _analyze(_root(tmp_path, UNIT.read_text()), "verify")
    assert res.returncode == 0, res.stdout + res.stderr
    # verify reports unknown keys and bad values as warnings and still exits 0: none allowed
    assert (res.stdout + res.stderr).strip() == "", res.stdout + res.stderr


@pytest.mark.usefixtures("systemd_analyze")
def test_verify_would_catch_a_broken_unit(tmp_path):
    """The check has teeth: a missing binary fails, a misspelt key is reported."""
    res = _analyze(_root(tmp_path / "a", UNIT.read_text(), with_exporter=False), "verify")
    assert res.returncode != 0 and "/usr/local/bin/ingress_ipvs_exporter" in res.stderr, res.stderr
    broken = UNIT.read_text().replace("NoNewPrivileges=yes", "NoNewPrivilege=yes")
    res = _analyze(_root(tmp_path / "b", broken), "verify")
    assert "NoNewPrivilege" in res.stderr, res.stderr


@pytest.mark.usefixtures("systemd_analyze")
def test_security_exposure_is_low(tmp_path):
    """systemd's own sandboxing score (0 best, 10 worst) stays where this unit put it (2.2)."""
    res = _analyze(_root(tmp_path, UNIT.read_text()), "security", "--offline=true", "--threshold=30")
    assert res.returncode == 0, res.stdout + res.stderr
    line = [x for x in res.stdout.splitlines() if "Overall exposure level" in x]
    assert line, res.stdout
    score = float(line[0].split(":")[1].split()[0])
    assert score <= 3.0, line[0]


def test_unit_runs_unprivileged_with_exactly_the_proven_capabilities():
    svc = _service()
    assert svc["ExecStart"][0].split()[0] == "/usr/local/bin/ingress_ipvs_exporter"
    assert svc["DynamicUser"] == ["yes"] and "User" not in svc
    assert set(" ".join(svc["AmbientCapabilities"]).split()) == CAPS
    assert set(" ".join(svc["CapabilityBoundingSet"]).split()) == CAPS
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "MemoryDenyWriteExecute": "yes",
        "LockPersonality": "yes",
        "RestrictRealtime": "yes",
        "RestrictNamespaces": "net",
        "ProtectKernelModules": "yes",
    }.items():
        assert svc.get(key) == [value], f"{key}={svc.get(key)}"
    assert set(" ".join(svc["RestrictAddressFamilies"]).split()) == {
        "AF_NETLINK",
        "AF_UNIX",
        "AF_INET",
        "AF_INET6",
    }
    # things that would break it: hiding /proc/net, its own network, caps only in a user namespace
    for key in ("ProcSubset", "PrivateNetwork", "PrivateUsers"):
        assert key not in svc, f"{key} breaks the exporter (see packaging/systemd/README.md)"


def _syscalls(group: str, seen: set[str] | None = None) -> set[str]:
    """Every system call in a filter group, its nested @groups expanded."""
    seen = set() if seen is None else seen
    seen.add(group)
    res = subprocess.run(
        ["systemd-analyze", "syscall-filter", group], capture_output=True, text=True, timeout=60, check=False
    )
    assert res.returncode == 0, res.stderr
    names = set()
    for line in res.stdout.splitlines()[1:]:
        word = line.strip()
        if not word or word.startswith("#"):
            continue
        if word.startswith("@"):
            if word not in seen:
                names |= _syscalls(word, seen)
        else:
            names.add(word)
    return names


@pytest.mark.usefixtures("systemd_analyze")
def test_the_syscall_filter_allows_setns():
    """The exporter and nsenter call setns(2): the unit's filter (allow list less deny lists) must let it through."""
    allowed: set[str] = set()
    denied: set[str] = set()
    for value in _service()["SystemCallFilter"]:
        deny = value.startswith("~")
        for entry in value.lstrip("~").split():
            names = _syscalls(entry) if entry.startswith("@") else {entry}
            (denied if deny else allowed).update(names)
    allowed -= denied
    assert "setns" in allowed, "SystemCallFilter lacks setns: add SystemCallFilter=setns"
    assert {"execve", "socket", "bind", "clone"} <= allowed


def test_the_unit_parses_as_ini():
    """No duplicated section or stray text outside sections (what configparser would choke on)."""
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read_string(UNIT.read_text())
    assert parser.sections() == ["Unit", "Service", "Install"]


@pytest.mark.usefixtures("systemd_analyze")
def test_systemd_analyze_verify_accepts_the_socket_unit_as_shipped(tmp_path):
    socket_unit = UNIT.with_suffix(".socket")
    root = _root(tmp_path, UNIT.read_text())
    (root / "etc/systemd/system" / socket_unit.name).write_text(socket_unit.read_text())
    _assert_verifies(root, socket_unit.name)
    assert "ListenStream=10320" in socket_unit.read_text()  # the shipped port (docs/prometheus.md)


def _documented_unit_steps() -> list[list[str]]:
    """The `ln` and `install` commands of docs/systemd.md's install block, split into words."""
    text = (REPO / "docs" / "systemd.md").read_text()
    block = text[text.index("## The unit") :].split("```sh\n", 1)[1].split("```", 1)[0]
    return [line.split("#")[0].split() for line in block.splitlines() if line.startswith(("ln ", "install "))]


@pytest.mark.usefixtures("systemd_analyze")
def test_units_verify_as_installed_by_the_documented_pip_route(tmp_path):
    """The README's pip route (a venv at /opt/ingress_ipvs_exporter, `pip install .`) then
    docs/systemd.md's steps, each run under a throw-away root: both units verify there."""
    root = tmp_path / "root"
    shutil.copytree(SYSTEM_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    for d in ("etc/systemd/system", "usr/local/bin"):
        (root / d).mkdir(parents=True)
    venv = root / "opt/ingress_ipvs_exporter"
    assert (
        "python3 -m venv /opt/ingress_ipvs_exporter && /opt/ingress_ipvs_exporter/bin/pip install ."
        in (REPO / "README.md").read_text()
    )
    subprocess.run(["python3", "-m", "venv", venv], check=True, timeout=300)
    res = subprocess.run(
        [venv / "bin/pip", "install", "-q", "."], cwd=REPO, capture_output=True, text=True, timeout=900
    )
    assert res.returncode == 0, res.stdout + res.stderr
    steps = _documented_unit_steps()
    assert [s[0] for s in steps] == ["ln", "install"], steps
    for argv in steps:
        # the last word is where it goes: under the root; a link's target stays as written,
        # since systemd-analyze --root resolves it inside the root
        subprocess.run([*argv[:-1], f"{root}{argv[-1]}"], cwd=REPO, check=True, timeout=60)
    (root / "etc/systemd/system" / NAME).with_suffix(".socket").write_text(
        UNIT.with_suffix(".socket").read_text()
    )
    for unit in (NAME, UNIT.with_suffix(".socket").name):
        _assert_verifies(root, unit)


@pytest.mark.usefixtures("systemd_analyze")
def test_units_verify_as_installed_by_the_deb(tmp_path, deb):
    """make deb's package unpacked into a throw-away root, its venv made as its postinst makes
    it (the system's python3, offline from the packaged wheels): both units verify there."""
    root = tmp_path / "root"
    shutil.copytree(SYSTEM_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    subprocess.run(["dpkg-deb", "-x", deb, root], check=True, timeout=120)
    opt = root / "opt/ingress-ipvs-exporter"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", opt / "venv"], check=True, timeout=300)
    (pip_wheel,) = Path("/usr/share/python-wheels").glob("pip-*.whl")
    res = subprocess.run(
        [
            opt / "venv/bin/python",
            pip_wheel / "pip",
            "install",
            "-q",
            "--no-index",
            "--find-links",
            opt / "wheels",
            "ingress_ipvs_exporter",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    service = (root / "lib/systemd/system/ingress-ipvs-exporter.service").read_text()
    assert "\nExecStart=/opt/ingress-ipvs-exporter/venv/bin/ingress_ipvs_exporter $ARGS\n" in service
    assert "\nEnvironmentFile=-/etc/default/ingress-ipvs-exporter\n" in service
    assert "\nUser=ingress-ipvs-exporter\n" in service and "DynamicUser" not in service
    assert 'ARGS="--listen-address :10320"' in (root / "etc/default/ingress-ipvs-exporter").read_text()
    for unit in ("ingress-ipvs-exporter.service", "ingress-ipvs-exporter.socket"):
        _assert_verifies(root, unit)
