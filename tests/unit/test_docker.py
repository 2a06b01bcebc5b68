"""docker, in process: parsing --docker-host, and the DockerServices cache (a fake fetch, a fake
clock and a spawn that only records, so every refresh runs when the test says: no daemon, no
socket, no thread)."""

import logging

import pytest

from ingress_ipvs_exporter import testing
from ingress_ipvs_exporter.swarm import names
from ingress_ipvs_exporter.swarm.client import DockerError
from ingress_ipvs_exporter.swarm.endpoint import parse_docker_host
from ingress_ipvs_exporter.swarm.names import (
    DockerServices,
    SwarmService,
)

NETNS = "/var/run/docker/netns/"
IN, LB = NETNS + "ingress_sbox", NETNS + "lb_k7z6c1mri"


# ---------------------------------------------------------------------------- parse_docker_host
@pytest.mark.parametrize(
    "value, expected",
    [
        ("unix:///var/run/docker.sock", ("unix", "/var/run/docker.sock")),
        (" unix:///run/user/1000/docker.sock ", ("unix", "/run/user/1000/docker.sock")),
        ("tcp://127.0.0.1:2375", ("tcp", "127.0.0.1:2375")),
        ("tcp://docker.example:2376/", ("tcp", "docker.example:2376")),
        ("http://manager-1:2375", ("tcp", "manager-1:2375")),
        ("TCP://[::1]:2375", ("tcp", "[::1]:2375")),
        ("tcp://manager-1", ("tcp", "manager-1:2375")),
        ("http://manager-1", ("tcp", "manager-1:80")),
    ],
)
def test_parse_docker_host(value, expected):
    assert parse_docker_host(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        "/var/run/docker.sock",
        "docker.sock",
        "unix://",
        "unix://var/run/docker.sock",
        "https://h:2376",
        "ssh://user@h",
        "npipe:////./pipe/docker_engine",
        "tcp://",
        "tcp://:2375",
        "tcp://h:notaport",
        "tcp://h:70000",
        "tcp://h:0",
        "tcp://h:2375/v1.41",
        "tcp://u:p@h:2375",
    ],
)
def test_parse_docker_host_rejects(value):
    with pytest.raises(ValueError) as info:
        parse_docker_host(value)
    message = str(info.value)
    assert "--docker-host" in message and "\n" not in message


# ---------------------------------------------------------------------------- DockerServices' cache
class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class FakeFetch:
    """A fetch that returns (or raises) what the test says; it records the sandboxes the network
    route was asked about."""

    def __init__(self, result):
        self.result = result
        self.calls = 0
        self.asked = []

    def __call__(self, host, timeout, *sandboxes):
        self.calls += 1
        self.asked.append(sorted(*sandboxes) if sandboxes else None)
        if isinstance(self.result, Exception):
            raise self.result
        return dict(self.result)


def _no_manager():
    return FakeFetch(DockerError("docker at unix:///fake.sock: HTTP 503: not a swarm manager", "http", 503))


A, B, C = 256, 257, 258
SVC_A, SVC_B, SVC_C = (SwarmService("", name, "ingress") for name in "abc")


def _by_mark(**services):
    return {
        ("ingress_sbox", mark): svc
        for mark, svc in zip((A, B, C), (SVC_A, SVC_B, SVC_C))
        if svc.name in services
    }


def _cache(fetch, clock, max_age=60.0):
    """A DockerServices (network route = fetch, a worker's /services) whose refreshes wait in
    cache.spawned until settle() runs them."""
    spawned = []
    cache = DockerServices(
        "unix:///fake.sock",
        max_age=max_age,
        fetch=_no_manager(),
        fetch_networks=fetch,
        clock=clock,
        spawn=spawned.append,
    )
    cache.spawned = spawned
    return cache


def settle(cache) -> bool:
    """Run the refreshes the cache has requested, in order (as its thread would)."""
    while cache.spawned:
        cache.spawned.pop(0)()
    return testing.wait_idle(cache, 0)


def _primed(fetch, clock, marks=(A, B), max_age=60.0):
    """_cache() whose first refresh (asking about marks in ingress_sbox) has run."""
    cache = _cache(fetch, clock, max_age)
    assert cache.names(IN, marks) == {}  # nothing cached yet: the scrape does not wait
    assert len(cache.spawned) == 1 and fetch.calls == 0
    assert settle(cache)
    return cache


def test_cache_first_lookup_refreshes_in_background():
    fetch, clock = FakeFetch(_by_mark(a=1, b=1, c=1)), FakeClock()
    cache = _primed(fetch, clock)
    assert (
        cache.up
        and testing.last_error(cache) is None
        and fetch.calls == 1
        and fetch.asked == [["ingress_sbox"]]
    )
    assert cache.names(IN, [A, B]) == {A: SVC_A, B: SVC_B}
    assert cache.names(IN, [B, 1]) == {B: SVC_B}  # a changed set: served now, refreshed too
    assert settle(cache) and fetch.calls == 2
    cache.close()


def test_cache_empty_lookup_does_nothing():
    fetch = FakeFetch(_by_mark(a=1))
    cache = _cache(fetch, FakeClock())
    assert cache.names(IN, []) == {}
    assert not cache.spawned and fetch.calls == 0


def test_cache_lookup_never_blocks_on_a_slow_fetch():
    """A changed mark set is answered from memory and the refresh it asks for is handed to the
    spawn: names() itself never calls Docker, however slow Docker is."""
    fetch, clock = FakeFetch(_by_mark(a=1, b=1)), FakeClock()
    cache = _primed(fetch, clock)
    fetch.result = _by_mark(a=1, c=1)
    assert cache.names(IN, [A, C]) == {A: SVC_A}  # the old map, at once
    assert cache.names(IN, [A, C]) == {A: SVC_A}
    assert fetch.calls == 1 and len(cache.spawned) == 1  # requested, not run in names()
    assert not testing.wait_idle(cache, 0)  # the refresh counts as running until it has run
    assert settle(cache)
    assert cache.names(IN, [A, C]) == {A: SVC_A, C: SVC_C}
    assert fetch.calls == 2


def test_cache_refreshes_when_the_mark_set_or_a_marks_ports_change():
    fetch, clock = FakeFetch(_by_mark(a=1)), FakeClock()
    cache = _primed(fetch, clock, marks=[A])
    assert cache.names(IN, [A]) == {A: SVC_A} and settle(cache) and fetch.calls == 1
    fetch.result = _by_mark(a=1, b=1)
    assert cache.names(IN, [A, B]) == {A: SVC_A}  # new mark: old map now, refresh requested
    assert settle(cache) and fetch.calls == 2
    assert cache.names(IN, [A, B]) == {A: SVC_A, B: SVC_B}
    assert settle(cache) and fetch.calls == 2  # same set, fresh cache: no refresh
    cache.names(IN, [A, B], {A: [("tcp", 30000)]})  # a port published on a mark
    assert settle(cache) and fetch.calls == 3


def test_cache_namespaces_share_one_refresh_and_a_gone_one_is_forgotten():
    """One collector per namespace asks in turn: that alone is no change to refresh for."""
    fetch, clock = FakeFetch(_by_mark(a=1)), FakeClock()
    cache = _primed(fetch, clock, marks=[A])
    cache.names(LB, [B])
    assert settle(cache) and fetch.calls == 2 and fetch.asked[-1] == ["ingress_sbox", "lb_k7z6c1mri"]
    for _ in range(5):
        cache.names(IN, [A])
        cache.names(LB, [B])
    assert settle(cache) and fetch.calls == 2
    clock.now += 181  # LB is asked no more (its network left this node)
    cache.names(IN, [A])
    assert settle(cache) and fetch.calls == 3 and fetch.asked[-1] == ["ingress_sbox"]


def test_cache_refreshes_when_old():
    fetch, clock = FakeFetch(_by_mark(a=1)), FakeClock()
    cache = _primed(fetch, clock, marks=[A], max_age=60)
    clock.now += 59
    cache.names(IN, [A])
    assert settle(cache) and fetch.calls == 1
    fetch.result = {("ingress_sbox", A): SVC_B}  # service replaced under the same mark
    clock.now += 1
    assert cache.names(IN, [A]) == {A: SVC_A}
    assert settle(cache) and fetch.calls == 2
    assert cache.names(IN, [A]) == {A: SVC_B}


def test_cache_one_refresh_at_a_time_and_requests_queue():
    fetch, clock = FakeFetch(_by_mark(a=1)), FakeClock()
    cache = _primed(fetch, clock, marks=[A])
    fetch.result = _by_mark(a=1, b=1, c=1)
    cache.names(IN, [A, B])
    for _ in range(5):
        cache.names(IN, [A, C])
        cache.names(IN, [A, B])
    assert len(cache.spawned) == 1  # one refresh started; later requests wait behind it
    assert settle(cache)
    assert fetch.calls == 3  # that one and exactly one more, for what was asked meanwhile
    assert cache.names(IN, [A, B]) == {A: SVC_A, B: SVC_B}


def test_cache_keeps_last_good_map_on_error_and_up_flips(caplog):
    fetch, clock = FakeFetch(_by_mark(a=1, b=1)), FakeClock()
    cache = _primed(fetch, clock)
    assert cache.up
    fetch.result = DockerError("docker at unix:///fake.sock: connection refused; fix it", "unreachable")
    clock.now += 61
    with caplog.at_level(logging.WARNING, logger=names.__name__):
        assert cache.names(IN, [A, B]) == {A: SVC_A, B: SVC_B}
        assert settle(cache)
        assert not cache.up and "connection refused" in testing.last_error(cache)
        assert cache.names(IN, [A, B]) == {A: SVC_A, B: SVC_B}  # last good map, retried in background
        assert settle(cache) and fetch.calls == 3
        cache.names(IN, [A, B])
        assert settle(cache) and fetch.calls == 4
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "connection refused" in warnings[0].getMessage()  # once, not per refresh

    caplog.clear()
    fetch.result = DockerError("docker at unix:///fake.sock: no answer within 2s", "timeout")
    with caplog.at_level(logging.WARNING, logger=names.__name__):
        for _ in range(2):
            cache.names(IN, [A, B])
            assert settle(cache)
    assert [r.getMessage() for r in caplog.records] == [
        "swarm service names unavailable: docker at unix:///fake.sock: no answer within 2s"
    ]
    assert testing.last_error(cache).endswith("no answer within 2s") and not cache.up

    fetch.result = _by_mark(a=1)  # Docker is back
    with caplog.at_level(logging.INFO, logger=names.__name__):
        cache.names(IN, [A, B])
        assert settle(cache)
    assert cache.up and testing.last_error(cache) is None
    assert (
        caplog.records[-1].getMessage()
        == "swarm service names available again from docker at unix:///fake.sock"
    )
    assert cache.names(IN, [A, B]) == {A: SVC_A}


def test_cache_survives_unexpected_exceptions():
    fetch, clock = FakeFetch(RuntimeError("bug")), FakeClock()
    cache = _primed(fetch, clock)
    assert not cache.up and testing.last_error(cache) == "bug"
    fetch.result = _by_mark(a=1)
    cache.names(IN, [A, B])
    assert settle(cache) and cache.up


def test_cache_close_stops_refreshes():
    fetch, clock = FakeFetch(_by_mark(a=1)), FakeClock()
    cache = _primed(fetch, clock, marks=[A])
    cache.close()
    clock.now += 3600
    assert cache.names(IN, [A, B]) == {A: SVC_A}
    assert settle(cache) and fetch.calls == 1
