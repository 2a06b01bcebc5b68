"""The cache of compressed chunks: only chunks whose values changed are rendered and
compressed again, the body stays the oracle's, budget 0 keeps nothing."""

from __future__ import annotations

import zlib

import pytest
from ipvs_testlib import EVERY_KIND, PORTS, sample_stats
from reference import render as reference

from ingress_ipvs_exporter import testing
from ingress_ipvs_exporter.render import exposition, gzipstream
from ingress_ipvs_exporter.render.exposition import Renderer, View
from ingress_ipvs_exporter.render.gzipstream import Segment, SegmentCache, deflate, join
from ingress_ipvs_exporter.render.metrics import Options


def text_of(seg: Segment) -> bytes:
    """A segment's text, from its deflate data alone (its CRC and length checked too)."""
    text = zlib.decompressobj(-15).decompress(b"".join(seg.data))
    assert (zlib.crc32(text), len(text)) == (seg.crc, seg.length)
    return text


def test_only_the_chunks_whose_values_changed_are_made_again():
    cache, made = SegmentCache(1 << 20), []
    words = [b"a", b"b", b"c", b"d", b"e"]

    def make(i: int) -> Segment:
        made.append(i)
        return deflate([b"".join(words[2 * i : 2 * i + 2])])

    values = bytes([ord("B")]) + bytes(range(5))  # a tag, then one byte per value
    assert text_of(cache.segment("k", values, 2, make)) == b"abcde"
    assert made == [0, 1, 2]
    made.clear()
    assert text_of(cache.segment("k", values, 2, make)) == b"abcde"  # unchanged: reused whole
    assert made == []
    words[3], values = b"D", values[:4] + b"\xff" + values[5:]  # value 3: chunk 1
    assert text_of(cache.segment("k", values, 2, make)) == b"abcDe"
    assert made == [1]
    made.clear()
    cache.segment("k", b"C" + values[1:], 2, make)  # another tag: nothing compares equal
    assert made == [0, 1, 2]
    assert len(cache) == 1 and cache.size == sum(len(b"".join(s.data)) for s in cache._last["k"][1])


def test_budget_zero_keeps_nothing():
    cache, made = SegmentCache(0), []

    def make(i: int) -> Segment:
        made.append(i)
        return deflate([b"x"])

    for _ in range(2):
        cache.segment("k", b"B\x00\x01", 1, make)
    assert made == [0, 1, 0, 1]
    assert len(cache) == 0 and cache.size == 0


def test_join_is_the_segments_end_to_end():
    parts = [b"one\n", b"", b"two\n" * 1000]
    seg = join(deflate([p]) for p in parts)
    assert text_of(seg) == b"".join(parts)


@pytest.mark.parametrize("budget", [0, 1 << 20], ids=["no-cache", "cache"])
@pytest.mark.parametrize("openmetrics", [False, True], ids=["text-0.0.4", "openmetrics"])
def test_a_moving_real_server_redoes_one_chunk_per_family_it_is_in(monkeypatch, budget, openmetrics):
    monkeypatch.setattr(exposition, "CHUNK_SERIES", 2)
    monkeypatch.setattr(gzipstream, "CACHE_BUDGET", budget)
    made = []

    def counting(chunks):
        made.append(1)
        return deflate(chunks)

    monkeypatch.setattr(exposition, "deflate", counting)
    r, options, services = Renderer(), Options(backends=True), list(EVERY_KIND)

    def scrape(services):
        snap = testing.build_snapshot(services)
        made.clear()
        text = text_of(join(r.segments([View("/ns", snap, PORTS)], options, openmetrics)))
        assert text.decode() == reference(snap, "/ns", PORTS, options, openmetrics)
        return len(made)

    scrape(services)  # the shape: info families deflated once for it
    everything = scrape(services)
    s = services[3]  # its second real server sees a connection, and so does the service
    dests = (s.destinations[0], s.destinations[1]._replace(stats=sample_stats(5)))
    services[3] = s._replace(stats=sample_stats(4), destinations=dests)
    if budget:
        # one chunk of each family of the service's and of the real server's counters and
        # rates: 10 each (a TCP service: not in the original, fwmark-only families)
        assert scrape(services) == 20
        assert scrape(services) == 0
    else:
        assert scrape(services) == everything


def test_sums_beyond_64_bits_are_one_chunk_and_still_cached(monkeypatch):
    """Real servers merged by --destination-labels sum counters; a sum past 2**63 (sums pack
    as signed 64 bits) packs as text, with no fixed width per series: one chunk then."""
    monkeypatch.setattr(exposition, "CHUNK_SERIES", 2)
    s = EVERY_KIND[3]
    big = tuple(dst._replace(stats=sample_stats(2**52)) for dst in s.destinations)  # x 3000: past 2**63
    snap = testing.build_snapshot([s._replace(destinations=big)])
    options = Options(destination_labels=("address",), backends=True)
    r, steps = Renderer(), []
    real = SegmentCache.segment
    monkeypatch.setattr(
        SegmentCache,
        "segment",
        lambda self, k, v, step, make: steps.append(step) or real(self, k, v, step, make),
    )
    first = text_of(join(r.segments([View("/ns", snap, PORTS)], options)))
    assert first.decode() == reference(snap, "/ns", PORTS, options, False)
    assert 0 in steps
    assert text_of(join(r.segments([View("/ns", snap, PORTS)], options))) == first
