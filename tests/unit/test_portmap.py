"""portmap in process: parsing iptables-save text, the capability hints, and the SwarmMarks cache
(a fake reader and clock)."""

import logging
import threading

import pytest
from ipvs_testlib import LEGACY_SWARM, NFT_SWARM, fresh_portmap_warnings, portmap_warnings

from ingress_ipvs_exporter import testing
from ingress_ipvs_exporter.swarm import marks
from ingress_ipvs_exporter.swarm.marks import (
    MarksError,
    PublishedPort,
    SwarmMarks,
    parse_marks,
)

TCP = lambda port: PublishedPort("tcp", port)  # noqa: E731
UDP = lambda port: PublishedPort("udp", port)  # noqa: E731


def test_nft_swarm_output():
    assert parse_marks(NFT_SWARM).ports == {
        0x100: [TCP(30002)],
        0x101: [TCP(30000), UDP(30000)],
        0x102: [TCP(8080), TCP(30001)],
    }


def test_both_backends_merge_and_dedupe():
    text = "# Warning: iptables-legacy tables present, use iptables-legacy-save to see them\n"
    ports = parse_marks(text + NFT_SWARM + LEGACY_SWARM).ports
    assert ports[0x100] == [TCP(30002)]  # the same rule in both backends counts once
    assert ports[0x103] == [TCP(30005)]
    assert list(ports) == [0x100, 0x101, 0x102, 0x103]


def test_only_mangle_section_counts():
    text = """\
*filter
:INPUT ACCEPT [0:0]
-A INPUT -p tcp -m tcp --dport 22 -j MARK --set-mark 0x5
COMMIT
*mangle
-A PREROUTING -p tcp -m tcp --dport 80 -j MARK --set-mark 0x6
COMMIT
*nat
-A PREROUTING -p tcp -m tcp --dport 443 -j MARK --set-mark 0x6
COMMIT
-A PREROUTING -p tcp -m tcp --dport 444 -j MARK --set-mark 0x6
"""
    assert parse_marks(text).ports == {6: [TCP(80)]}


@pytest.mark.parametrize(
    "rule, expected",
    [
        ("-p tcp -m tcp --dport 30000 -j MARK --set-xmark 0x100/0xffffffff", {256: [TCP(30000)]}),
        ("-p tcp -m tcp --dport 30000 -j MARK --set-xmark 256/4294967295", {256: [TCP(30000)]}),
        ("-p tcp --dport 30000 -j MARK --set-mark 256", {256: [TCP(30000)]}),
        ("-p tcp --dport 30000 -j MARK --set-mark 0x100/0xfff", {256: [TCP(30000)]}),
        ("-p tcp --dport 30000 -j MARK --set-xmark 0x1ff/0xff", {0xFF: [TCP(30000)]}),
        ("-p tcp --dport 30000 -j MARK --set-xmark 0x7", {7: [TCP(30000)]}),
        (
            "-p udp -m multiport --dports 53,5353 -j MARK --set-xmark 0x9/0xffffffff",
            {9: [UDP(53), UDP(5353)]},
        ),
        ("-p tcp -m multiport --dports 1000:2000,3000 -j MARK --set-mark 9", {9: [TCP(3000)]}),
        ("-p sctp -m sctp --dport 3868 -j MARK --set-mark 3", {3: [PublishedPort("sctp", 3868)]}),
        ("-p 17 --dport 53 -j MARK --set-mark 3", {3: [UDP(53)]}),
        ('-p tcp -m comment --comment "x \\"--dport\\" y" --dport 80 -j MARK --set-mark 4', {4: [TCP(80)]}),
        ("-p tcp -m tcp --dport 1000:2000 -j MARK --set-mark 9", {}),  # range: skipped
        ("-p tcp -m tcp ! --dport 99 -j MARK --set-mark 9", {}),  # negated port
        ("! -p tcp -m tcp --dport 99 -j MARK --set-mark 9", {}),  # negated protocol
        ("-p icmp -j MARK --set-mark 9", {}),  # no port
        ("-d 10.0.0.5/32 -j MARK --set-xmark 0x100/0xffffffff", {}),  # VIP rule
        ("-p tcp -m tcp --dport 98 -j CONNMARK --set-xmark 0x9/0xffffffff", {}),  # not MARK
        ("-p tcp -m mark --mark 0x9 -m tcp --dport 98 -j ACCEPT", {}),
        ("-p tcp -m tcp --dport 98 -j MARK --or-mark 0x9", {}),
        ("-p tcp -m tcp --dport 98 -j MARK --set-mark 0", {}),  # mark 0 is no fwmark
        ("-p tcp -m tcp --dport 98 -j MARK --set-mark zz", {}),
        ("-p tcp -m tcp --dport 70000 -j MARK --set-mark 9", {}),
        ("-p tcp -m tcp --dport ²3 -j MARK --set-mark 9", {}),
        ("-p tcp -m tcp --dport", {}),
    ],
)
def test_rule_forms(rule, expected):
    assert parse_marks(f"*mangle\n-A PREROUTING {rule}\nCOMMIT\n").ports == expected


def test_any_chain_counts():
    text = "*mangle\n:DOCKER-X - [0:0]\n-A DOCKER-X -p tcp --dport 81 -j MARK --set-mark 5\nCOMMIT\n"
    assert parse_marks(text).ports == {5: [TCP(81)]}


def test_junk_is_tolerated():
    text = "\n".join(
        [
            "iptables-save v1.8.9 (legacy): Cannot initialize: Table does not exist",
            "*mangle",
            "garbage -A",
            "-A",
            '-A PREROUTING -m comment --comment "unbalanced',
            '-A PREROUTING -p tcp --dport 81 -m comment --comment "open -j MARK --set-mark 5',
            "\x00\xff binary",
            "   -A PREROUTING -p tcp --dport 82 -j MARK --set-mark 5   ",
            "COMMIT",
            "COMMIT",
            "*",
        ]
    )
    assert parse_marks(text).ports == {5: [TCP(82)]}
    assert parse_marks("").ports == {}


def test_published_port_orders_by_protocol_then_port():
    assert sorted([UDP(1), TCP(2), TCP(1)]) == [TCP(1), TCP(2), UDP(1)]


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    fresh_portmap_warnings(monkeypatch)


_warnings = portmap_warnings


@pytest.mark.parametrize(
    "reason, names, caps",
    [
        (
            "exit 1: nsenter: reassociate to namespace 'ns/net' failed: Operation not permitted",
            ["iptables-nft-save", "iptables-legacy-save"],
            ["CAP_SYS_ADMIN"],
        ),
        (
            "exit 4: Could not fetch rule set generation id: Permission denied (you must be root)",
            ["iptables-nft-save"],
            ["CAP_NET_ADMIN"],
        ),
        (
            "exit 1: Cannot initialize: Permission denied (you must be root)",
            ["iptables-legacy-save"],
            ["CAP_NET_RAW", "CAP_NET_ADMIN"],
        ),
        ("exit 1: Failed to initialize nft: Protocol not supported", ["iptables-nft-save"], []),
    ],
)
def test_hint_names_the_capability_each_failure_lacks(reason, names, caps):
    hint = marks._hint({reason: names})
    for cap in ("CAP_SYS_ADMIN", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_DAC_READ_SEARCH"):
        assert (cap in hint) == (cap in caps), hint


# --- SwarmMarks cache ------------------------------------------------------------------


class FakeReader:
    """Returns queued texts (or raises queued exceptions) and records the namespaces asked."""

    def __init__(self, *results):
        self.results = list(results)
        self.calls = []

    def __call__(self, namespace_path):
        self.calls.append(namespace_path)
        result = self.results.pop(0) if len(self.results) > 1 else self.results[0]
        if isinstance(result, BaseException):
            raise result
        return result


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_lookup_returns_only_found_marks():
    reader = FakeReader(NFT_SWARM)
    ports = SwarmMarks("/ns", reader=reader, clock=FakeClock()).lookup([0x102, 0x100, 999])
    assert ports == {0x100: [TCP(30002)], 0x102: [TCP(8080), TCP(30001)]}
    assert list(ports) == [0x100, 0x102]
    assert reader.calls == ["/ns"]


def test_cache_refreshes_on_mark_set_change_and_in_the_background_with_age():
    reader, clock, spawned = FakeReader(NFT_SWARM), FakeClock(), []
    pm = SwarmMarks("/ns", max_age=60, reader=reader, clock=clock, spawn=spawned.append)
    pm.lookup([0x100])
    pm.lookup(iter([0x100]))
    clock.now += 59
    pm.lookup({0x100})
    assert len(reader.calls) == 1 and not spawned
    pm.lookup([0x100, 0x101])  # a new service appeared: read before answering
    assert len(reader.calls) == 2 and not spawned
    pm.lookup([0x101, 0x100, 0x101])  # same set, other order
    assert len(reader.calls) == 2
    clock.now += 60
    pm.lookup([0x100, 0x101])  # stale: answered from the cache, one refresh started
    pm.lookup([0x100, 0x101])
    assert len(reader.calls) == 2 and len(spawned) == 1
    spawned.pop()()
    assert len(reader.calls) == 3
    pm.lookup([0x100, 0x101])
    assert len(reader.calls) == 3 and not spawned


def test_empty_mark_set_reads_nothing():
    reader = FakeReader(NFT_SWARM)
    assert SwarmMarks("/ns", reader=reader, clock=FakeClock()).lookup([]) == {}
    assert reader.calls == []


def test_new_rules_seen_after_refresh():
    reader, clock, spawned = FakeReader(NFT_SWARM, NFT_SWARM + LEGACY_SWARM), FakeClock(), []
    pm = SwarmMarks("/ns", max_age=10, reader=reader, clock=clock, spawn=spawned.append)
    assert pm.lookup([0x103]) == {}
    clock.now += 10
    assert pm.lookup([0x103]) == {}  # this scrape does not wait for the read
    spawned.pop()()
    assert pm.lookup([0x103]) == {0x103: [TCP(30005)]}


def test_failure_keeps_last_good_map_and_records_error():
    boom = MarksError("cannot read iptables rules in /ns: boom")
    reader = FakeReader(NFT_SWARM, boom, ValueError(), NFT_SWARM)
    clock, spawned = FakeClock(), []
    pm = SwarmMarks("/ns", max_age=5, reader=reader, clock=clock, spawn=spawned.append)
    good = pm.lookup([0x100])
    assert good == {0x100: [TCP(30002)]} and testing.last_error(pm) is None
    for error in ("cannot read iptables rules in /ns: boom", "ValueError", None):
        clock.now += 5
        assert pm.lookup([0x100]) == good
        spawned.pop()()
        assert (
            pm.lookup([0x100]) == good and testing.last_error(pm) == error and not spawned
        )  # no retry before max_age
    assert len(reader.calls) == 4


def test_a_slow_background_read_holds_up_no_scrape():
    release, reads = threading.Event(), []

    def reader(path):
        reads.append(path)
        if len(reads) > 1:
            assert release.wait(10)
        return NFT_SWARM

    clock = FakeClock()
    pm = SwarmMarks("/ns", max_age=5, reader=reader, clock=clock)  # real background thread
    assert pm.lookup([0x100]) == {0x100: [TCP(30002)]}
    clock.now += 5
    for _ in range(3):  # while the refresh is stuck: answered at once, no second refresh
        assert pm.lookup([0x100]) == {0x100: [TCP(30002)]}
    assert len(reads) == 2
    release.set()
    assert testing.wait_idle(pm, 10) and pm._cache.loaded_at == clock.now


def test_failure_before_any_success_gives_empty_map():
    pm = SwarmMarks("/ns", reader=FakeReader(MarksError("nope")), clock=FakeClock())
    assert pm.lookup([0x100]) == {}
    assert testing.last_error(pm) == "nope"


def test_returned_lists_do_not_alias_the_cache():
    pm = SwarmMarks("/ns", reader=FakeReader(NFT_SWARM), clock=FakeClock())
    pm.lookup([0x100])[0x100].append(TCP(1))
    assert pm.lookup([0x100]) == {0x100: [TCP(30002)]}


def test_concurrent_lookups_read_once():
    started, release = threading.Event(), threading.Event()
    calls = []

    def slow_reader(path):
        calls.append(path)
        started.set()
        release.wait(5)
        return NFT_SWARM

    pm = SwarmMarks("/ns", reader=slow_reader, clock=FakeClock())
    results = []
    threads = [threading.Thread(target=lambda: results.append(pm.lookup([0x100]))) for _ in range(4)]
    for t in threads:
        t.start()
    assert started.wait(5)
    release.set()
    for t in threads:
        t.join(5)
    assert calls == ["/ns"] and results == [{0x100: [TCP(30002)]}] * 4


def test_a_failing_read_is_logged_once_until_a_read_works(caplog):
    boom = MarksError("cannot read iptables rules in /ns: boom")
    reader, clock, spawned = FakeReader(boom, boom, NFT_SWARM, boom), FakeClock(), []
    pm = SwarmMarks("/ns", max_age=5, reader=reader, clock=clock, spawn=spawned.append)
    with caplog.at_level(logging.WARNING, logger=marks.log.name):
        for _ in range(3):
            pm.lookup([0x100])
            clock.now += 5
            pm.lookup([0x100])
            spawned.pop()()
    assert len(reader.calls) == 4 and testing.last_error(pm) == str(boom)
    assert _warnings(caplog) == [f"published ports unavailable: {boom}"] * 2  # failed, worked, failed
