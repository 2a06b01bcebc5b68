"""The fast renderer is byte-identical to prometheus_client's rendering of the same snapshot."""

from __future__ import annotations

import pytest
from ipvs_testlib import EVERY_KIND, PORTS, sample_stats
from prometheus_client import CollectorRegistry
from reference import Fixed, ipvs_families
from reference import render as reference

from ingress_ipvs_exporter import speedups, testing
from ingress_ipvs_exporter.render import gzipstream
from ingress_ipvs_exporter.render.exposition import Renderer, View, fmt
from ingress_ipvs_exporter.render.metrics import Options
from ingress_ipvs_exporter.swarm.marks import PublishedPort


@pytest.mark.parametrize("openmetrics", [False, True], ids=["text-0.0.4", "openmetrics"])
@pytest.mark.parametrize("ns", ["/var/run/docker/netns/ingress_sbox", "", 'odd "ns"\\path\nx'])
@pytest.mark.parametrize(
    "options",
    [
        Options(),
        Options(destination_labels=(), per_destination=False),
        Options(backends=True),
        Options(destination_labels=("address",), backends=True),
        Options(destination_labels=("destination_port",), backends=True),
        Options(backends=True, original_only=True),
        Options(backends=True, rates=False),
    ],
    ids=[
        "default",
        "no-destinations",
        "backends",
        "merged-ports",
        "merged-addresses",
        "original-only",
        "no-rates",
    ],
)
def test_fast_rendering_is_byte_identical(openmetrics, ns, options):
    snap = testing.build_snapshot(EVERY_KIND)
    r = Renderer()
    fast = testing.render(r, snap, ns, PORTS, options, openmetrics)
    assert fast == reference(snap, ns, PORTS, options, openmetrics)
    assert testing.render(r, snap, ns, PORTS, options, openmetrics) == fast  # from the cache


def test_cache_follows_changes_in_shape_and_values():
    r = Renderer()
    first = testing.render(r, testing.build_snapshot(EVERY_KIND), "/ns", PORTS, Options())
    changed = list(EVERY_KIND)
    changed[0] = changed[0]._replace(stats=sample_stats(11))  # values only
    changed.pop(4)  # and a service gone
    snap = testing.build_snapshot(changed)
    assert (
        testing.render(r, snap, "/ns", PORTS, Options())
        == reference(snap, "/ns", PORTS, Options(), False)
        != first
    )
    other_ports = {256: [PublishedPort("tcp", 31000)]}
    assert testing.render(r, snap, "/ns", other_ports, Options()) == reference(
        snap, "/ns", other_ports, Options(), False
    )


def test_empty_snapshot():
    snap = testing.build_snapshot([])
    assert testing.render(Renderer(), snap, "/ns", {}, Options()) == reference(
        snap, "/ns", {}, Options(), False
    )


@pytest.mark.parametrize("v", [0, 1, -1, 999999, 1000000, 4510000, 12345678, 2**53 + 1, 2**64 - 1, -(2**31)])
def test_value_format_matches_prometheus_client(v):
    from prometheus_client.utils import floatToGoString

    assert fmt(v) == floatToGoString(v)


@pytest.mark.parametrize("accept", ["", "application/openmetrics-text; version=1.0.0; charset=utf-8"])
def test_whole_app_body_equals_the_registry_rendering(accept):
    from prometheus_client.exposition import choose_encoder

    from ingress_ipvs_exporter.collector import NamespaceReader
    from ingress_ipvs_exporter.render.exposition import MetricsApp

    snap = testing.build_snapshot(EVERY_KIND)
    collector = NamespaceReader("/ns", lambda: snap, lambda marks: PORTS, info=lambda: (0x010201, 4096))
    reading = collector.read()
    collector.read = lambda: reading  # type: ignore[method-assign]  # one duration for both sides
    body, content_type = testing.body(MetricsApp(collector), accept)
    encoder, _ = choose_encoder(accept)
    # the two formats served, named without prometheus_client's escaping= (names are legacy)
    expected_type = "application/openmetrics-text" if accept else "text/plain; version=0.0.4"
    expected_type += "; version=1.0.0; charset=utf-8" if accept else "; charset=utf-8"
    reg = CollectorRegistry(auto_describe=False)
    reg.register(Fixed(ipvs_families(snap, "/ns", PORTS, Options())))
    reg.register(Fixed(collector.families(reading)))
    assert content_type == expected_type
    assert body == encoder(reg)


@pytest.mark.parametrize("base", ["text/plain; version=1.0.0", "application/openmetrics-text; version=1.0.0"])
@pytest.mark.parametrize("escaping", ["dots", "values", "underscores", "allow-utf-8"])
def test_an_escaping_scheme_changes_no_family(base, escaping):
    """All or none: the IPVS families and the registry's are written alike whatever escaping
    the scraper asks for (every name is a legacy one, so none is escaped)."""
    from ingress_ipvs_exporter.collector import NamespaceReader
    from ingress_ipvs_exporter.render.exposition import MetricsApp

    snap = testing.build_snapshot(EVERY_KIND)
    collector = NamespaceReader("/ns", lambda: snap, lambda marks: PORTS, info=lambda: (0x010201, 4096))
    collector._health = lambda state: []  # scrape durations differ between two scrapes
    app = MetricsApp(collector)
    plain, plain_type = testing.body(app, base)
    escaped, escaped_type = testing.body(app, f"{base}; escaping={escaping}")
    assert escaped == plain and escaped_type == plain_type
    assert b"ipvs_connections_total" in escaped and b"__" not in escaped


def test_chunks_hold_at_most_chunk_series_lines(monkeypatch):
    from ingress_ipvs_exporter.render import exposition

    monkeypatch.setattr(exposition, "CHUNK_SERIES", 2)
    snap, options = testing.build_snapshot(EVERY_KIND), Options(backends=True)
    chunks = list(Renderer().chunks([View("/ns", snap, PORTS)], options))
    assert b"".join(chunks).decode() == reference(snap, "/ns", PORTS, options, False)
    assert max(c.count(b"\n") for c in chunks) == 2  # a header (HELP, TYPE) or two series


def _body(app, accept="", gzip=True):
    chunks, _ = app.stream(accept, gzip)
    return b"".join(chunks)


def test_deflate_is_isal_where_it_has_wheels():
    """pyproject asks for isal on x86_64 and aarch64: there the body is deflated by ISA-L
    (docs/performance.md); a build that lost the dependency would quietly be 2x slower."""
    import platform

    if platform.machine() not in ("x86_64", "aarch64"):
        pytest.fail(f"the project's hosts are x86_64 or aarch64, not {platform.machine()}")
    assert gzipstream.BACKEND.__name__ == "isal.isal_zlib"


@pytest.mark.parametrize("backend", ["isal", "zlib"])
@pytest.mark.parametrize("accept", ["", "application/openmetrics-text; version=1.0.0; charset=utf-8"])
@pytest.mark.parametrize("budget", [0, 600, 1 << 20], ids=["no-cache", "partial-cache", "cache"])
def test_gzip_body_is_one_valid_member_equal_to_the_plain_body(monkeypatch, accept, budget, backend):
    """Families deflated apart and laid end to end, some from the cache: one gzip member whose
    CRC and length hold (gzip.decompress checks both) and whose text is the plain body's,
    deflated by ISA-L or by the standard library's zlib (where isal has no wheel)."""
    import gzip
    import importlib
    import zlib

    from ingress_ipvs_exporter.collector import NamespaceReader
    from ingress_ipvs_exporter.render import exposition
    from ingress_ipvs_exporter.render.exposition import MetricsApp

    lib = importlib.import_module("isal.isal_zlib" if backend == "isal" else "zlib")
    monkeypatch.setattr(gzipstream, "BACKEND", lib)
    monkeypatch.setattr(exposition, "CHUNK_SERIES", 2)
    monkeypatch.setattr(gzipstream, "CACHE_BUDGET", budget)
    services = list(EVERY_KIND)
    snaps = [testing.build_snapshot(services), testing.build_snapshot(services)]
    services[2] = services[2]._replace(stats=sample_stats(3))  # one family's values change, the others not
    snaps.append(testing.build_snapshot(services))
    current = iter(snaps)
    collector = NamespaceReader("/ns", lambda: next(current), lambda marks: PORTS, Options(backends=True))
    collector._health = lambda state: []  # scrape durations differ between two scrapes
    app = MetricsApp(collector)
    for snap in snaps:
        body = _body(app, accept)
        one_member = zlib.decompressobj(31)
        text = one_member.decompress(body)
        assert one_member.eof and one_member.unused_data == b""
        assert gzip.decompress(body) == text
        assert text.decode().startswith(reference(snap, "/ns", PORTS, Options(backends=True), bool(accept)))
        shape = app.renderer._shapes["/ns"][1]
        assert shape.cache.size <= budget
        assert bool(len(shape.cache)) == (budget > 0)
    plain_collector = NamespaceReader("/ns", lambda: snaps[-1], lambda marks: PORTS, Options(backends=True))
    plain_collector._health = lambda state: []
    assert _body(MetricsApp(plain_collector), accept, gzip=False) == text


def test_unchanged_families_are_neither_rendered_nor_compressed_again(monkeypatch):
    from ingress_ipvs_exporter.render import exposition

    r, snap, options = Renderer(), testing.build_snapshot(EVERY_KIND), Options()
    first = list(r.segments([View("/ns", snap, PORTS)], options))
    calls = []
    monkeypatch.setattr(exposition, "deflate", lambda chunks: calls.append(1))
    again = list(r.segments([View("/ns", snap, PORTS)], options))
    assert calls == []  # info families too: deflated once per shape and format
    assert again == first


def test_after_scrape_runs_after_every_body_even_when_the_client_leaves_early():
    """The CLI hands memory back (memory.release) there."""
    from ingress_ipvs_exporter.collector import NamespaceReader
    from ingress_ipvs_exporter.render.exposition import MetricsApp

    calls = []
    snap = testing.build_snapshot(EVERY_KIND)
    app = MetricsApp(
        NamespaceReader("/ns", lambda: snap, lambda marks: PORTS), after_scrape=lambda: calls.append(1)
    )
    chunks, _ = app.stream("")
    assert b"ipvs_up" in b"".join(chunks)
    assert calls == [1]
    chunks, _ = app.stream("")
    next(chunks)
    chunks.close()  # what the WSGI server does when the client hangs up mid-body
    assert calls == [1, 1]


def test_malloc_tuning_takes_on_glibc():
    import os

    from ingress_ipvs_exporter import memory

    if not os.confstr("CS_GNU_LIBC_VERSION"):
        pytest.fail("these hosts run glibc; the tuning would be a no-op here")
    assert memory.tune() is True
    memory.release()


@pytest.mark.parametrize(
    "crc_join", [gzipstream.crc_join, speedups.crc32_combine], ids=["backend", "speedups"]
)
def test_crc_join_equals_zlib_over_the_joined_text(crc_join):
    import os
    import zlib

    for a_len, b_len in [(0, 0), (0, 5), (5, 0), (1, 1), (100, 3), (4096, 65537), (7, 1 << 20)]:
        a, b = os.urandom(a_len), os.urandom(b_len)
        assert crc_join(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b), (a_len, b_len)
    parts = [os.urandom(n) for n in (3, 0, 999, 12, 70000)]
    crc = 0
    for p in parts:
        crc = crc_join(crc, zlib.crc32(p), len(p))
    assert crc == zlib.crc32(b"".join(parts))


def test_letting_go_of_vanished_namespaces_survives_a_concurrent_scrape_adding_one():
    """Scrapes share the Renderer without a lock. While one lets go of a namespace that has
    vanished, another may add a namespace's shape; a sweep iterating the live dict then fails
    with 'dictionary changed size during iteration'. The key below plays that other scrape:
    looking it up (hashing it) inserts a shape, as a second thread could at that moment."""
    r, snap, options = Renderer(), testing.build_snapshot(EVERY_KIND), Options()

    class Gone(str):
        armed = False

        def __hash__(self):
            if Gone.armed:
                Gone.armed = False
                r._shapes["/other"] = r._shapes["/ns"]
            return str.__hash__(self)

    r.shapes([View(Gone("/gone"), snap, PORTS), View("/ns", snap, PORTS)], options)
    Gone.armed = True
    shapes = r.shapes([View("/ns", snap, PORTS)], options)
    assert len(shapes) == 1 and not Gone.armed
    assert "/gone" not in r._shapes
