"""Fast rendering of the IPVS families, byte-identical to prometheus_client's own.

prometheus_client builds a Sample per series and formats it field by field (~12 us a
sample here). This renderer keeps, per family, the text of every series up to its value
("name{labels} ") and reuses it across scrapes while the IPVS shape (services,
destinations, labels) is unchanged; a scrape then only formats values, taken column-wise
from the snapshot's flat lists. collector.ipvs_families() stays the reference: tests assert
both renderings are identical for both text formats.

With gzip (what Prometheus asks for), each family is deflated on its own into a Segment, and
a family whose values did not change since the last scrape is sent from the cache of
segments without being rendered or compressed again; the segments form one gzip member.
"""

from __future__ import annotations

import functools
import logging
import os
import struct
import zlib
from array import array
from itertools import chain, repeat
from typing import Iterable, Iterator, Mapping, NamedTuple, Sequence

from prometheus_client.exposition import choose_encoder
from prometheus_client.utils import floatToGoString

from . import memory
from .collector import (
    DEST_LABEL_CHOICES,
    DST_LABELS,
    METRICS,
    NS_LABELS,
    SEED_DST_LABELS,
    SEED_SVC_LABELS,
    SVC_LABELS,
    MetricDef,
    Options,
    _label_columns,
    info_rows,
    ipvs_families,
)
from .ipvs import DST_NCOLS, NSTATS, SVC_NCOLS, Snapshot, lib

_TEXT, _OPENMETRICS = 0, 1


def escape(value: str) -> str:
    """A label value as both text formats write it."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def fmt(v: int) -> str:
    """floatToGoString for an integer, without the float detour for small ones."""
    return f"{v}.0" if -1000000 < v < 1000000 else floatToGoString(v)


def escape_all(values: Sequence[str]) -> list[str]:
    return [escape(v) if ("\\" in v or '"' in v or "\n" in v) else v for v in values]


@functools.cache
def _template(names: tuple) -> str:
    """A str.format template writing labels sorted by name, as prometheus_client does."""
    order = sorted(range(len(names)), key=names.__getitem__)
    body = ",".join(f'{names[i]}="{{{i}}}"' for i in order)
    return "{{" + body + "}}" if names else ""


def _labelstr(names: Sequence[str], values: Sequence[str]) -> str:
    return _template(tuple(names)).format(*escape_all(values))


def _header(d_name: str, kind: str, help_text: str, form: int) -> str:
    """HELP and TYPE lines; for a counter the family name drops _total in OpenMetrics."""
    base = d_name[:-6] if kind == "counter" and d_name.endswith("_total") else d_name
    shown = base + "_total" if kind == "counter" and form == _TEXT else base
    doc = help_text.replace("\\", "\\\\").replace("\n", "\\n") if form == _TEXT else escape(help_text)
    return f"# HELP {shown} {doc}\n# TYPE {shown} {kind}\n"


def _sample_name(d: MetricDef) -> str:
    return d.name if d.kind != "counter" or d.name.endswith("_total") else d.name + "_total"


CACHE_ENV = "INGRESS_IPVS_EXPORTER_CACHE_MB"


def _cache_budget(default_mb: int = 8) -> int:
    """Bytes of compressed families kept for reuse across scrapes: $INGRESS_IPVS_EXPORTER_CACHE_MB
    (0 turns the cache off; see docs/performance.md), else 8 MB."""
    raw = os.environ.get(CACHE_ENV, "").strip()
    if raw.isdigit():
        return int(raw) * 1024 * 1024
    if raw:
        logging.getLogger(__name__).warning(
            "%s=%r is not a whole number of MB; using %d", CACHE_ENV, raw, default_mb
        )
    return default_mb * 1024 * 1024


CACHE_BUDGET = _cache_budget()
CHUNK_SERIES = 512  # series per chunk: bounds the text a scrape holds at once
GZIP_LEVEL = 1  # a large scrape is CPU-bound on compression: the fastest level


class Segment(NamedTuple):
    """Text deflated on its own (raw deflate, no history before it, ending byte-aligned), so
    that segments can be laid end to end into one gzip stream, in any combination."""

    data: list[bytes]
    crc: int  # CRC-32 of the text alone
    length: int  # bytes of text


# CRC-32 arithmetic, for joining two texts' CRCs without the texts. A CRC-32 register holds a
# polynomial over GF(2) in reflected order: bit 31 is the coefficient of x^0, bit 0 that of
# x^31; multiplying by x is a right shift, reduced by the generator (0xEDB88320 in this order)
# when x^31's coefficient falls off. For texts A and B: crc(A+B) = crc(A) * x^(8 len(B)) + crc(B)
# mod the generator (the register's initial and final inversions cancel out in this form).
_CRC_POLY = 0xEDB88320
_X0 = 1 << 31  # the polynomial 1


def _crc_mul(a: int, b: int) -> int:
    """a * b modulo the CRC-32 generator, both in reflected order."""
    product, bit = 0, _X0
    while a:
        if a & bit:
            product ^= b
            a ^= bit
        bit >>= 1
        b = (b >> 1) ^ _CRC_POLY if b & 1 else b >> 1
    return product


_X_POW2 = [_X0 >> 1]  # x^(2^k) mod the generator: x, x^2, x^4, ...
for _ in range(63):
    _X_POW2.append(_crc_mul(_X_POW2[-1], _X_POW2[-1]))


def crc_join(crc_a: int, crc_b: int, length_b: int) -> int:
    """The CRC-32 of A+B from crc(A), crc(B) and len(B) (what zlib's crc32_combine computes)."""
    shift, n, k = _X0, 8 * length_b, 0  # x^(8 len(B)), by its binary digits
    while n:
        if n & 1:
            shift = _crc_mul(_X_POW2[k], shift)
        n >>= 1
        k += 1
    return _crc_mul(shift, crc_a) ^ crc_b


def deflate(chunks: Iterable[bytes]) -> Segment:
    z = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -15)
    data, crc, length = [], 0, 0
    for chunk in chunks:
        crc, length = zlib.crc32(chunk, crc), length + len(chunk)
        out = z.compress(chunk)
        if out:
            data.append(out)
    data.append(z.flush(zlib.Z_SYNC_FLUSH))
    return Segment(data, crc, length)


class GzipStream:
    """One gzip member (RFC 1952) made of Segments: header, the segments' deflate data, an
    empty final block, then the CRC-32 of all the text, joined from the segments' own
    (crc_join), and its length."""

    HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # deflate, no name, no mtime, unknown OS
    END = b"\x03\x00"  # an empty final fixed-Huffman block

    def __init__(self):
        self.crc = 0
        self.length = 0

    def add(self, seg: Segment) -> list[bytes]:
        self.crc = crc_join(self.crc, seg.crc, seg.length)
        self.length += seg.length
        return seg.data

    def trailer(self) -> bytes:
        return self.END + struct.pack("<II", self.crc, self.length & 0xFFFFFFFF)


def _packed(values: Sequence[int]):
    """A compact copy of a column to compare with the next scrape's: bytes for a memoryview
    (which would otherwise keep the whole previous snapshot alive), a tuple for a list."""
    return values.tobytes() if isinstance(values, memoryview) else tuple(values)


class _Shape:
    """Everything about a snapshot that does not change between scrapes of the same IPVS
    configuration: each series' label text ("{...} "), shared by every family of its level,
    and the info families' lines."""

    def __init__(self, snap: Snapshot, namespace: str, ports: Mapping[int, Sequence], options: Options):
        svc_seed, svc_full, dst = _label_columns(snap, ports)
        # row numbers as uint32 arrays: 4 bytes a row where a list of ints costs ~36
        self.seed_rows = array("I", (i for i, s in enumerate(svc_seed) if s is not None))
        self.seed_dst_rows = array("I", (j for j, (svc, _, _) in enumerate(dst) if svc_seed[svc] is not None))
        ns = namespace
        self.labels: dict[str, list[str]] = {
            "namespace": [_labelstr(NS_LABELS, (ns,)) + " "],
            "seed_service": [
                _labelstr(SEED_SVC_LABELS, (svc_seed[i][0], ns, svc_seed[i][1])) + " " for i in self.seed_rows
            ],
            "service": [_labelstr(SVC_LABELS, (f, fw, ns, p, pr, v)) + " " for (f, fw, p, pr, v) in svc_full],
        }
        if options.wants("seed_destination"):
            self.labels["seed_destination"] = [
                _labelstr(SEED_DST_LABELS, (dst[j][1], svc_seed[dst[j][0]][0], ns, svc_seed[dst[j][0]][1]))
                + " "
                for j in self.seed_dst_rows
            ]
        if options.wants("destination"):
            self.labels["destination"] = [
                _labelstr(DST_LABELS, (addr, dport, *svc_full[svc][:2], ns, *svc_full[svc][2:])) + " "
                for (svc, addr, dport) in dst
            ]
        self._last: dict[tuple[str, int], tuple[object, Segment]] = {}
        self._cached = 0
        self._info_segments: dict[int, list[Segment]] = {}
        # info families: whole lines (header excluded), values are always 1
        self.info = []
        for d, names, rows in info_rows(snap, ns, svc_full, dst, ports, options):
            lines = [f"{d.name}{_labelstr(names, row)} 1.0\n" for row in rows]
            self.info.append(
                (
                    d,
                    [
                        "".join(lines[i : i + CHUNK_SERIES]).encode()
                        for i in range(0, len(lines), CHUNK_SERIES)
                    ],
                )
            )

    def samples(self, d: MetricDef, values: Sequence[int]) -> list[bytes]:
        """The family's sample lines, in chunks of CHUNK_SERIES series; when every value
        prints as "<int>.0", each chunk is one str.join over (name, labels, value, ".0\n")
        built by C-level iterators, no Python loop."""
        labels = self.labels[d.level]
        name = _sample_name(d)
        small = bool(values) and min(values) > -1000000 and max(values) < 1000000
        chunks = []
        for i in range(0, len(values), CHUNK_SERIES):
            ls, vs = labels[i : i + CHUNK_SERIES], values[i : i + CHUNK_SERIES]
            if small:  # one join of name, labels, value, ".0\n" per series: no concatenations
                text = "".join(chain.from_iterable(zip(repeat(name), ls, map(str, vs), repeat(".0\n"))))
            else:
                text = "\n".join([name + lab + fmt(v) for lab, v in zip(ls, vs)]) + "\n"
            chunks.append(text.encode())
        return chunks

    def info_segments(self, form: int) -> list[Segment]:
        """The info families deflated, once per shape and format: their lines never change
        while the shape holds (replaced whole, so concurrent scrapes at worst both build it)."""
        segs = self._info_segments.get(form)
        if segs is None:
            segs = self._info_segments[form] = [
                deflate([_header(d.name, "gauge", d.help, form).encode(), *chunks]) for d, chunks in self.info
            ]
        return segs

    def segment(self, d: MetricDef, values: Sequence[int], form: int) -> Segment:
        """The family (header and samples) deflated. A family whose values are those of the
        last scrape (weights, thresholds, idle services and real servers) reuses its segment
        within CACHE_BUDGET: neither rendered nor compressed again."""
        key = (d.name, form)
        last = self._last.get(key)
        packed = _packed(values)
        if last is not None and last[0] == packed:
            return last[1]
        seg = deflate([_header(d.name, d.kind, d.help, form).encode(), *self.samples(d, values)])
        size = sum(map(len, seg.data))
        if last is not None:
            self._cached -= sum(map(len, last[1].data))
        if self._cached + size <= CACHE_BUDGET:
            self._last[key] = (packed, seg)
            self._cached += size
        else:
            self._last.pop(key, None)
        return seg


def _shape_key(snap: Snapshot, namespace: str, ports: Mapping[int, Sequence], options: Options) -> tuple:
    """What the series text depends on; compared (not hashed) against the last scrape's."""
    s, d = snap.svc_u32, snap.dst_u32
    svc_cols = tuple(
        _packed(s[c::SVC_NCOLS])
        for c in (
            lib.IPVS_SVC_AF,
            lib.IPVS_SVC_PROTOCOL,
            lib.IPVS_SVC_PORT,
            lib.IPVS_SVC_FWMARK,
            lib.IPVS_SVC_FLAGS,
            lib.IPVS_SVC_DEST_COUNT,
        )
    )
    dst_cols = tuple(
        _packed(d[c::DST_NCOLS])
        for c in (lib.IPVS_DST_SVC, lib.IPVS_DST_AF, lib.IPVS_DST_PORT, lib.IPVS_DST_FWD)
    )
    return (
        namespace,
        options,
        snap.n_svc,
        snap.n_dst,
        svc_cols,
        dst_cols,
        snap.svc_addr,
        snap.dst_addr,
        snap.svc_sched,
        {m: tuple(v) for m, v in ports.items()},
    )


class FastRenderer:
    """Renders ipvs_families() as text, caching series prefixes across scrapes."""

    def __init__(self):
        self._key = None
        self._shape: _Shape | None = None

    @staticmethod
    def supports(options: Options) -> bool:
        """Summing merged destination series is left to the reference path."""
        return not options.per_destination or tuple(options.destination_labels) == DEST_LABEL_CHOICES

    def render(
        self,
        snap: Snapshot,
        namespace: str,
        ports: Mapping[int, Sequence],
        options: Options,
        openmetrics: bool = False,
    ) -> str:
        return b"".join(self.chunks(snap, namespace, ports, options, openmetrics)).decode()

    def chunks(
        self,
        snap: Snapshot,
        namespace: str,
        ports: Mapping[int, Sequence],
        options: Options,
        openmetrics: bool = False,
    ) -> Iterator[bytes]:
        """The rendering in chunks of at most CHUNK_SERIES lines, so a large scrape is never
        whole in memory.

        Safe for concurrent scrapes without a lock: each keeps its own reference to the
        shape it renders with; a shape's per-family cache entries are (values, segment)
        pairs replaced whole; at worst two scrapes that see a new shape both build it."""
        shape = self._shape_for(snap, namespace, ports, options)
        form = _OPENMETRICS if openmetrics else _TEXT
        for d in METRICS:
            if options.wants(d.level):
                yield _header(d.name, d.kind, d.help, form).encode()
                yield from shape.samples(d, _column(d, snap, shape))
        for d, chunks in shape.info:
            yield _header(d.name, "gauge", d.help, form).encode()
            yield from chunks

    def segments(
        self,
        snap: Snapshot,
        namespace: str,
        ports: Mapping[int, Sequence],
        options: Options,
        openmetrics: bool = False,
    ) -> Iterator[Segment]:
        """The same rendering, deflated family by family for a GzipStream; unchanged families
        come from the shape's cache (same concurrency rules as chunks())."""
        shape = self._shape_for(snap, namespace, ports, options)
        form = _OPENMETRICS if openmetrics else _TEXT
        for d in METRICS:
            if options.wants(d.level):
                yield shape.segment(d, _column(d, snap, shape), form)
        yield from shape.info_segments(form)

    def _shape_for(
        self, snap: Snapshot, namespace: str, ports: Mapping[int, Sequence], options: Options
    ) -> _Shape:
        key = _shape_key(snap, namespace, ports, options)
        shape, shape_key = self._shape, self._key
        if key != shape_key:
            self._shape = self._key = None  # let the old shape go before building the new one
            shape = _Shape(snap, namespace, ports, options)
            self._shape, self._key = shape, key
        return shape


def _column(d: MetricDef, snap: Snapshot, shape: _Shape) -> list[int]:
    """The family's values in series order, sliced column-wise from the snapshot."""
    block, col = d.column
    if block == "services":
        return [snap.n_svc]
    service = d.level in ("service", "seed_service")
    if block == "dests":
        values = snap.svc_u32[lib.IPVS_SVC_DEST_COUNT :: SVC_NCOLS]
    elif block == "stats":
        values = (snap.svc_stats if service else snap.dst_stats)[col::NSTATS]
    else:
        values = (snap.svc_u32 if service else snap.dst_u32)[col :: SVC_NCOLS if service else DST_NCOLS]
        if not service and col == lib.IPVS_DST_WEIGHT:
            values = [v - (1 << 32) if v >= 1 << 31 else v for v in values]
    if d.level == "seed_service" and len(shape.seed_rows) != snap.n_svc:
        values = [values[i] for i in shape.seed_rows]
    elif d.level == "seed_destination" and len(shape.seed_dst_rows) != snap.n_dst:
        values = [values[j] for j in shape.seed_dst_rows]
    return values


class _Families:
    """A registry-shaped wrapper so prometheus_client's encoders can render a family list."""

    def __init__(self, *sources):
        self._sources = sources

    def collect(self):
        for source in self._sources:
            yield from (source.collect() if hasattr(source, "collect") else source)


class MetricsApp:
    """WSGI app for the telemetry path: IPVS families through the FastRenderer, the rest
    (IPVS info, health, process metrics) through prometheus_client; the content type is
    negotiated as prometheus_client does (text 0.0.4 or OpenMetrics), gzip when asked."""

    def __init__(self, collector, others=()):
        self.collector = collector
        self.others = others
        self.renderer = FastRenderer()

    def stream(self, accept: str, gzip: bool = False) -> tuple[Iterator[bytes], str]:
        """The exposition as chunks of bytes (one gzip member when asked), and its content type."""
        encoder, content_type = choose_encoder(accept)
        openmetrics = content_type.startswith("application/openmetrics-text")
        return self._chunks(encoder, openmetrics, gzip), content_type

    def _chunks(self, encoder, openmetrics: bool, gzip: bool = False) -> Iterator[bytes]:
        c = self.collector
        snap, ports, tail = c.read()
        stream = GzipStream() if gzip else None
        try:
            if stream is not None:
                yield GzipStream.HEADER
            if snap is not None:
                if not FastRenderer.supports(c.options):
                    text = encoder(_Families(ipvs_families(snap, c.namespace, ports, c.options)))
                    text = text[: -len(b"# EOF\n")] if openmetrics else text
                    yield from stream.add(deflate([text])) if stream is not None else [text]
                elif stream is not None:
                    # no lock: a slow client must not hold up other scrapes (see chunks())
                    for seg in self.renderer.segments(snap, c.namespace, ports, c.options, openmetrics):
                        yield from stream.add(seg)
                else:
                    yield from self.renderer.chunks(snap, c.namespace, ports, c.options, openmetrics)
            text = encoder(_Families(tail, *self.others))
            if stream is None:
                yield text
            else:
                yield from stream.add(deflate([text]))
                yield stream.trailer()
        finally:
            del snap, ports, tail
            memory.release()

    def body(self, accept: str) -> tuple[bytes, str]:
        chunks, content_type = self.stream(accept)
        return b"".join(chunks), content_type

    def __call__(self, environ, start_response):
        gzip = "gzip" in environ.get("HTTP_ACCEPT_ENCODING", "")
        chunks, content_type = self.stream(environ.get("HTTP_ACCEPT", ""), gzip)
        headers = [("Content-Type", content_type)]
        if gzip:
            headers.append(("Content-Encoding", "gzip"))
        start_response("200 OK", headers)
        return chunks if environ.get("REQUEST_METHOD") != "HEAD" else iter(())
