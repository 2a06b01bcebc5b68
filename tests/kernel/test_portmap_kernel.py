"""swarm/marks.py against real iptables (nf_tables and legacy backends) in throw-away namespaces."""

import pytest
from ipvs_testlib import sh

from ingress_ipvs_exporter import testing
from ingress_ipvs_exporter.swarm.marks import (
    MarksError,
    PublishedPort,
    SwarmMarks,
    parse_marks,
    read_mangle_rules,
)

pytestmark = pytest.mark.kernel

BACKENDS = ("nft", "legacy")

# (protocol, port, mark) as swarm programs them: marks and ports not in the same order.
SWARM = [
    ("tcp", 30002, 0x100),
    ("tcp", 30000, 0x101),
    ("udp", 30000, 0x101),
    ("tcp", 30001, 0x102),
    ("tcp", 8080, 0x102),
]
SWARM_PORTS = {
    0x100: [PublishedPort("tcp", 30002)],
    0x101: [PublishedPort("tcp", 30000), PublishedPort("udp", 30000)],
    0x102: [PublishedPort("tcp", 8080), PublishedPort("tcp", 30001)],
}


def add_rules(ns, backend, rules, chain="PREROUTING", family="iptables"):
    """Append swarm-style MARK rules with one backend's iptables, explicitly."""
    for proto, port, mark in rules:
        sh(
            f"{family}-{backend}",
            "-t",
            "mangle",
            "-A",
            chain,
            "-p",
            proto,
            "-m",
            proto,
            "--dport",
            str(port),
            "-j",
            "MARK",
            "--set-xmark",
            f"{mark:#x}/0xffffffff",
            ns=ns,
        )


def add_vip_rule(ns, backend, vip, mark):
    """Swarm's per-VIP rule: a mark without a port, which must not show up as a port."""
    sh(
        f"iptables-{backend}",
        "-t",
        "mangle",
        "-A",
        "INPUT",
        "-d",
        f"{vip}/32",
        "-j",
        "MARK",
        "--set-xmark",
        f"{mark:#x}/0xffffffff",
        ns=ns,
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_backend(netns, backend):
    name, path = netns
    add_rules(name, backend, SWARM)
    add_vip_rule(name, backend, "10.0.0.5", 0x100)
    assert parse_marks(read_mangle_rules(path)).ports == SWARM_PORTS
    pm = SwarmMarks(path)
    assert pm.lookup([0x102, 0x100, 0x101, 0x1FF]) == SWARM_PORTS
    assert testing.last_error(pm) is None
    # The other backend really does not see them: a one-backend reader would find nothing.
    other = "legacy" if backend == "nft" else "nft"
    assert "30002" not in sh(f"iptables-{other}-save", "-t", "mangle", ns=name)


def test_both_backends_hold_different_rules(netns):
    name, path = netns
    add_rules(name, "nft", SWARM[:3])
    add_rules(name, "legacy", SWARM[2:])  # SWARM[2] in both: merged, not doubled
    add_vip_rule(name, "legacy", "10.0.0.7", 0x102)
    assert SwarmMarks(path).lookup([0x100, 0x101, 0x102]) == SWARM_PORTS


@pytest.mark.parametrize("backend", BACKENDS)
def test_ipv6_rules(netns, backend):
    name, path = netns
    add_rules(name, backend, [("tcp", 30010, 0x110)], family="ip6tables")
    assert SwarmMarks(path).lookup([0x110]) == {0x110: [PublishedPort("tcp", 30010)]}


@pytest.mark.parametrize("backend", BACKENDS)
def test_refresh_sees_a_new_service(netns, backend):
    name, path = netns
    add_rules(name, backend, SWARM[:1])
    pm = SwarmMarks(path)
    assert pm.lookup([0x100]) == {0x100: SWARM_PORTS[0x100]}
    add_rules(name, backend, [("tcp", 30007, 0x107)])
    assert pm.lookup([0x100, 0x107]) == {0x100: SWARM_PORTS[0x100], 0x107: [PublishedPort("tcp", 30007)]}


def test_reading_creates_no_legacy_table(netns):
    # Reading a legacy table creates it, and then every iptables-nft call there warns.
    name, path = netns
    add_rules(name, "nft", SWARM)
    assert SwarmMarks(path).lookup([0x100, 0x101, 0x102]) == SWARM_PORTS
    tables = sh(
        "sh",
        "-c",
        "cat /proc/net/ip_tables_names /proc/net/ip6_tables_names 2>/dev/null",
        ns=name,
        check=False,
    )
    assert "mangle" not in tables.split()
    assert "legacy tables present" not in sh("sh", "-c", "iptables-nft-save -t mangle 2>&1", ns=name)


def test_empty_namespace(netns):
    _, path = netns
    assert parse_marks(read_mangle_rules(path)).ports == {}


@pytest.mark.parametrize("backend", BACKENDS)
def test_current_namespace(backend):
    # A private, unreferenced chain in the VM's own namespace: no traffic is affected.
    chain = f"PORTMAP-TEST-{backend.upper()}"
    ipt = f"iptables-{backend}"
    sh(ipt, "-t", "mangle", "-N", chain)
    try:
        add_rules(None, backend, [("tcp", 31000, 0x1F0), ("sctp", 31001, 0x1F0)], chain=chain)
        assert SwarmMarks("").lookup([0x1F0]) == {
            0x1F0: [PublishedPort("sctp", 31001), PublishedPort("tcp", 31000)]
        }
    finally:
        sh(ipt, "-t", "mangle", "-F", chain, check=False)
        sh(ipt, "-t", "mangle", "-X", chain, check=False)


def test_nonexistent_namespace_names_the_path():
    path = "/run/netns/portmap-no-such-namespace"
    with pytest.raises(MarksError) as err:
        read_mangle_rules(path)
    assert path in str(err.value)
    pm = SwarmMarks(path)
    assert pm.lookup([0x100]) == {}
    assert path in testing.last_error(pm)


def test_path_that_is_not_a_namespace(tmp_path):
    path = tmp_path / "not-a-netns"
    path.write_text("")
    with pytest.raises(MarksError) as err:
        read_mangle_rules(str(path))
    assert str(path) in str(err.value)
