"""The namespace's IPVS settings against the real kernel: timeouts, sync daemons and net.ipv4.vs
sysctls as the exporter serves them, each compared with ipvsadm and sysctl in that namespace;
a handle keeps one descriptor however often they are read, and never reads a namespace that
replaced its own at the same path."""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterator

import pytest
from ingress_ipvs_exporter._ipvs_cffi import lib
from ipvs_testlib import running_exporter, samples, scrape, sh

from ingress_ipvs_exporter.ipvs import SYSCTLS, Handle

pytestmark = pytest.mark.kernel


def _of(scraped: dict, name: str, namespace: str) -> dict[frozenset, float]:
    """The samples of `name` in `namespace`, keyed by their labels less namespace."""
    out = {}
    for labels, value in samples(scraped, name).items():
        if ("namespace", namespace) in labels:
            out[frozenset(kv for kv in labels if kv[0] != "namespace")] = value
    return out


def _adm_timeouts(ns: str) -> dict[str, float]:
    """`ipvsadm -L --timeout`: "Timeout (tcp tcpfin udp): 900 120 300"."""
    m = re.search(r"Timeout \(tcp tcpfin udp\): (\d+) (\d+) (\d+)", sh("ipvsadm", "-L", "--timeout", ns=ns))
    assert m, "ipvsadm -L --timeout printed no timeouts"
    return dict(zip(("tcp", "tcp_fin", "udp"), map(float, m.groups())))


def _adm_daemons(ns: str) -> set[tuple[str, str, str]]:
    """`ipvsadm -L --daemon`: "master sync daemon (mcast=dummy0, syncid=7)" per daemon."""
    out = sh("ipvsadm", "-L", "--daemon", ns=ns)
    return set(re.findall(r"(master|backup) sync daemon \(mcast=([^,]+), syncid=(\d+)", out))


def _sysctls(ns: str) -> dict[str, float]:
    """Every sysctl the exporter reads that the namespace has, as `sysctl` shows it there."""
    out = {}
    for name in SYSCTLS:
        value = sh("sysctl", "-n", f"net.ipv4.vs.{name}", ns=ns, check=False).strip()
        if value:
            out[name] = float(value)
    return out


@pytest.fixture
def second_netns(netns) -> Iterator[tuple[str, str]]:
    """Another namespace beside `netns`, left at the kernel's defaults."""
    name = netns[0] + "_b"
    sh("ip", "netns", "add", name)
    try:
        yield name, f"/run/netns/{name}"
    finally:
        sh("ip", "netns", "del", name, check=False)


def test_timeouts_are_what_ipvsadm_set_in_that_namespace_only(netns, second_netns):
    (name, path), (other, other_path) = netns, second_netns
    sh("ipvsadm", "--set", "100", "20", "30", ns=name)
    with running_exporter("--namespace-path", path, "--namespace-path", other_path) as (url, _):
        scraped = scrape(url)
    got = {dict(k)["protocol"]: v for k, v in _of(scraped, "ipvs_timeout_seconds", path).items()}
    assert got == _adm_timeouts(name) == {"tcp": 100, "tcp_fin": 20, "udp": 30}
    defaults = {dict(k)["protocol"]: v for k, v in _of(scraped, "ipvs_timeout_seconds", other_path).items()}
    assert defaults == _adm_timeouts(other) and defaults != got


def test_master_and_backup_sync_daemons_show_until_stopped(netns):
    name, path = netns
    for dev, addr in (("dummy0", "192.0.2.1/24"), ("dummy1", "198.51.100.1/24")):
        sh("ip", "link", "add", dev, "type", "dummy", ns=name)
        sh("ip", "addr", "add", addr, "dev", dev, ns=name)
        sh("ip", "link", "set", dev, "up", "multicast", "on", ns=name)
    sh("ip", "route", "add", "224.0.0.0/4", "dev", "dummy0", ns=name)
    sh("ipvsadm", "--start-daemon", "master", "--mcast-interface", "dummy0", "--syncid", "7", ns=name)
    sh("ipvsadm", "--start-daemon", "backup", "--mcast-interface", "dummy1", "--syncid", "9", ns=name)
    with running_exporter("--namespace-path", path) as (url, _):
        running, adm = scrape(url), _adm_daemons(name)
        sh("ipvsadm", "--stop-daemon", "master", ns=name)
        sh("ipvsadm", "--stop-daemon", "backup", ns=name)
        stopped = scrape(url)
        assert _adm_daemons(name) == set()
    info = {}
    for labels, value in _of(running, "ipvs_sync_daemon_info", path).items():
        d = dict(labels)
        info[(d["state"], d["mcast_interface"], d["sync_id"])] = value
    assert info == dict.fromkeys(adm, 1.0)
    assert adm == {("master", "dummy0", "7"), ("backup", "dummy1", "9")}
    assert _of(running, "ipvs_sync_daemons", path) == {frozenset(): 2}
    assert _of(stopped, "ipvs_sync_daemon_info", path) == {}
    assert _of(stopped, "ipvs_sync_daemons", path) == {frozenset(): 0}


def test_a_sysctl_changed_in_a_namespace_shows_there_only(netns, second_netns):
    (name, path), (other, other_path) = netns, second_netns
    with running_exporter("--namespace-path", path, "--namespace-path", other_path) as (url, _):
        before = scrape(url)
        # changed while the exporter runs: each scrape reads the files inside the namespace
        sh("sysctl", "-qw", "net.ipv4.vs.conn_reuse_mode=0", "net.ipv4.vs.expire_nodest_conn=1", ns=name)
        after = scrape(url)
    for scraped, ns, ns_path in (
        (after, name, path),
        (after, other, other_path),
        (before, other, other_path),
    ):
        got = {dict(k)["name"]: v for k, v in _of(scraped, "ipvs_sysctl", ns_path).items()}
        assert got == _sysctls(ns), ns_path  # every setting the namespace has, none it lacks
    changed = {dict(k)["name"]: v for k, v in _of(after, "ipvs_sysctl", path).items()}
    untouched = {dict(k)["name"]: v for k, v in _of(after, "ipvs_sysctl", other_path).items()}
    assert (changed["conn_reuse_mode"], changed["expire_nodest_conn"]) == (0, 1)
    assert (untouched["conn_reuse_mode"], untouched["expire_nodest_conn"]) == (1, 0)
    was = {dict(k)["name"]: v for k, v in _of(before, "ipvs_sysctl", path).items()}
    assert (was["conn_reuse_mode"], was["expire_nodest_conn"]) == (1, 0)
    assert {"conn_reuse_mode", "expire_nodest_conn", "sloppy_tcp", "schedule_icmp"} <= set(changed)


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_handle_keeps_one_descriptor_however_often_its_settings_are_read(netns, second_netns):
    # a node's exporter holds a handle on each of up to a hundred namespaces under a soft
    # limit of 1024 descriptors: a handle is its socket, nothing per sysctl
    (name, path), (other, other_path) = netns, second_netns
    sh("sysctl", "-qw", "net.ipv4.vs.expire_nodest_conn=1", ns=name)
    before = _fds()
    handles = [Handle(path), Handle(other_path)]
    try:
        for _ in range(3):
            read = [(h.snapshot(), h.settings()) for h in handles]
            assert _fds() - before == len(handles)
        assert read[0][1].sysctls == {k: int(v) for k, v in _sysctls(name).items()}
        assert read[1][1].sysctls == {k: int(v) for k, v in _sysctls(other).items()}
        assert (read[0][1].sysctls["expire_nodest_conn"], read[1][1].sysctls["expire_nodest_conn"]) == (1, 0)
    finally:
        for h in handles:
            h.close()
    assert _fds() == before


def test_settings_of_a_replaced_namespace_are_refused_then_read_from_the_new_one(netns):
    # Docker recreates a namespace at the same path: the shim must not read the new one's
    # sysctls for a handle (a socket) still bound to the old one
    name, path = netns
    h = Handle(path)
    try:
        h.snapshot()
        sh("ip", "netns", "del", name)
        sh("ip", "netns", "add", name)
        sh("sysctl", "-qw", "net.ipv4.vs.expire_nodest_conn=1", ns=name)
        assert lib.ipvs_get_settings(h._h) == -errno.ESTALE  # as a read racing the swap sees it
        assert h.settings().sysctls["expire_nodest_conn"] == 1  # the binding reopened
    finally:
        h.close()


def test_original_metrics_only_leaves_the_settings_out(netns):
    _, path = netns
    with running_exporter("--namespace-path", path, "--original-metrics-only") as (url, _):
        names = {n for n, _ in scrape(url)}
    assert "ipvs_services_total" in names
    assert not {"ipvs_timeout_seconds", "ipvs_sync_daemons", "ipvs_sysctl"} & names
