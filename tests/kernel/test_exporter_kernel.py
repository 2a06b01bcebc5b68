"""The exporter against the real kernel's IPVS, run as a user runs it, checked against ipvsadm."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

import pytest
from ipvs_testlib import (
    assert_original_samples_match,
    exporter_command,
    free_port,
    ipvsadm,
    running_exporter,
    samples,
    scrape,
    scrape_while_stable,
    sh,
)
from lab import SWARM_PORTS, UNMARKED_FWMARK, swarm_like_lab

from ingress_ipvs_exporter import testing
from ingress_ipvs_exporter.ipvs import Handle, NamespaceNotFound, NotANamespace

pytestmark = pytest.mark.kernel


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_scrape_equals_ipvsadm_in_a_swarm_like_namespace(backend):
    with swarm_like_lab(backend) as lab:
        lab.requests(30000, 10)
        expected_ports = {mark: str(port) for port, mark in SWARM_PORTS.items()}
        expected_ports[UNMARKED_FWMARK] = ""  # no rule: exported with an empty port
        with running_exporter("--namespace-path", lab.ns_path) as (url, _):
            scraped, before = scrape_while_stable(url, lab.ns_path)
        # the traffic really went through IPVS: 10 connections on the service of port 30000
        assert before["FWM 256"].conns == 10
        assert (
            scraped[
                (
                    "ipvs_connections_total",
                    frozenset({("namespace", lab.ns_path), ("fwmark", "256"), ("port", "30000")}),
                )
            ]
            == 10
        )
        assert before["FWM 256"].inbytes > 0 and before["FWM 256"].outbytes > 0
        assert_original_samples_match(scraped, before, lab.ns_path, expected_ports)
        assert scraped[("ipvs_up", frozenset({("namespace", lab.ns_path)}))] == 1


def _service(snap, **match):
    found = [s for s in testing.as_services(snap) if all(getattr(s, k) == v for k, v in match.items())]
    assert len(found) == 1, f"{match}: {found}"
    return found[0]


def test_snapshot_covers_tcp_udp_ipv6_and_persistence(netns):
    name, path = netns
    for cmd in (
        "-A -t 10.1.2.3:80 -s wlc",
        "-a -t 10.1.2.3:80 -r 10.1.2.10:8080 -m -w 3",
        "-a -t 10.1.2.3:80 -r 10.1.2.11 -g -w 0",  # direct routing keeps the service port
        "-A -u 10.1.2.3:53 -s rr -p 300",
        "-a -u 10.1.2.3:53 -r 10.1.2.20:53 -i",
        "-A -t [2001:db8::1]:443 -s sh",
        "-a -t [2001:db8::1]:443 -r [2001:db8::10]:8443 -m -w 7 -x 100 -y 10",
        "-A -f 4242 -6 -s rr",
        "-a -f 4242 -6 -r [2001:db8::20]:0 -m",
    ):
        sh("ipvsadm", *cmd.split(), ns=name)
    with Handle(path) as h:
        snap = h.snapshot()
    adm = ipvsadm(path)
    assert snap.n_svc == len(adm) == 4

    tcp = _service(snap, protocol=socket.IPPROTO_TCP, address="10.1.2.3")
    assert (tcp.af, tcp.port, tcp.fwmark, tcp.scheduler) == (socket.AF_INET, 80, 0, "wlc")
    got = {(d.address, d.port): (d.weight, d.fwd_method) for d in tcp.destinations}
    assert got == {("10.1.2.10", 8080): (3, 0), ("10.1.2.11", 80): (0, 3)}  # masq=0, route=3
    assert {k: v.weight for k, v in adm["TCP 10.1.2.3:80"].dests.items()} == {k: v[0] for k, v in got.items()}

    udp = _service(snap, protocol=socket.IPPROTO_UDP)
    assert (udp.port, udp.scheduler, udp.timeout) == (53, "rr", 300)
    assert udp.flags & 0x1  # IP_VS_SVC_F_PERSISTENT
    assert [(d.address, d.fwd_method) for d in udp.destinations] == [("10.1.2.20", 2)]  # tunnel

    v6 = _service(snap, af=socket.AF_INET6, fwmark=0)
    assert (v6.address, v6.port, v6.scheduler) == ("2001:db8::1", 443, "sh")
    (d,) = v6.destinations
    assert (d.af, d.address, d.port, d.weight, d.u_threshold, d.l_threshold) == (
        socket.AF_INET6,
        "2001:db8::10",
        8443,
        7,
        100,
        10,
    )

    fw6 = _service(snap, fwmark=4242)
    assert fw6.af == socket.AF_INET6
    assert [d.address for d in fw6.destinations] == ["2001:db8::20"]


def test_empty_ipvs_and_current_namespace(netns):
    name, path = netns
    with Handle(path) as h:
        snap = h.snapshot()
        assert (snap.n_svc, snap.n_dst) == (0, 0)
        version, table = h.info()
    assert version >> 16 == 1 and table > 0  # IPVS 1.x, a real hash table size
    # "" is the exporter's own namespace: here the VM's root namespace
    sh("ipvsadm", "-A", "-t", "10.9.9.9:9", "-s", "rr")
    try:
        with Handle("") as h:
            assert any(s.address == "10.9.9.9" for s in testing.as_services(h.snapshot()))
    finally:
        sh("ipvsadm", "-D", "-t", "10.9.9.9:9")


def test_errors_name_the_namespace_and_the_fix(tmp_path):
    with pytest.raises(NamespaceNotFound, match="/no/such/ns.*--namespace-path"):
        Handle("/no/such/ns").snapshot()
    plain = tmp_path / "not-a-netns"
    plain.write_text("text\n")
    with pytest.raises(NotANamespace, match="not a network namespace"):
        Handle(str(plain)).snapshot()
    # what Docker creates before it mounts the namespace on it: not there yet, not a wrong path
    placeholder = tmp_path / "ingress_sbox"
    placeholder.write_text("")
    with pytest.raises(NamespaceNotFound, match="empty file, not yet a network namespace"):
        Handle(str(placeholder)).snapshot()


def test_exporter_serves_up_0_without_namespace_then_recovers(netns):
    name, path = netns
    missing = f"/run/netns/{name}-later"
    with running_exporter("--namespace-path", missing) as (url, _):
        first = scrape(url)
        assert first[("ipvs_up", frozenset({("namespace", missing)}))] == 0
        assert not samples(first, "ipvs_services_total")
        # the namespace appears (a node joins a swarm): picked up without a restart
        sh("ip", "netns", "add", f"{name}-later")
        try:
            sh("ipvsadm", "-A", "-f", "256", "-s", "rr", ns=f"{name}-later")
            after = scrape(url)
            assert after[("ipvs_up", frozenset({("namespace", missing)}))] == 1
            assert after[("ipvs_services_total", frozenset({("namespace", missing)}))] == 1
        finally:
            sh("ip", "netns", "del", f"{name}-later", check=False)


def _full_labels(ns: str, family: str, fwmark: int, port: str, protocol: str, vip: str) -> set:
    return {
        ("namespace", ns),
        ("family", family),
        ("fwmark", str(fwmark)),
        ("port", port),
        ("protocol", protocol),
        ("vip", vip),
    }


def test_full_families_match_ipvsadm_for_every_kind_of_service(netns):
    name, path = netns
    for cmd in (
        "-A -t 10.1.2.3:80 -s wlc",
        "-a -t 10.1.2.3:80 -r 10.1.2.10:8080 -m -w 3",
        "-a -t 10.1.2.3:80 -r 10.1.2.10:8081 -m -w 0",  # same IP, another port: distinct series
        "-A -u 10.1.2.3:80 -s rr",
        "-a -u 10.1.2.3:80 -r 10.1.2.20:80 -m",  # same VIP:port, udp
        "-A --sctp-service 10.1.2.3:80 -s rr",
        "-a --sctp-service 10.1.2.3:80 -r 10.1.2.30:80 -m",
        "-A -t [2001:db8::1]:80 -s rr",
        "-a -t [2001:db8::1]:80 -r 10.1.2.40 -i",  # IPv4 server, IPv6 VIP
        "-a -t [2001:db8::1]:80 -r [2001:db8::40]:80 -m -w 5",
        "-A -f 256 -s rr",
        "-a -f 256 -r 10.1.2.50:0 -m",
        "-A -f 256 -6 -s rr",
        "-a -f 256 -6 -r [2001:db8::50]:0 -m",  # same mark, IPv6
    ):
        sh("ipvsadm", *cmd.split(), ns=name)
    adm = ipvsadm(path)
    with running_exporter("--namespace-path", path, "--backend-metrics") as (url, _):
        scraped = scrape(url)
    kinds = {"TCP": "tcp", "UDP": "udp", "SCTP": "sctp"}
    for key, s in adm.items():
        if s.kind == "FWM":
            family = "ipv6" if key.endswith("IPv6") else "ipv4"
            labels = _full_labels(path, family, s.fwmark, "", "", "")
        else:
            vip, port = s.key.rsplit(":", 1)
            labels = _full_labels(
                path, "ipv6" if vip.startswith("[") else "ipv4", 0, port, kinds[s.kind], vip.strip("[]")
            )
        for metric, want in (
            ("ipvs_service_connections_total", s.conns),
            ("ipvs_service_packets_in_total", s.inpkts),
            ("ipvs_service_bytes_out_total", s.outbytes),
            ("ipvs_service_destinations", len(s.dests)),
        ):
            assert scraped[(metric, frozenset(labels))] == want, (key, metric)
        sched = [l for (n, l) in scraped if n == "ipvs_service_info" and labels <= set(l)]
        assert len(sched) == 1 and ("scheduler", s.scheduler) in sched[0], key
        for (addr, dport), d in s.dests.items():
            dl = frozenset(labels | {("address", addr), ("destination_port", str(dport))})
            assert scraped[("ipvs_backend_weight", dl)] == d.weight, (key, addr, dport)
            assert scraped[("ipvs_backend_active_connections", dl)] == d.active
            assert scraped[("ipvs_backend_connections_total", dl)] == d.conns
            fwd = {"Masq": "masq", "Tunnel": "tunnel", "Route": "route", "Local": "local"}[d.forward]
            assert scraped[("ipvs_backend_info", frozenset(dl | {("forwarding", fwd)}))] == 1
    assert len(samples(scraped, "ipvs_service_info")) == len(adm) == 6
    assert len(samples(scraped, "ipvs_backend_weight")) == sum(len(s.dests) for s in adm.values()) == 8
    version = [l for (n, l) in scraped if n == "ipvs_version_info"]
    assert version and ("version", "1.2.1") in version[0]


def test_namespace_recreated_is_reopened_never_stale(netns):
    name, path = netns
    sh("ipvsadm", "-A", "-f", "256", "-s", "rr", ns=name)
    with running_exporter("--namespace-path", path) as (url, _):
        assert samples(scrape(url), "ipvs_destination_total").keys() == {
            frozenset({("fwmark", "256"), ("namespace", path), ("port", "")})
        }
        # what a docker restart does to ingress_sbox: the same path, a new namespace
        sh("ip", "netns", "del", name)
        sh("ip", "netns", "add", name)
        sh("ipvsadm", "-A", "-f", "300", "-s", "rr", ns=name)
        after = scrape(url)
    assert after[("ipvs_up", frozenset({("namespace", path)}))] == 1
    assert samples(after, "ipvs_destination_total").keys() == {
        frozenset({("fwmark", "300"), ("namespace", path), ("port", "")})
    }


def test_concurrent_scrapes_all_succeed_and_are_consistent(netns):
    import concurrent.futures

    name, path = netns
    rules = "".join(
        f"-A -f {m} -s rr\n-a -f {m} -r 10.3.{m // 250}.{m % 250 + 1}:0 -m\n" for m in range(1, 101)
    )
    sh("ipvsadm", "-R", ns=name, input=rules)
    with running_exporter("--namespace-path", path) as (url, _):
        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            results = list(pool.map(lambda _: scrape(url), range(20)))
    for r in results:
        assert r[("ipvs_up", frozenset({("namespace", path)}))] == 1
        assert r[("ipvs_services_total", frozenset({("namespace", path)}))] == 100
        assert len(samples(r, "ipvs_destination_connections_total")) == 100


def test_services_churning_between_dumps_never_fail_a_scrape(netns):
    import threading
    import time as _time

    name, path = netns
    stop = threading.Event()

    def churn():
        i = 0
        while not stop.is_set() and i < 2000:  # bounded
            m = 1000 + i % 20
            subprocess_input = (
                f"-A -f {m} -s rr\n-a -f {m} -r 10.4.0.{i % 200 + 1}:0 -m\n-D -f {1000 + (i + 10) % 20}\n"
            )
            sh("ipvsadm", "-R", ns=name, input=subprocess_input, check=False)
            i += 1

    t = threading.Thread(target=churn, daemon=True)
    with running_exporter("--namespace-path", path) as (url, _):
        t.start()
        try:
            deadline = _time.monotonic() + 20
            n = 0
            while _time.monotonic() < deadline and n < 40:
                r = scrape(url)
                assert r[("ipvs_up", frozenset({("namespace", path)}))] == 1, "a scrape failed during churn"
                n += 1
        finally:
            stop.set()
            t.join(30)
    assert n >= 5


@pytest.mark.vm_alone  # unloads ip_vs, which the other sessions' tests use
def test_ipvs_missing_from_the_kernel_reports_up_0_with_reason(netns):
    """Unload ip_vs (no services anywhere at this point), scrape, load it back.

    The kernel autoloads ip_vs on the first request for the IPVS genetlink family (as it
    does for ipvsadm), so loading is blocked with an install rule while the test runs."""
    import pathlib
    import time as _time

    name, path = netns
    block = pathlib.Path("/etc/modprobe.d/zz-test-block-ip_vs.conf")  # the VM's throw-away overlay
    block.write_text("install ip_vs /bin/false\n")
    sh("ipvsadm", "-C")

    def loaded() -> list[str]:
        with open("/proc/modules") as f:
            return sorted(
                (line.split()[0] for line in f if line.startswith("ip_vs")), key=lambda m: m == "ip_vs"
            )

    for _ in range(20):  # namespaces deleted by earlier tests release IPVS asynchronously
        mods = loaded()
        if not mods:
            break
        sh("modprobe", "-r", "-a", *mods, check=False)
        _time.sleep(0.5)
    try:
        assert not loaded(), "could not unload ip_vs: " + ", ".join(loaded())
        with running_exporter("--namespace-path", path) as (url, _):
            r = scrape(url)
        assert r[("ipvs_up", frozenset({("namespace", path)}))] == 0
        assert (
            r[("ipvs_scrape_errors_total", frozenset({("namespace", path), ("reason", "ipvs_unavailable")}))]
            >= 1
        )
    finally:
        block.unlink()
        sh("modprobe", "-a", "ip_vs", "ip_vs_rr", "ip_vs_wrr", "ip_vs_sh", "ip_vs_wlc", check=False)


def test_the_dump_releases_the_gil(netns):
    """Another thread keeps running Python while a large dump is inside the C shim: the
    longest pause the other thread sees is a small part of the dump, not all of it."""
    import threading
    import time as _time

    from ingress_ipvs_exporter.ipvs import lib

    name, path = netns
    rules = "".join(
        f"-A -f {m} -s rr\n-a -f {m} -r 10.5.{m // 250}.{m % 250 + 1}:0 -m\n" for m in range(1, 3001)
    )
    sh("ipvsadm", "-R", ns=name, input=rules)
    h = Handle(path)
    h.snapshot()  # open and warm up
    span = []
    done = threading.Event()

    def dump():
        span.append(_time.monotonic())
        assert lib.ipvs_dump(h._h) == 0
        span.append(_time.monotonic())
        done.set()

    ticks = []
    t = threading.Thread(target=dump)
    t.start()
    while not done.is_set():
        ticks.append(_time.monotonic())
    t.join()
    h.close()
    start, end = span
    inside = [start] + [x for x in ticks if start <= x <= end] + [end]
    longest = max(b - a for a, b in zip(inside, inside[1:]))
    assert end - start > 0.05, "the dump was too short to tell"
    assert longest < 0.5 * (end - start), f"other threads stalled {longest:.3f}s of a {end - start:.3f}s dump"


def test_cardinality_flags_leave_out_what_they_say(netns):
    """--original-metrics-only, --no-rate-metrics and --web.disable-exporter-metrics on a real
    IPVS: exactly the families each leaves, and the series counts of docs/metrics.md."""
    name, path = netns
    for cmd in ("-A -f 256 -s rr", "-a -f 256 -r 10.1.2.50:0 -m", "-a -f 256 -r 10.1.2.51:0 -m"):
        sh("ip", "netns", "exec", name, "ipvsadm", *cmd.split())
    original = {
        "ipvs_services_total",
        "ipvs_connections_total",
        "ipvs_bytes_in_total",
        "ipvs_bytes_out_total",
        "ipvs_destination_total",
        "ipvs_destination_active_connections_total",
        "ipvs_destination_inactive_connections_total",
        "ipvs_destination_connections_total",
        "ipvs_destination_bytes_in_total",
        "ipvs_destination_bytes_out_total",
    }
    health = {"ipvs_up", "ipvs_scrape_duration_seconds"}
    flags = ("--original-metrics-only", "--no-rate-metrics", "--web.disable-exporter-metrics")
    with running_exporter("--namespace-path", path, *flags) as (url, _):
        names = {n for n, _ in scrape(url)}
    assert names == original | health, names ^ (original | health)
    with running_exporter("--namespace-path", path, "--no-rate-metrics", "--backend-metrics") as (url, _):
        scraped = scrape(url)
    names = {n for n, _ in scraped}
    assert not [n for n in names if n.endswith("_per_second")]
    assert "ipvs_backend_weight" in names and "ipvs_service_connections_total" in names
    assert "ipvs_exporter_build_info" in names and "process_cpu_seconds_total" in names
    ipvs_series = [n for n, _ in scraped if n.startswith("ipvs_") and n not in health]
    per_namespace = {
        "ipvs_services_total",
        "ipvs_version_info",
        "ipvs_connection_table_size",
        "ipvs_exporter_build_info",
        # the namespace's settings: timeouts, sysctls, sync daemons
        "ipvs_timeout_seconds",
        "ipvs_sysctl",
        "ipvs_sync_daemons",
        "ipvs_sync_daemon_info",
    }
    # docs/metrics.md: 13 per service and 17 per real server; no mangle rule here, so no published port
    assert len([n for n in ipvs_series if n not in per_namespace]) == 13 - 1 + 2 * 17


@pytest.mark.parametrize("kind", ["fifo", "mnt-namespace"])
def test_namespace_path_that_is_no_network_namespace_exits_2_at_once(tmp_path, kind):
    """A FIFO at --namespace-path used to hang start-up in open() (waiting for a writer), and a
    namespace of another kind was taken for Docker's empty placeholder ("waiting"): both are a
    wrong flag, said in one line with exit 2."""
    if kind == "fifo":
        path = str(tmp_path / "ns")
        os.mkfifo(path)
    else:
        path = "/proc/self/ns/mnt"  # the exporter's own mount namespace
    argv = [exporter_command(), "--listen-address", f"127.0.0.1:{free_port()}", "--namespace-path", path]
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the exporter with --namespace-path at a {kind} neither exited nor served for 120 s")
    lines = [line for line in (res.stdout + res.stderr).splitlines() if line.strip()]
    assert res.returncode == 2 and len(lines) == 1, (res.returncode, lines)
    assert path in lines[0] and "not a network namespace" in lines[0] and "--namespace-path" in lines[0]


def test_namespace_path_replaced_by_a_fifo_while_serving(netns, tmp_path):
    """The path turns into a FIFO under a running exporter: scrapes keep answering (ipvs_up 0,
    reason not_a_namespace) instead of blocking in open() with the handle's lock held, and
    SIGINT still stops the process within seconds."""
    name, real = netns
    sh("ipvsadm", "-A", "-f", "256", "-s", "rr", ns=name)
    path = tmp_path / "ns"
    path.symlink_to(real)
    up = ("ipvs_up", frozenset({("namespace", str(path))}))
    with running_exporter("--namespace-path", str(path)) as (url, proc):
        assert scrape(url)[up] == 1
        path.unlink()
        os.mkfifo(path)
        for _ in range(3):
            after = scrape(url)  # urlopen gives up after 60 s: a blocked scrape fails here
            assert after[up] == 0
        reasons = {dict(labels)["reason"] for labels in samples(after, "ipvs_scrape_errors_total")}
        assert "not_a_namespace" in reasons, reasons
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            pytest.fail("the exporter did not stop within 30 s of SIGINT")
        assert time.monotonic() - started < 30
