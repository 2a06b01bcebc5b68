"""The exporter against the real kernel's IPVS, run as a user runs it, checked against ipvsadm."""
from __future__ import annotations

import socket

import pytest

from ingress_ipvs_exporter.ipvs import Handle, NamespaceNotFound, NotANamespace
from ipvs_testlib import (assert_seed_samples_match, ipvsadm, running_exporter, samples, scrape, sh,
                          stable_ipvsadm)
from lab import SWARM_PORTS, UNMARKED_FWMARK, swarm_like_lab

pytestmark = pytest.mark.kernel


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_scrape_equals_ipvsadm_in_a_swarm_like_namespace(backend):
    with swarm_like_lab(backend) as lab:
        lab.requests(30000, 10)
        expected_ports = {mark: str(port) for port, mark in SWARM_PORTS.items()}
        expected_ports[UNMARKED_FWMARK] = ""  # no rule: exported with an empty port
        with running_exporter("--namespace-path", lab.ns_path) as (url, _):
            for attempt in range(3):
                before = stable_ipvsadm(lab.ns_path)
                scraped = scrape(url)
                if ipvsadm(lab.ns_path) == before:
                    break
            else:
                pytest.fail("ipvsadm changed during every scrape")
        # the traffic really went through IPVS: 10 connections on the service of port 30000
        assert before["FWM 256"].conns == 10
        assert scraped[("ipvs_connections_total", frozenset(
            {("namespace", lab.ns_path), ("fwmark", "256"), ("port", "30000")}))] == 10
        assert before["FWM 256"].inbytes > 0 and before["FWM 256"].outbytes > 0
        assert_seed_samples_match(scraped, before, lab.ns_path, expected_ports)
        assert scraped[("ipvs_up", frozenset())] == 1


def _service(snap, **match):
    found = [s for s in snap.services() if all(getattr(s, k) == v for k, v in match.items())]
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
    assert (d.af, d.address, d.port, d.weight, d.u_threshold, d.l_threshold) == \
        (socket.AF_INET6, "2001:db8::10", 8443, 7, 100, 10)

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
            assert any(s.address == "10.9.9.9" for s in h.snapshot().services())
    finally:
        sh("ipvsadm", "-D", "-t", "10.9.9.9:9")


def test_errors_name_the_namespace_and_the_fix(tmp_path):
    with pytest.raises(NamespaceNotFound, match="/no/such/ns.*--namespace-path"):
        Handle("/no/such/ns").snapshot()
    plain = tmp_path / "not-a-netns"
    plain.write_text("")
    with pytest.raises(NotANamespace, match="not a network namespace"):
        Handle(str(plain)).snapshot()


def test_exporter_serves_up_0_without_namespace_then_recovers(netns):
    name, path = netns
    missing = f"/run/netns/{name}-later"
    with running_exporter("--namespace-path", missing) as (url, _):
        first = scrape(url)
        assert first[("ipvs_up", frozenset())] == 0
        assert not samples(first, "ipvs_services_total")
        # the namespace appears (a node joins a swarm): picked up without a restart
        sh("ip", "netns", "add", f"{name}-later")
        try:
            sh("ipvsadm", "-A", "-f", "256", "-s", "rr", ns=f"{name}-later")
            after = scrape(url)
            assert after[("ipvs_up", frozenset())] == 1
            assert after[("ipvs_services_total", frozenset({("namespace", missing)}))] == 1
        finally:
            sh("ip", "netns", "del", f"{name}-later", check=False)
