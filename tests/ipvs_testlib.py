"""Helpers shared by every test suite: run the installed exporter as a user would, scrape it
over loopback HTTP, read the truth from ipvsadm, and a snapshot of every kind of service."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ingress_ipvs_exporter.swarm.marks import PublishedPort
from ingress_ipvs_exporter.testing import Destination, Service, Stats

ORIGINAL_SERVICE_METRICS = (
    "ipvs_connections_total",
    "ipvs_bytes_in_total",
    "ipvs_bytes_out_total",
    "ipvs_destination_total",
)
ORIGINAL_DEST_METRICS = (
    "ipvs_destination_connections_total",
    "ipvs_destination_bytes_in_total",
    "ipvs_destination_bytes_out_total",
    "ipvs_destination_active_connections_total",
    "ipvs_destination_inactive_connections_total",
)
# Bounds against a hang, not expectations of speed: the VM emulates its CPU, and on a loaded
# host it runs three times slower than on an idle one (an exporter's start, a wait for a
# change to show, an ipvsadm -R of thousands of services).
HANG_S = 600.0
COMMAND_HANG_S = 300.0


def wait_for(what: str, check, timeout: float = HANG_S, every: float = 1.0):
    """check()'s first true value, polled every `every` s (an OSError counts as not yet)."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = check()
            if last:
                return last
        except OSError as e:
            last = e
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last}")
        time.sleep(every)


def api(base: str, path: str, **params) -> dict:
    """A Prometheus HTTP API answer's data (asserting status success)."""
    url = f"{base}/api/v1/{path}" + ("?" + urllib.parse.urlencode(params, doseq=True) if params else "")
    with urllib.request.urlopen(url, timeout=60) as r:
        body = json.load(r)
    assert body["status"] == "success", body
    return body["data"]


@contextmanager
def running_prometheus(tmp: Path, ready_timeout: float = HANG_S):
    """The real Prometheus (Debian's) with tmp/prometheus.yml, its data and log in tmp, on a
    free loopback port; yields its base URL once /-/ready answers."""
    assert shutil.which("prometheus"), "Debian's prometheus package is not installed"
    port = free_port()
    with open(tmp / "prometheus.log", "w+") as log:
        prom = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_for(
                "prometheus ready",
                lambda: urllib.request.urlopen(base + "/-/ready", timeout=5).status == 200,
                timeout=ready_timeout,
            )
            yield base
        finally:
            stop_process(prom)
            log.seek(0)
            print("--- prometheus log (tail) ---\n" + "".join(log.readlines()[-40:]))


def sh(
    *args: str,
    ns: str | None = None,
    ns_path: str | None = None,
    check: bool = True,
    input: str | None = None,
) -> str:
    """Run a command and return its stdout: inside `ip netns exec ns` when ns (a name) is given,
    inside `nsenter --net=ns_path` when ns_path (a namespace file, e.g. a dockerd's) is."""
    assert not (ns and ns_path), "ns or ns_path, not both"
    if ns:
        cmd = ["ip", "netns", "exec", ns, *args]
    elif ns_path:
        cmd = ["nsenter", f"--net={ns_path}", *args]
    else:
        cmd = list(args)
    res = subprocess.run(cmd, capture_output=True, text=True, input=input, timeout=COMMAND_HANG_S)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr.strip()}")
    return res.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def exporter_command() -> str:
    """The installed console script, as a user runs it."""
    beside = os.path.join(os.path.dirname(sys.executable), "ingress_ipvs_exporter")
    exe = shutil.which("ingress_ipvs_exporter") or (beside if os.access(beside, os.X_OK) else None)
    assert exe, "ingress_ipvs_exporter is not installed on PATH (make venv)"
    return exe


def stop_process(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds; reaps it either way."""
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def exporter_log(url: str) -> str:
    """Where running_exporter writes the output of the exporter serving `url`."""
    return f"/tmp/exporter-{urllib.parse.urlsplit(url).port}.log"


def unavailable(why: str) -> None:
    """Skip a test whose prerequisite is missing; under CI=true fail it instead (CI runs every test)."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{why} (CI=true: a test that cannot run is a failure)")
    pytest.skip(why)


@contextmanager
def running_exporter(
    *args: str,
    timeout: float = HANG_S,
    probe: bool = True,
    listen_flag: str = "--listen-address",
    prefix: tuple = (),
    env: dict[str, str] | None = None,
    exe: str | None = None,
):
    """Start the exporter on a free loopback port; yield (metrics URL, process).
    probe=False only waits for the port to accept (for TLS or auth set-ups);
    prefix: a command that runs the exporter (e.g. setpriv ...); env: variables to add;
    exe: the exporter's program when not this venv's (e.g. one installed in another root)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    log = open(exporter_log(url), "w+")
    proc = subprocess.Popen(
        [*prefix, exe or exporter_command(), listen_flag, f"127.0.0.1:{port}", *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **env} if env else None,
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise AssertionError(f"exporter exited with {proc.returncode}: {log.read()}")
            try:
                if probe:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read()
                else:
                    socket.create_connection(("127.0.0.1", port), timeout=5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    log.seek(0)
                    raise AssertionError(
                        f"exporter did not answer within {timeout:g}s; its log: {log.read()}"
                    )
                time.sleep(0.2)
        yield url, proc
    finally:
        stop_process(proc)
        log.close()


def get_text(url: str, headers: dict[str, str] | None = None, timeout: float = 60) -> str:
    """GET url (with these request headers) and return the body as text."""
    request = urllib.request.Request(url, headers=headers or {})
    return urllib.request.urlopen(request, timeout=timeout).read().decode()


def scrape(url: str, headers: dict[str, str] | None = None) -> dict[tuple[str, frozenset], float]:
    """GET the exposition (with these request headers) and index every sample by (name, labels)."""
    return parse_samples(get_text(url, headers))


def parse_samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Text exposition -> every sample indexed by (name, labels)."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def samples(scraped: dict, name: str) -> dict[frozenset, float]:
    return {labels: v for (n, labels), v in scraped.items() if n == name}


# ---- ipvsadm, the reference -------------------------------------------------------


@dataclass
class AdmDest:
    address: str
    port: int
    forward: str = ""
    weight: int = 0
    active: int = 0
    inactive: int = 0
    conns: int = 0
    inpkts: int = 0
    outpkts: int = 0
    inbytes: int = 0
    outbytes: int = 0


@dataclass
class AdmService:
    kind: str  # FWM, TCP, UDP, SCTP
    key: str  # fwmark or address:port as ipvsadm prints it
    scheduler: str = ""
    flags: str = ""
    conns: int = 0
    inpkts: int = 0
    outpkts: int = 0
    inbytes: int = 0
    outbytes: int = 0
    dests: dict = field(default_factory=dict)  # (address, port) -> AdmDest

    @property
    def fwmark(self) -> int:
        return int(self.key) if self.kind == "FWM" else 0


def _split_hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


_SVC = re.compile(r"^(TCP|UDP|SCTP|FWM)\s+(\S+)( IPv6)?\s*(.*)$")
_DST = re.compile(r"^\s+->\s+(\S+)\s+(.*)$")


def _key(m: re.Match) -> str:
    """'FWM 256', 'FWM 256 IPv6' (an IPv6 fwmark service), 'TCP 10.0.0.1:80', 'TCP [2001:db8::1]:80'."""
    return f"{m.group(1)} {m.group(2)}{m.group(3) or ''}"


def ipvsadm(ns_path: str | None = None) -> dict[str, AdmService]:
    """`ipvsadm -Ln --exact` (weights, active/inactive) merged with `--stats --exact`,
    keyed 'FWM 256' / 'TCP 10.0.0.1:80'. ns_path: run inside that namespace."""
    pre = ["nsenter", f"--net={ns_path}"] if ns_path else []

    def run(*extra):
        return subprocess.run(
            [*pre, "ipvsadm", "-Ln", "--exact", *extra],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout

    services: dict[str, AdmService] = {}
    cur = None
    for line in run().splitlines():
        if m := _SVC.match(line):
            parts = m.group(4).split()
            cur = services[_key(m)] = AdmService(
                m.group(1), m.group(2), parts[0] if parts else "", " ".join(parts[1:])
            )
        elif (m := _DST.match(line)) and cur is not None and m.group(1) != "RemoteAddress:Port":
            addr, port = _split_hostport(m.group(1))
            fwd, weight, act, inact = m.group(2).split()[:4]
            cur.dests[(addr, port)] = AdmDest(addr, port, fwd, int(weight), int(act), int(inact))
    cur = None
    for line in run("--stats").splitlines():
        if m := _SVC.match(line):
            cur = services.get(_key(m))
            if cur:
                cur.conns, cur.inpkts, cur.outpkts, cur.inbytes, cur.outbytes = map(
                    int, m.group(4).split()[:5]
                )
        elif (m := _DST.match(line)) and cur is not None and m.group(1) != "RemoteAddress:Port":
            d = cur.dests.get(_split_hostport(m.group(1)))
            if d:
                d.conns, d.inpkts, d.outpkts, d.inbytes, d.outbytes = map(int, m.group(2).split()[:5])
    return services


def stable_ipvsadm(
    ns_path: str | None, settle: float = 4.0, timeout: float = HANG_S
) -> dict[str, AdmService]:
    """ipvsadm once two reads `settle` s apart agree. Connections closed by a test leave
    TIME_WAIT entries that expire two minutes after each close, so on a slow host the
    inactive counts keep falling for as long as the requests took: wait them out."""
    deadline = time.monotonic() + timeout
    prev = ipvsadm(ns_path)
    while time.monotonic() < deadline:
        time.sleep(settle)
        now = ipvsadm(ns_path)
        if now == prev:
            return now
        prev = now
    raise AssertionError(f"IPVS counters kept changing for {timeout:.0f} s; is traffic still flowing?")


# A failed attempt saw at least one change, such as one TIME_WAIT entry expiring; the labs
# leave at most ten, and two reads a few seconds apart can agree between two expiries.
STABLE_ATTEMPTS = 12


def scrape_while_stable(
    url: str, ns_path: str | None, attempts: int = STABLE_ATTEMPTS
) -> tuple[dict, dict[str, AdmService]]:
    """A scrape taken while ipvsadm reads the same before and after it: (scraped, ipvsadm)."""
    for _ in range(attempts):
        before = stable_ipvsadm(ns_path)
        scraped = scrape(url)
        if ipvsadm(ns_path) == before:
            return scraped, before
    raise AssertionError(f"ipvsadm changed during each of {attempts} scrapes")


def scrape_while_all_stable(
    url: str, ns_paths: list[str], attempts: int = STABLE_ATTEMPTS
) -> tuple[dict, dict]:
    """scrape_while_stable for several namespaces: (scraped, {path: ipvsadm})."""
    for _ in range(attempts):
        before = {p: stable_ipvsadm(p) for p in ns_paths}
        scraped = scrape(url)
        if all(ipvsadm(p) == before[p] for p in ns_paths):
            return scraped, before
    raise AssertionError(f"ipvsadm changed during each of {attempts} scrapes")


@contextmanager
def scraping(url: str):
    """Scrape url over and over in a thread while the block runs; yields a dict whose
    "bodies" are the bodies read and "failures" every scrape that failed or did not parse."""
    seen: dict[str, list[str]] = {"bodies": [], "failures": []}
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                body = get_text(url)
                list(text_string_to_metric_families(body))
                seen["bodies"].append(body)
            except Exception as e:  # every failure is a finding
                seen["failures"].append(repr(e))

    t = threading.Thread(target=loop)
    t.start()
    try:
        yield seen
    finally:
        stop.set()
        t.join(120)


def of_namespace(scraped: dict, namespace: str) -> dict:
    """The samples of one namespace's series."""
    return {k: v for k, v in scraped.items() if ("namespace", namespace) in k[1]}


def namespaces_shown(scraped: dict) -> set[str]:
    """The namespaces a scrape reports (those with an ipvs_up series)."""
    return {dict(labels)["namespace"] for labels in samples(scraped, "ipvs_up")}


def assert_original_samples_match(
    scraped: dict, adm: dict[str, AdmService], namespace: str, ports: dict[int, str]
) -> None:
    """Every original sample equals ipvsadm: per fwmark service and per destination.
    ports: fwmark -> expected port label."""
    fwm = {s.fwmark: s for s in adm.values() if s.kind == "FWM"}
    assert scraped[("ipvs_services_total", frozenset({("namespace", namespace)}))] == len(adm)
    for mark, s in fwm.items():
        base = {("namespace", namespace), ("fwmark", str(mark)), ("port", ports.get(mark, ""))}
        want = {
            "ipvs_connections_total": s.conns,
            "ipvs_bytes_in_total": s.inbytes,
            "ipvs_bytes_out_total": s.outbytes,
            "ipvs_destination_total": len(s.dests),
        }
        for name, value in want.items():
            got = scraped.get((name, frozenset(base)))
            assert got == value, f"{name} fwmark={mark}: exporter {got}, ipvsadm {value}"
        for (addr, _), d in s.dests.items():
            labels = frozenset(base | {("address", addr)})
            want = {
                "ipvs_destination_connections_total": d.conns,
                "ipvs_destination_bytes_in_total": d.inbytes,
                "ipvs_destination_bytes_out_total": d.outbytes,
                "ipvs_destination_active_connections_total": d.active,
                "ipvs_destination_inactive_connections_total": d.inactive,
            }
            for name, value in want.items():
                got = scraped.get((name, labels))
                assert got == value, f"{name} fwmark={mark} address={addr}: exporter {got}, ipvsadm {value}"
    # and nothing beyond what ipvsadm shows
    n_dst = sum(len(s.dests) for s in fwm.values())
    for name in ORIGINAL_DEST_METRICS:
        assert len(samples(scraped, name)) == n_dst, name
    for name in ORIGINAL_SERVICE_METRICS:
        assert len(samples(scraped, name)) == len(fwm), name


def in_vm() -> bool:
    return os.environ.get("IN_IPVS_VM") == "1"


def mark_rule(port: int, mark: int, proto: str = "tcp") -> list[str]:
    """The iptables arguments of the mangle rule Docker Swarm writes for a published port."""
    return ["-t", "mangle", "-A", "PREROUTING", "-p", proto, "-m", proto, "--dport", str(port)] + [
        "-j",
        "MARK",
        "--set-xmark",
        f"{mark:#x}/0xffffffff",
    ]


# ---- the exporter's web config, its log format, promtool (integration tests)


def write_config(d, tls=True, users=None):
    """A web config file in d: TLS with d's cert.pem and key.pem, basic auth for users
    (name -> password); returns its path."""
    import bcrypt

    lines = []
    if tls:
        lines += ["tls_server_config:", "  cert_file: cert.pem", "  key_file: key.pem"]
    if users:
        lines.append("basic_auth_users:")
        lines += [f"  {u}: {bcrypt.hashpw(p.encode(), bcrypt.gensalt(4)).decode()}" for u, p in users.items()]
    path = d / "web.yml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


# one line of the exporter's logfmt output
LOGFMT = re.compile(r'ts=\S+ level=(debug|info|warn|error) logger=\S+ msg="(?:[^"\\\x00-\x1f\x7f]|\\.)*"')


def promtool() -> str:
    """The path of promtool."""
    # No skip: the rules are only as good as this check (scripts/install-deps test installs
    # Debian's prometheus package, which provides promtool).
    found = shutil.which("promtool")
    assert found, "promtool not found: install Debian's 'prometheus' package (scripts/install-deps test)"
    return found


# ---- a snapshot of every kind of virtual service and real server (unit tests)

V4, V6 = socket.AF_INET, socket.AF_INET6
TCP, UDP, SCTP = socket.IPPROTO_TCP, socket.IPPROTO_UDP, 132


def sample_stats(base):
    """Stats whose ten counters and rates are multiples of base."""
    return Stats(*(base * k for k in (1, 7, 5, 1000, 3000, 1, 2, 3, 400, 500)))


def _dest(af, addr, port=0, fwd=0, weight=1, base=1, active=0, inactive=0):
    return Destination(af, addr, port, fwd, weight, 10, 2, active, inactive, 1, sample_stats(base))


# fwmark, TCP, UDP and SCTP services, IPv4 and IPv6, with and without real servers
EVERY_KIND = [
    Service(
        V4,
        0,
        "",
        0,
        256,
        "rr",
        2,
        0,
        0xFFFFFFFF,
        sample_stats(10),
        (_dest(V4, "10.0.0.2", base=10, inactive=10),),
    ),
    Service(V4, 0, "", 0, 257, "wlc", 3, 300, 0xFFFFFFFF, sample_stats(0), ()),  # persistent, no destinations
    Service(
        V4,
        0,
        "",
        0,
        999,
        "rr",
        2,
        0,
        0xFFFFFFFF,
        sample_stats(2),
        (_dest(V4, "10.0.0.3"), _dest(V4, "10.0.0.4", weight=-1)),
    ),
    Service(
        V4,
        TCP,
        "10.1.2.3",
        80,
        0,
        "wlc",
        2,
        0,
        0xFFFFFFFF,
        sample_stats(3),
        (_dest(V4, "10.1.2.10", 8080, weight=3, active=2), _dest(V4, "10.1.2.10", 8081, fwd=3, weight=0)),
    ),
    Service(
        V4,
        UDP,
        "10.1.2.3",
        80,
        0,
        "rr",
        6,
        0,
        0xFFFFFFFF,
        sample_stats(4),
        (_dest(V4, "10.1.2.20", 80, fwd=2),),
    ),
    Service(
        V4,
        SCTP,
        "10.1.2.3",
        80,
        0,
        "sh",
        2,
        0,
        0xFFFFFFFF,
        sample_stats(2**40),
        (_dest(V4, "10.1.2.30", 80, base=2**40),),
    ),
    Service(
        V6,
        TCP,
        "2001:db8::1",
        443,
        0,
        "rr",
        2,
        0,
        128,
        sample_stats(123456789),
        (_dest(V4, "10.1.2.40", 443, fwd=2), _dest(V6, "2001:db8::40", 443, base=123456789)),
    ),
    Service(V6, 0, "", 0, 256, "rr", 2, 0, 128, sample_stats(1), (_dest(V6, "2001:db8::50"),)),
]
PORTS = {256: [PublishedPort("tcp", 30000), PublishedPort("udp", 30000)], 257: [PublishedPort("tcp", 30002)]}


# ---- iptables-save output as Docker Swarm leaves it (portmap tests)

# What swarm leaves in ingress_sbox, as each backend prints it (marks and ports out of order).
NFT_SWARM = """\
# Generated by iptables-nft-save v1.8.9 (nf_tables) on Thu Nov 26 04:01:50 2026
*mangle
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A PREROUTING -p tcp -m tcp --dport 30002 -j MARK --set-xmark 0x100/0xffffffff
-A PREROUTING -p tcp -m tcp --dport 30000 -j MARK --set-xmark 0x101/0xffffffff
-A PREROUTING -p udp -m udp --dport 30000 -j MARK --set-xmark 0x101/0xffffffff
-A PREROUTING -p tcp -m tcp --dport 30001 -j MARK --set-xmark 0x102/0xffffffff
-A PREROUTING -p tcp -m tcp --dport 8080 -j MARK --set-xmark 0x102/0xffffffff
-A INPUT -d 10.0.0.5/32 -j MARK --set-xmark 0x100/0xffffffff
-A INPUT -d 10.0.0.7/32 -j MARK --set-xmark 0x101/0xffffffff
COMMIT
# Completed on Thu Nov 26 04:01:50 2026
"""
LEGACY_SWARM = """\
# Generated by iptables-save v1.8.9 on Thu Nov 26 04:01:50 2026
*mangle
:PREROUTING ACCEPT [12:720]
:INPUT ACCEPT [12:720]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A PREROUTING -p tcp -m tcp --dport 30002 -j MARK --set-xmark 0x100/0xffffffff
-A PREROUTING -p tcp -m tcp --dport 30005 -j MARK --set-xmark 0x103/0xffffffff
-A INPUT -d 10.0.0.9/32 -j MARK --set-xmark 0x103/0xffffffff
COMMIT
# Completed on Thu Nov 26 04:01:50 2026
"""


def fresh_portmap_warnings(monkeypatch) -> None:
    """portmap warns once per process: a test that starts with this starts with nothing said."""
    from ingress_ipvs_exporter.logonce import LogOnce
    from ingress_ipvs_exporter.swarm import marks

    monkeypatch.setattr(marks, "_warned", LogOnce(marks.log))


def portmap_warnings(caplog) -> list[str]:
    """The warnings portmap logged during the test."""
    import logging

    from ingress_ipvs_exporter.swarm import marks

    return [
        r.getMessage() for r in caplog.records if r.name == marks.log.name and r.levelno >= logging.WARNING
    ]


# ---- a real systemd as PID 1 in the VM (whose init is not systemd) ----------------------


def in_systemd(pid1: int, *argv: str, check: bool = True, timeout: float = 180) -> str:
    """Run a command in the private systemd's namespaces (systemctl reaches it there)."""
    res = subprocess.run(
        ["nsenter", "-t", str(pid1), "-a", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({res.returncode}): {res.stderr.strip()}")
    return res.stdout


def wait_metrics(url: str, ready, what: str, timeout: float = 240.0, fetch=scrape) -> dict:
    """The first scrape of url (by fetch) for which ready(scrape) holds, polled each second."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = fetch(url)
            if ready(last):
                return last
        except OSError as exc:
            last = exc
        time.sleep(1)
    raise AssertionError(f"{what}: not within {timeout:g}s; last scrape: {last!r}")


@contextmanager
def private_systemd(unit: str = "ingress_ipvs_exporter.service", own_network: bool = False):
    """systemd as PID 1 of a new PID and mount namespace (the VM's init is not systemd); the
    units it runs get systemd's real sandbox: DynamicUser, seccomp, capabilities, mounts.
    own_network: in a network namespace of its own too (loopback up), so that what its units
    listen on cannot meet another test's listener on the VM's addresses."""
    # --propagation shared: as on a host, where PID 1 makes / rshared (a systemd that finds itself
    # in a PID namespace leaves propagation as it was, and the VM's mounts are private).
    # /run is the VM's own tmpfs: what systemd writes there outlives it. /run/systemd/system says
    # "systemd is PID 1" to every program after it (dockerd then picks the systemd cgroup driver),
    # so it goes when this systemd does, unless it was there before.
    marker = Path("/run/systemd/system")
    had_marker = marker.exists()
    proc = subprocess.Popen(
        [
            "unshare",
            "--pid",
            "--fork",
            "--kill-child",
            "--mount-proc",
            *(["--net"] if own_network else []),
            "--propagation",
            "shared",
            "/lib/systemd/systemd",
            "--system",
            f"--unit={unit}",
            "--log-target=kmsg",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            kids = subprocess.run(
                ["pgrep", "-P", str(proc.pid), "-x", "systemd"], capture_output=True, text=True, check=False
            ).stdout.split()
            if (
                kids
                and subprocess.run(
                    ["nsenter", "-t", kids[0], "-a", "systemctl", "show", "-p", "Version"],
                    capture_output=True,
                    check=False,
                ).returncode
                == 0
            ):
                break
            assert proc.poll() is None, "systemd exited"
            assert time.monotonic() < deadline, "systemd did not answer systemctl within 120s"
            time.sleep(1)
        if own_network:
            in_systemd(int(kids[0]), "ip", "link", "set", "lo", "up")
        yield int(kids[0])
    finally:
        stop_process(proc, 30)
        if not had_marker:
            shutil.rmtree(marker, ignore_errors=True)
