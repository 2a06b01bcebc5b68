"""The C speedups' sample lines: every value as prometheus_client writes the float of an integer,
for each kind of column; values it cannot write exactly are left to Python."""

from __future__ import annotations

import errno
from array import array

import pytest
from ingress_ipvs_exporter._speedups_cffi import ffi, lib
from ipvs_testlib import EVERY_KIND, PORTS
from prometheus_client.utils import floatToGoString
from reference import render as reference

from ingress_ipvs_exporter import testing
from ingress_ipvs_exporter.ipvs import Snapshot
from ingress_ipvs_exporter.render.exposition import Renderer
from ingress_ipvs_exporter.render.metrics import Options
from ingress_ipvs_exporter.speedups import format_samples
from ingress_ipvs_exporter.testing import Stats

EDGES = [
    0,
    1,
    9,
    10,
    999999,
    1000000,
    1000001,
    1200000,
    1234567,
    10**7,
    10**12,
    1234567890123,
    2**31 - 1,
    2**32 - 1,
]
EDGES += [10**15, 10**15 + 1, 2**53 - 1, 9 * 10**15]
NEGATIVE = [-1, -999999, -1000000, -1234567, -(2**31)]


def lines(values, kind: str, zero_exponent: bool = False) -> bytes | None:
    labels = [b'{a="%d"} ' % i for i in range(len(values))]
    ends = array("I", [0])
    for lab in labels:
        ends.append(ends[-1] + len(lab))
    column = memoryview(array(kind, values)) if kind else list(values)
    return format_samples(b"m", b"".join(labels), ends, 0, column, zero_exponent)


def expected(values) -> bytes:
    return b"".join(b'm{a="%d"} %s\n' % (i, floatToGoString(v).encode()) for i, v in enumerate(values))


@pytest.mark.parametrize(
    "kind, values",
    [
        ("Q", EDGES),
        ("I", [v for v in EDGES if v < 2**32]),
        ("i", [v for v in EDGES + NEGATIVE if -(2**31) <= v < 2**31]),
        ("", EDGES + NEGATIVE),  # a list (sums of merged series)
    ],
)
def test_values_are_written_as_prometheus_client_writes_them(kind, values):
    assert lines(values, kind) == expected(values)


def test_older_exponents_have_a_zero_before_them():
    # prometheus_client versions that wrote f"e+0{exponent}"
    assert lines([1234567, 10**12], "Q", zero_exponent=True) == b'm{a="0"} 1.234567e+06\nm{a="1"} 1e+012\n'


@pytest.mark.parametrize("big", [2**53, 2**63, 2**64 - 1, -(2**53)])
def test_values_beyond_exact_floats_are_left_to_the_caller(big):
    assert lines([1, big], "" if big < 0 or big >= 2**63 else "Q") is None
    if big >= 0:
        assert lines([1, big], "Q") is None


def _c_lines(values: list[int], kind: str, cap: int) -> int:
    """speedups_format_samples' return for `values` as one series each, into cap bytes."""
    ends = array("I", [0] * (len(values) + 1))
    raw = array(kind, values)
    out = ffi.new("char[]", max(cap, 1))
    return lib.speedups_format_samples(
        out,
        cap,
        b"m",
        1,
        ffi.from_buffer(b""),
        ffi.from_buffer("uint32_t[]", ends),
        ffi.from_buffer(raw),
        kind.encode(),
        len(values),
        0,
    )


def test_the_c_tells_a_value_too_large_from_a_buffer_too_small():
    enough = 2 * (1 + lib.SPEEDUPS_VALUE_MAX + 1)
    assert _c_lines([1, 2], "Q", enough) == len(b"m1.0\nm2.0\n")
    assert _c_lines([1, 2**53], "Q", enough) == -errno.ERANGE
    assert _c_lines([1, 2**63], "Q", enough) == -errno.ERANGE
    assert _c_lines([1, 2], "Q", lib.SPEEDUPS_VALUE_MAX) == -errno.ENOBUFS
    assert _c_lines([1, 2], "d", enough) == -errno.EINVAL


def test_a_column_the_c_cannot_read_is_an_error_not_a_fallback():
    # a float column is no integer kind: the wrapper raises instead of writing it in Python
    with pytest.raises(RuntimeError, match="Invalid argument"):
        format_samples(b"m", b"", array("I", [0, 0]), 0, memoryview(array("d", [1.0])), False)


def test_a_slice_starts_at_its_series():
    ends, text = array("I", [0, 3, 6, 9]), b"{0}{1}{2}"
    assert format_samples(b"n", text, ends, 1, [5, 6], False) == b"n{1}5.0\nn{2}6.0\n"
    assert format_samples(b"n", text, ends, 3, [], False) == b""


@pytest.mark.parametrize("openmetrics", [False, True], ids=["text-0.0.4", "openmetrics"])
@pytest.mark.parametrize("base", [999999, 1234567, 2**40 + 1, 2**53 // 1000, 2**53, 2**60])
def test_a_scrape_with_large_counters_is_the_oracles(base, openmetrics):
    """Through the renderer: values the shim writes and values it leaves to Python (2^53 and
    more) mixed in one chunk, byte-identical to prometheus_client's rendering."""
    s = EVERY_KIND[3]
    big = [Stats(*(base * (k % 2) + 10**k + i for k in range(10))) for i in range(len(s.destinations) + 1)]
    dests = tuple(dst._replace(stats=big[i + 1]) for i, dst in enumerate(s.destinations))
    snap = testing.build_snapshot([s._replace(stats=big[0], destinations=dests), *EVERY_KIND[:3]])
    options = Options(backends=True)
    assert testing.render(Renderer(), snap, "/ns", PORTS, options, openmetrics) == reference(
        snap, "/ns", PORTS, options, openmetrics
    )


def test_snapshot_columns_are_contiguous_and_hold_each_rows_values():
    """A snapshot keeps its blocks column by column, so that a scrape copies, compares and
    formats a column at memcpy speed (docs/performance.md); every row reads back as built,
    and blocks() gives the shim's row-by-row layout back."""
    from ingress_ipvs_exporter.ipvs import DestinationRows, ServiceRows

    snap = testing.build_snapshot(EVERY_KIND)
    s, d = snap.services, snap.dests
    for column in (s.fwmark, s.dest_count, s.conns, s.outbps, d.service, d.weight, d.inbytes):
        assert isinstance(column, memoryview) and column.c_contiguous
    assert [testing.service(snap, i) for i in range(snap.n_svc)] == list(EVERY_KIND)
    again = Snapshot(
        ServiceRows(s.count, *testing.blocks(s), s._addr, s._sched),
        DestinationRows(d.count, *testing.blocks(d), d._addr),
    )
    assert [testing.service(again, i) for i in range(again.n_svc)] == list(EVERY_KIND)
