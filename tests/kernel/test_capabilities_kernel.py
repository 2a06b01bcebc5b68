"""The least privilege the exporter needs, found by running it as an unprivileged user.

Each test runs the installed exporter as nobody (uid 65534) with exactly a chosen set of
capabilities - permitted, inheritable, ambient and bounding set, plus no_new_privs, which
is what the systemd unit in packaging/systemd gives it - and scrapes it over loopback.
Ambient capabilities matter: the exporter execs nsenter and iptables-*-save to read the
mangle rules, and only ambient capabilities survive into those children.

The namespace sits where Docker keeps it: /var/run/docker is root's, mode 0700, so
non-root needs CAP_DAC_READ_SEARCH to reach /var/run/docker/netns/ingress_sbox at all.
Findings (also in packaging/systemd/README.md):
  CAP_SYS_ADMIN        setns() into the namespace (the shim and nsenter)
  CAP_NET_ADMIN        IPVS over generic netlink; iptables-nft-save over nfnetlink
  CAP_DAC_READ_SEARCH  Docker's 0700 /var/run/docker; /proc/net/ip_tables_names (0440),
                       which tells whether legacy iptables tables exist
  CAP_NET_RAW          iptables-legacy-save's raw socket: legacy-backend hosts only
Without SYS_ADMIN (setns: EPERM), NET_ADMIN (IPVS genetlink: EPERM) or, for Docker's path,
DAC_READ_SEARCH (open: EACCES) the exporter serves ipvs_up 0 with reason "permission" and logs
once a line naming that capability; without NET_RAW or DAC_READ_SEARCH on a legacy-backend host
IPVS is read but the port label is empty, and one warning names the capability.
The last test runs packaging/systemd/ingress_ipvs_exporter.service itself under systemd.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import pytest
from ipvs_testlib import (
    assert_original_samples_match,
    exporter_log,
    free_port,
    in_systemd,
    ipvsadm,
    mark_rule,
    private_systemd,
    running_exporter,
    samples,
    scrape,
    sh,
    unavailable,
    wait_metrics,
)
from lab import SWARM_PORTS, UNMARKED_FWMARK
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import ingress_ipvs_exporter

pytestmark = pytest.mark.kernel

NOBODY = 65534
CAP_BITS = {"dac_read_search": 2, "net_admin": 12, "net_raw": 13, "sys_admin": 21}
# What packaging/systemd/ingress_ipvs_exporter.service grants.
UNIT_CAPS = ("sys_admin", "net_admin", "dac_read_search", "net_raw")
# The least an nf_tables host (Debian 11+, Ubuntu 21.10+, RHEL 8+) needs with Docker's path.
NFT_CAPS = ("sys_admin", "net_admin", "dac_read_search")
EXPECTED_PORTS = {**{mark: str(port) for port, mark in SWARM_PORTS.items()}, UNMARKED_FWMARK: ""}
PERMISSION = "not permitted to read IPVS"


def setpriv_prefix(caps) -> list[str]:
    """setpriv (util-linux) as nobody with exactly `caps`, ambient so that exec'd children keep them."""
    spec = ",".join(["-all", *(f"+{c}" for c in caps)])
    return [
        "setpriv",
        f"--reuid={NOBODY}",
        f"--regid={NOBODY}",
        "--clear-groups",
        "--nnp",
        f"--inh-caps={spec}",
        f"--ambient-caps={spec}",
        f"--bounding-set={spec}",
    ]


def _mask(caps) -> int:
    return sum(1 << CAP_BITS[c] for c in caps)


@contextmanager
def exporter_as(caps, *args: str):
    """ipvs_testlib.running_exporter run through setpriv_prefix(caps); yields (url, pid, log path)."""
    with running_exporter(*args, prefix=tuple(setpriv_prefix(caps))) as (url, proc):
        yield url, proc.pid, Path(exporter_log(url))


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def assert_runs_with_exactly(pid: int, caps) -> None:
    """The exporter process (setpriv exec'd into it) is nobody with exactly these capabilities."""
    st = _status(pid)
    assert st["Uid"].split()[:2] == [str(NOBODY)] * 2, st["Uid"]
    for field in ("CapEff", "CapPrm", "CapAmb", "CapBnd"):
        assert int(st[field], 16) == _mask(caps), f"{field} {st[field]} != {sorted(caps)}"
    assert st.get("NoNewPrivs", "").strip() == "1"


@contextmanager
def ipvs_namespace(backend: str):
    """A swarm-like namespace (fwmark services, swarm's mangle rules in `backend`), exposed under a
    Docker-like 0700 root directory: yields (docker-like path, /run/netns path)."""
    name = f"cap{os.getpid() % 10000}{backend[0]}"
    root = Path(f"/run/captest-{name}")
    dockerish = root / "docker" / "netns" / "ingress_sbox"
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "link", "set", "lo", "up", ns=name)
        for port, mark in SWARM_PORTS.items():
            sh(
                f"iptables-{backend}",
                *mark_rule(port, mark),
                ns=name,
            )
        for mark in (*SWARM_PORTS.values(), UNMARKED_FWMARK):
            sh("ipvsadm", "-A", "-f", str(mark), "-s", "rr", ns=name)
            sh("ipvsadm", "-a", "-f", str(mark), "-r", "198.18.20.2:0", "-m", ns=name)
        # dockerd: os.MkdirAll(ExecRoot, 0700); libnetwork: netns/ 0755; ingress_sbox a bind mount
        dockerish.parent.mkdir(parents=True)
        os.chmod(root / "docker", 0o700)
        os.chmod(dockerish.parent, 0o755)
        dockerish.touch()
        sh("mount", "--bind", f"/run/netns/{name}", str(dockerish))
        yield str(dockerish), f"/run/netns/{name}"
    finally:
        sh("umount", str(dockerish), check=False)
        subprocess.run(["rm", "-rf", str(root)], check=False)
        sh("ip", "netns", "del", name, check=False)


@pytest.fixture(scope="module")
def nft_ns():
    with ipvs_namespace("nft") as paths:
        yield paths


@pytest.fixture(scope="module")
def legacy_ns():
    with ipvs_namespace("legacy") as paths:
        yield paths


def _namespace(request, backend: str) -> tuple[str, str]:
    return request.getfixturevalue(f"{backend}_ns")


def _up(scraped, ns) -> float | None:
    return scraped.get(("ipvs_up", frozenset({("namespace", ns)})))


def _ports_seen(scraped, ns) -> dict[str, str]:
    """fwmark -> port label of ipvs_connections_total."""
    return {
        dict(labels)["fwmark"]: dict(labels)["port"]
        for labels in samples(scraped, "ipvs_connections_total")
        if dict(labels)["namespace"] == ns
    }


def _lines(log_path: Path, needle: str) -> list[str]:
    return [line for line in log_path.read_text().splitlines() if needle in line]


# ---- what works ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "backend, caps",
    [("nft", UNIT_CAPS), ("legacy", UNIT_CAPS), ("nft", NFT_CAPS)],
    ids=["nft-unit-caps", "legacy-unit-caps", "nft-minimum"],
)
def test_unprivileged_with_these_caps_reads_everything(request, backend, caps):
    """nobody + the unit's capabilities: ipvs_up 1 and every original sample, port labels included,
    equal to ipvsadm's - the port labels prove nsenter and iptables-*-save inherited the caps."""
    path, _ = _namespace(request, backend)
    with exporter_as(caps, "--namespace-path", path) as (url, pid, log_path):
        assert_runs_with_exactly(pid, caps)
        scraped = scrape(url)
        scrape(url)  # a second scrape logs nothing new
    assert _up(scraped, path) == 1, log_path.read_text()
    assert_original_samples_match(scraped, ipvsadm(path), path, EXPECTED_PORTS)
    assert samples(scraped, "ipvs_service_published_port_info")
    noise = [line for line in log_path.read_text().splitlines() if re.search(r"level=(warn|error)", line)]
    assert not noise, noise


# ---- each capability taken away --------------------------------------------------------


@pytest.mark.parametrize("missing", ["sys_admin", "net_admin", "dac_read_search"])
def test_without_a_needed_cap_serves_up_0_and_says_so_once(request, missing):
    """No setns (SYS_ADMIN), no IPVS netlink (NET_ADMIN) or no way into Docker's 0700 directory
    (DAC_READ_SEARCH): the exporter keeps serving ipvs_up 0 with reason permission, logged once."""
    caps = [c for c in NFT_CAPS if c != missing]
    path, _ = _namespace(request, "nft")
    with exporter_as(caps, "--namespace-path", path) as (url, pid, log_path):
        assert_runs_with_exactly(pid, caps)
        for _ in range(3):
            scraped = scrape(url)
    assert _up(scraped, path) == 0
    assert (
        scraped[("ipvs_scrape_errors_total", frozenset({("namespace", path), ("reason", "permission")}))] >= 3
    )
    assert not samples(scraped, "ipvs_connections_total")
    said = _lines(log_path, PERMISSION)
    assert len(said) == 1, f"want one '{PERMISSION}' line, got:\n{log_path.read_text()}"
    # the line names the capability that is missing, and no other (each gives its own errno:
    # setns EPERM while entering, genetlink EPERM on the request, open EACCES)
    named = [c for c in NFT_CAPS if f"CAP_{c.upper()}" in said[0]]
    assert path in said[0] and named == [missing], said[0]


@pytest.mark.parametrize(
    "missing, path_kind",
    [("net_raw", "docker"), ("dac_read_search", "run-netns")],
    ids=["no-net_raw", "no-dac_read_search"],
)
def test_legacy_host_without_a_port_cap_reads_ipvs_without_ports(request, missing, path_kind):
    """Swarm's marks in legacy iptables. Without NET_RAW iptables-legacy-save cannot open its raw
    socket; without DAC_READ_SEARCH /proc/net/ip_tables_names (0440) is unreadable, so the legacy
    tables look absent (the namespace is given as /run/netns/NAME here, reachable without it).
    Either way IPVS is still read (ipvs_up 1) and only the port label is empty."""
    caps = [c for c in UNIT_CAPS if c != missing]
    dockerish, run_netns = _namespace(request, "legacy")
    path = dockerish if path_kind == "docker" else run_netns
    with exporter_as(caps, "--namespace-path", path) as (url, pid, log_path):
        assert_runs_with_exactly(pid, caps)
        for _ in range(2):
            scraped = scrape(url)
    assert _up(scraped, path) == 1, log_path.read_text()
    assert_original_samples_match(scraped, ipvsadm(path), path, {})  # every port label empty
    assert set(_ports_seen(scraped, path).values()) == {""}
    said = [line for line in log_path.read_text().splitlines() if re.search(r"level=(warn|error)", line)]
    assert len(said) == 1, f"want one warning, got:\n{log_path.read_text()}"
    assert f"CAP_{missing.upper()}" in said[0] and "empty port label" in said[0] and path in said[0], said[0]


# ---- the shipped unit under a real systemd ----------------------------------------------

UNIT = Path(__file__).resolve().parents[2] / "packaging" / "systemd" / "ingress_ipvs_exporter.service"
DOCKER_NETNS = Path("/var/run/docker/netns")
LEGACY_PORT, LEGACY_FWMARK = 30005, 300


INSTALL_VENV = Path("/opt/ingress_ipvs_exporter-captest")


def _requirement_closure(name: str) -> list[metadata.Distribution]:
    """The installed distribution `name` and every distribution it needs at run time, transitively."""
    found: dict[str, metadata.Distribution] = {}
    todo = [name]
    while todo:
        dist = metadata.distribution(todo.pop())
        key = canonicalize_name(dist.metadata["Name"])
        if key in found:
            continue
        found[key] = dist
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return list(found.values())


def _install_exporter(link: Path) -> None:
    """Install the exporter as the README tells users to - a venv under /opt holding a copy, not an
    editable link - and put its command at the unit's ExecStart path. The unit's PrivateTmp=yes and
    ProtectHome=yes hide /tmp, /home and /root: a checkout, its .venv or a pyenv interpreter there
    (an editable install's sources) is invisible to the service. The VM has no network and the
    project venv's setuptools cannot build the wheel without build isolation, so the install is
    offline: a venv of the system's python3.X (same ABI as the project venv's) gets the exporter's
    package as installed here and the installed files of each of its runtime dependencies."""
    system_python = f"/usr/bin/python3.{sys.version_info.minor}"
    if not os.access(system_python, os.X_OK):
        unavailable(
            f"{system_python} is missing: the unit needs an interpreter outside /home, /root and /tmp"
        )
    shutil.rmtree(INSTALL_VENV, ignore_errors=True)
    sh(system_python, "-m", "venv", "--without-pip", str(INSTALL_VENV))
    site = INSTALL_VENV / f"lib/python3.{sys.version_info.minor}/site-packages"
    for dist in _requirement_closure("ingress_ipvs_exporter"):
        for file in dist.files or []:
            if file.parts[0] == ".." or file.suffix == ".pth" or "__pycache__" in file.parts:
                continue  # scripts, an editable install's path hook, byte code
            target = site / file
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(dist.locate_file(file), target)
    package = Path(ingress_ipvs_exporter.__file__).parent  # an editable install's sources
    shutil.copytree(
        package, site / package.name, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True
    )
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.write_text(
        f"#!{INSTALL_VENV}/bin/python3\nimport sys\nfrom ingress_ipvs_exporter.cli import main\nsys.exit(main())\n"
    )
    link.chmod(0o755)
    # what the service will import: the copy, not this checkout
    where = subprocess.run(
        [
            str(INSTALL_VENV / "bin/python3"),
            "-I",
            "-c",
            "import ingress_ipvs_exporter.cli as m; print(m.__file__)",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert where.returncode == 0 and where.stdout.startswith(str(site)), where.stdout + where.stderr


def test_shipped_unit_under_systemd_serves_docker_namespace_created_after_start():
    """The unit as shipped (DynamicUser, the four capabilities, seccomp @system-service,
    RestrictNamespaces=net, MemoryDenyWriteExecute, ProtectSystem=strict...) under systemd 252:
    started before Docker's namespace exists it serves ipvs_up 0; once ingress_sbox is bind-mounted
    in the host's mount namespace (as dockerd does) the mount propagates into the unit's own, and
    it serves the original metrics with port labels. The exporter is installed in a venv under /opt,
    as the README says (see _install_exporter); the drop-in only routes output to a file and drops
    the default boot dependencies."""
    if not os.access("/lib/systemd/systemd", os.X_OK):
        unavailable("systemd is not installed: scripts/install-deps test")
    port = free_port()
    log = Path(f"/run/captest-unit-{port}.log")
    Path("/etc/systemd/system/ingress_ipvs_exporter.service").write_text(UNIT.read_text())
    dropin = Path("/etc/systemd/system/ingress_ipvs_exporter.service.d")
    dropin.mkdir(parents=True, exist_ok=True)
    (dropin / "test.conf").write_text(
        "[Unit]\nDefaultDependencies=no\n[Service]\n"
        f"StandardOutput=append:{log}\nStandardError=append:{log}\n"
    )
    Path("/etc/default").mkdir(exist_ok=True)
    Path("/etc/default/ingress_ipvs_exporter").write_text(f'ARGS="--listen-address 127.0.0.1:{port}"\n')
    _install_exporter(Path("/usr/local/bin/ingress_ipvs_exporter"))
    url = f"http://127.0.0.1:{port}/metrics"
    ns_path = str(DOCKER_NETNS / "ingress_sbox")
    up = ("ipvs_up", frozenset({("namespace", ns_path)}))
    if Path(ns_path).exists():
        unavailable(f"{ns_path} exists: a dockerd runs here")
    name = f"capu{os.getpid() % 10000}"
    created: list[Path] = []
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "link", "set", "lo", "up", ns=name)
        for p, mark in SWARM_PORTS.items():
            sh(
                "iptables-nft",
                *mark_rule(p, mark),
                ns=name,
            )
        # one more mark in legacy iptables: iptables-legacy-save must work inside the sandbox too
        sh(
            "iptables-legacy",
            *mark_rule(LEGACY_PORT, LEGACY_FWMARK, "udp"),
            ns=name,
        )
        for mark in (*SWARM_PORTS.values(), UNMARKED_FWMARK, LEGACY_FWMARK):
            sh("ipvsadm", "-A", "-f", str(mark), "-s", "rr", ns=name)
            sh("ipvsadm", "-a", "-f", str(mark), "-r", "198.18.20.2:0", "-m", ns=name)
        for d in (DOCKER_NETNS.parent, DOCKER_NETNS):
            if not d.exists():
                d.mkdir()
                created.append(d)
        os.chmod(DOCKER_NETNS.parent, 0o700)  # as dockerd makes its exec root
        os.chmod(DOCKER_NETNS, 0o755)
        with private_systemd() as pid1:

            def explain() -> str:
                status = in_systemd(
                    pid1,
                    "systemctl",
                    "show",
                    "-p",
                    "ActiveState,SubState,NRestarts,ExecMainStatus,Result",
                    "ingress_ipvs_exporter.service",
                    check=False,
                )
                return f"\n{status}\n--- {log}:\n{log.read_text() if log.exists() else '(none)'}"

            try:
                scraped = wait_metrics(url, lambda s: s.get(up) == 0, "the unit serving ipvs_up 0")
            except AssertionError as exc:
                raise AssertionError(f"{exc}{explain()}") from None
            main_pid = in_systemd(
                pid1, "systemctl", "show", "-p", "MainPID", "--value", "ingress_ipvs_exporter.service"
            ).strip()
            status = dict(
                line.split(":\t", 1)
                for line in in_systemd(pid1, "cat", f"/proc/{main_pid}/status").splitlines()
                if ":\t" in line
            )
            assert status["Uid"].split()[0] != "0", status["Uid"]  # DynamicUser
            for field in ("CapEff", "CapAmb", "CapBnd"):
                assert int(status[field], 16) == _mask(UNIT_CAPS), f"{field} {status[field]}"
            assert status["NoNewPrivs"].strip() == "1" and status["Seccomp"].strip() == "2", status
            # dockerd bind-mounts ingress_sbox in the host's mount namespace: here, systemd's
            Path(ns_path).touch()
            created.append(Path(ns_path))
            in_systemd(pid1, "mount", "--bind", f"/run/netns/{name}", ns_path)
            try:
                scraped = wait_metrics(url, lambda s: s.get(up) == 1, "ipvs_up 1 after ingress_sbox appeared")
            except AssertionError as exc:
                raise AssertionError(f"{exc}{explain()}") from None
            props = in_systemd(
                pid1,
                "systemctl",
                "show",
                "-p",
                "MainPID,NRestarts,ActiveState",
                "ingress_ipvs_exporter.service",
            )
            assert "ActiveState=active" in props and "NRestarts=0" in props, props
        assert_original_samples_match(
            scraped,
            ipvsadm(f"/run/netns/{name}"),
            ns_path,
            {**EXPECTED_PORTS, LEGACY_FWMARK: str(LEGACY_PORT)},
        )
        text = log.read_text()
        assert "ipvs_up 0 until IPVS is readable" in text and ns_path in text, text
        assert not re.search(r"level=error", text), text
    finally:
        # the bind mount lived in systemd's mount namespace, gone with it
        for path in reversed(created):
            path.unlink() if path.is_file() else path.rmdir()
        sh("ip", "netns", "del", name, check=False)


def test_shipped_socket_unit_starts_the_service_on_the_first_connection(netns):
    """Socket activation under the real systemd: the shipped .socket unit (its ListenStream
    moved to a free loopback port by a drop-in) listens; the service is not running until the
    first connection, which starts it with the socket handed over (--web.systemd-socket), and
    that first scrape is answered with the namespace's IPVS."""
    if not os.access("/lib/systemd/systemd", os.X_OK):
        unavailable("systemd is not installed: scripts/install-deps test")
    name, path = netns
    sh("ipvsadm", "-A", "-f", "256", "-s", "rr", ns=name)
    sh("ipvsadm", "-a", "-f", "256", "-r", "198.18.20.2:0", "-m", ns=name)
    port = free_port()
    log = Path(f"/run/captest-socket-{port}.log")
    units = Path("/etc/systemd/system")
    units.joinpath("ingress_ipvs_exporter.service").write_text(UNIT.read_text())
    units.joinpath("ingress_ipvs_exporter.socket").write_text(UNIT.with_suffix(".socket").read_text())
    for unit, extra in (
        ("service", f"[Service]\nStandardOutput=append:{log}\nStandardError=append:{log}\n"),
        ("socket", f"[Socket]\nListenStream=\nListenStream=127.0.0.1:{port}\n"),
    ):
        dropin = units / f"ingress_ipvs_exporter.{unit}.d"
        dropin.mkdir(parents=True, exist_ok=True)
        (dropin / "test.conf").write_text(f"[Unit]\nDefaultDependencies=no\n{extra}")
    Path("/etc/default").mkdir(exist_ok=True)
    Path("/etc/default/ingress_ipvs_exporter").write_text(
        f'ARGS="--web.systemd-socket --namespace-path {path}"\n'
    )
    _install_exporter(Path("/usr/local/bin/ingress_ipvs_exporter"))
    up = ("ipvs_up", frozenset({("namespace", path)}))
    with private_systemd("ingress_ipvs_exporter.socket") as pid1:

        def state(unit: str) -> str:
            return in_systemd(pid1, "systemctl", "show", "-p", "ActiveState", "--value", unit).strip()

        deadline = time.monotonic() + 120
        while state("ingress_ipvs_exporter.socket") != "active":
            assert time.monotonic() < deadline, "the socket unit did not become active within 120 s"
            time.sleep(1)
        assert state("ingress_ipvs_exporter.service") == "inactive"  # nothing started it yet
        scraped = wait_metrics(f"http://127.0.0.1:{port}/metrics", lambda s: up in s, "the first scrape")
        assert scraped[up] == 1, scraped.get(up)
        assert state("ingress_ipvs_exporter.service") == "active"
        main_pid = in_systemd(
            pid1, "systemctl", "show", "-p", "MainPID", "--value", "ingress_ipvs_exporter.service"
        ).strip()
        cmdline = in_systemd(pid1, "cat", f"/proc/{main_pid}/cmdline").replace("\0", " ")
        assert "--web.systemd-socket" in cmdline, cmdline
    text = log.read_text()
    assert f"listening on 127.0.0.1:{port}" in text and "level=error" not in text, text
