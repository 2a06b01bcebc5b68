"""Two scrapes at once (an HA pair of Prometheus servers): each body is one scrape's value.

Threads are forced into the interleavings that broke before (both scrapes holding the same old
cache entry; one scrape's read finishing between another's read and its body) with barriers
and events, never with sleeps.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from ipvs_testlib import EVERY_KIND, PORTS
from prometheus_client.parser import text_string_to_metric_families

from ingress_ipvs_exporter import testing
from ingress_ipvs_exporter.collector import NamespaceReader
from ingress_ipvs_exporter.ipvs import NamespaceNotFound, Snapshot
from ingress_ipvs_exporter.render.exposition import MetricsApp
from ingress_ipvs_exporter.render.gzipstream import Segment, SegmentCache, deflate

NS = "/run/netns/x"


def run_together(*fns: Callable[[], object]) -> list[object]:
    """Run each fn in its own thread; their results, re-raising the first exception."""
    results: list[object] = [None] * len(fns)
    errors: list[BaseException] = []

    def call(i: int, fn: Callable[[], object]) -> None:
        try:
            results[i] = fn()
        except BaseException as e:  # handed to the test thread
            errors.append(e)

    threads = [threading.Thread(target=call, args=(i, fn)) for i, fn in enumerate(fns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
        assert not t.is_alive(), "a scrape thread hung"
    if errors:
        raise errors[0]
    return results


def held(cache: SegmentCache) -> int:
    """The compressed bytes the cache really holds."""
    return sum(entry[2].compressed_size for entry in cache._last.values())


def test_two_scrapes_replacing_one_entry_keep_the_size_true_and_raise_nothing():
    """Both scrapes take the same old entry and both replace it; the first's new segment is
    over the budget (not stored), so the second found its key gone (KeyError before), or both
    subtracted the old size (size drifted from what is held)."""
    small = b"q" + bytes(8)
    cache = SegmentCache(budget=64)
    cache.segment("k", small, 0, lambda i: deflate([b"x\n"]))
    assert len(cache) == 1 and cache.size == held(cache)
    both_built = threading.Barrier(2, timeout=10)

    def scrape(text: bytes) -> Callable[[], Segment]:
        def make(i: int) -> Segment:
            both_built.wait()  # each has taken the old entry before either replaces it
            return deflate([text])

        return lambda: cache.segment("k", b"q" + text[:8], 0, make)

    big = bytes(range(256)) * 4  # compresses to more than the budget: not stored
    run_together(scrape(big), scrape(b"y\n" * 8))
    assert cache.size == held(cache)
    assert cache.size <= cache.budget


def test_many_scrapes_of_a_cache_over_its_budget_keep_the_size_true():
    cache = SegmentCache(budget=600)
    start = threading.Barrier(4, timeout=10)

    def scrapes(seed: int) -> Callable[[], None]:
        def loop() -> None:
            start.wait()
            for n in range(300):
                text = bytes((seed * 7 + n * k) % 251 for k in range(40 + n % 200))
                cache.segment(n % 3, b"q" + text, 0, lambda i, t=text: deflate([t]))

        return loop

    run_together(*(scrapes(s) for s in range(4)))
    assert cache.size == held(cache)


def test_a_body_holds_the_health_of_its_own_read_only():
    """Scrape A's read works; scrape B's read fails and finishes while A still renders. A's
    body said ipvs_up 0 (B's outcome, stored on the shared collector) next to its own IPVS
    families; now each body carries the outcome of its own read."""
    snap = testing.build_snapshot(EVERY_KIND)
    a_read = threading.Event()
    b_read = threading.Event()
    calls = []

    def snapshot() -> Snapshot:
        calls.append(threading.current_thread().name)
        if threading.current_thread().name == "B":
            a_read.wait(10)
            raise NamespaceNotFound(2, f"network namespace {NS} does not exist")
        return snap

    app = MetricsApp(NamespaceReader(NS, snapshot, lambda marks: PORTS))
    bodies: dict[str, str] = {}

    def scrape_a() -> None:
        chunks, _ = app.stream("")
        first = next(chunks)  # A has read IPVS and rendered its first lines
        a_read.set()
        b_read.wait(10)  # B's failed read has finished meanwhile
        bodies["A"] = (first + b"".join(chunks)).decode()

    def scrape_b() -> None:
        bodies["B"] = testing.body(app, "")[0].decode()
        b_read.set()

    threads = [threading.Thread(target=scrape_a, name="A"), threading.Thread(target=scrape_b, name="B")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(calls) == ["A", "B"]
    up = {name: _value(body, "ipvs_up") for name, body in bodies.items()}
    assert up == {"A": 1.0, "B": 0.0}
    assert "ipvs_services_total" in bodies["A"] and "ipvs_services_total" not in bodies["B"]
    assert _value(bodies["B"], "ipvs_scrape_errors_total") == 1.0


def _value(body: str, sample: str) -> float:
    values = [s.value for f in text_string_to_metric_families(body) for s in f.samples if s.name == sample]
    assert len(values) == 1, (sample, values)
    return values[0]
