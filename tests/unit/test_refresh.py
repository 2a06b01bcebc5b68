"""Refreshing: the one cache policy behind SwarmMarks and DockerServices, driven by a fake clock
and a spawn that only records, so every background load runs when the test says."""

import threading

import pytest

from ingress_ipvs_exporter import testing
from ingress_ipvs_exporter.swarm.refresh import Refreshing


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class Loader:
    """Returns (or raises) queued results in order, the last one forever; counts calls."""

    def __init__(self, *results):
        self.results = list(results)
        self.calls = 0

    def __call__(self):
        self.calls += 1
        result = self.results.pop(0) if len(self.results) > 1 else self.results[0]
        if isinstance(result, Exception):
            raise result
        return result


def _cache(load, wait, **kw):
    clock, spawned = Clock(), []
    cache = Refreshing(
        load, "initial", max_age=60, wait_for_new_keys=wait, clock=clock, spawn=spawned.append, **kw
    )
    return cache, clock, spawned


def test_wait_policy_loads_new_keys_before_answering():
    load = Loader("v1", "v2")
    cache, clock, spawned = _cache(load, wait=True)
    assert cache.get(["a"]) == "v1" and load.calls == 1 and cache.ok and cache.loaded_at == clock.now
    assert cache.get(iter(["a"])) == "v1" and load.calls == 1  # same keys, fresh: memory
    assert cache.get(["a", "b"]) == "v2" and load.calls == 2 and not spawned  # a new key: waited for


def test_background_policy_never_loads_in_get():
    load = Loader("v1", "v2")
    cache, clock, spawned = _cache(load, wait=False)
    assert cache.get(["a"]) == "initial" and load.calls == 0 and not cache.ok
    assert len(spawned) == 1 and not testing.wait_idle(cache, 0)
    spawned.pop()()
    assert testing.wait_idle(cache, 0) and cache.get(["a"]) == "v1" and not spawned
    assert cache.get(["a", "b"]) == "v1" and len(spawned) == 1  # new key: requested, not waited for
    spawned.pop()()
    assert cache.get(["a", "b"]) == "v2"


def test_new_keys_during_a_background_load_queue_one_more_and_age_does_not():
    load = Loader("v1", "v2", "v3")
    cache, clock, spawned = _cache(load, wait=False)
    cache.get(["a"])
    spawned.pop()()
    clock.now += 60
    cache.get(["a"])  # old: one background load
    (run,) = spawned
    spawned.clear()
    cache.get(["a"])  # still old, a load runs: dropped
    cache.get(["a", "b"])  # new keys while it runs: queued
    cache.get(["a", "c"])  # queued once, not twice
    assert not spawned
    run()  # the load, then the queued one, in the same thread
    assert load.calls == 3 and cache.get(["a", "c"]) == "v3" and not spawned and testing.wait_idle(cache, 0)


def test_old_value_is_refreshed_in_the_background_once():
    load = Loader("v1", "v2")
    cache, clock, spawned = _cache(load, wait=True)
    cache.get(["a"])
    clock.now += 59.9
    assert cache.get(["a"]) == "v1" and not spawned
    clock.now += 0.1
    assert cache.get(["a"]) == "v1" and cache.get(["a"]) == "v1" and len(spawned) == 1
    spawned.pop()()
    assert cache.get(["a"]) == "v2" and cache.loaded_at == clock.now and not spawned


@pytest.mark.parametrize("retry_failed", [False, True])
def test_failure_keeps_the_last_good_value_and_records_why(retry_failed):
    boom = OSError("boom")
    load = Loader("v1", boom, "v2")
    cache, clock, spawned = _cache(load, wait=True, retry_failed=retry_failed)
    cache.get(["a"])
    clock.now += 60
    cache.get(["a"])
    spawned.pop()()
    assert cache.get(["a"]) == "v1" and cache.error is boom and not cache.ok
    # failed: retried on the next get() only when told to, else after max_age
    assert len(spawned) == (1 if retry_failed else 0)
    if not retry_failed:
        clock.now += 60
        cache.get(["a"])
    spawned.pop()()
    assert cache.get(["a"]) == "v2" and cache.error is None and cache.ok


def test_failure_before_any_success_gives_initial():
    cache, _, _ = _cache(Loader(ValueError()), wait=True)
    assert cache.get(["a"]) == "initial" and isinstance(cache.error, ValueError)


def test_a_background_load_overtaken_by_a_waited_for_one_is_discarded():
    values, entered, resume = iter(["v1", "old", "new"]), threading.Event(), threading.Event()

    def load():
        value = next(values)
        if value == "old":  # the background read: stuck until the test lets it finish
            entered.set()
            resume.wait(5)
        return value

    cache, clock, spawned = _cache(load, wait=True)
    cache.get(["a"])
    clock.now += 60
    cache.get(["a"])
    worker = threading.Thread(target=spawned.pop())
    worker.start()
    assert entered.wait(5)
    clock.now += 1
    assert cache.get(["a", "b"]) == "new"  # a new key: read while the old read still runs
    resume.set()
    worker.join(5)
    assert cache.get(["a", "b"]) == "new" and testing.wait_idle(cache, 0)  # the older read did not win


def test_empty_keys_load_nothing_and_close_stops_loads():
    load = Loader("v1")
    cache, clock, spawned = _cache(load, wait=False)
    assert cache.get([]) == "initial" and not spawned
    cache.close()
    assert cache.get(["a"]) == "initial" and not spawned and load.calls == 0


def test_concurrent_waited_for_loads_share_one():
    started, release = threading.Event(), threading.Event()
    calls = []

    def slow():
        calls.append(1)
        started.set()
        release.wait(5)
        return "v1"

    cache = Refreshing(slow, "initial", max_age=60, wait_for_new_keys=True, clock=Clock())
    results = []
    threads = [threading.Thread(target=lambda: results.append(cache.get(["a"]))) for _ in range(4)]
    for t in threads:
        t.start()
    assert started.wait(5)
    release.set()
    for t in threads:
        t.join(5)
    assert calls == [1] and results == ["v1"] * 4


def test_default_spawn_runs_a_daemon_thread():
    done = threading.Event()

    def load():
        done.set()
        return threading.current_thread()

    cache = Refreshing(load, None, max_age=60, wait_for_new_keys=False, name="test-refresh")
    cache.get(["a"])
    assert done.wait(5) and testing.wait_idle(cache, 5)
    thread = cache.value
    assert thread.daemon and thread.name == "test-refresh" and thread is not threading.current_thread()
