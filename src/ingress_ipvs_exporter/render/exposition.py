"""The renderer: an IPVS snapshot as Prometheus text (0.0.4 or OpenMetrics), plain or gzip.

prometheus_client builds a Sample per series and formats it field by field, which is too
slow at swarm sizes (docs/performance.md has the figures). This renderer keeps, per IPVS
shape (services, destinations, labels: what does not change between scrapes of the same
configuration), the text of every series up to its value ("name{labels} ") and the info
families' lines; a scrape then only formats values, taken column-wise from the snapshot.
Series that --destination-labels merges are summed here too. The output is byte-identical
to prometheus_client's rendering of the same families (tests/reference.py is that oracle).
The exporter's own families (health, IPVS info, swarm, build, process) are ordinary
Collectors in a CollectorRegistry, encoded by prometheus_client after the IPVS families,
in the same stream.
"""

from __future__ import annotations

import functools
import threading
from array import array
from collections.abc import Iterable, Iterator, Sequence
from enum import Enum
from itertools import accumulate
from typing import Any, Callable, NamedTuple, Protocol

from prometheus_client.core import Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.openmetrics import exposition as om
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from ..collector import NamespaceReader, Reading, scrape_families
from ..ipvs import Snapshot
from ..speedups import format_samples
from .gzipstream import GzipStream, Segment, SegmentCache, deflate
from .metrics import (
    METRICS,
    InfoDef,
    Kind,
    Level,
    MetricDef,
    Options,
    Ports,
    Vips,
    info_rows,
    series_labels,
    service_labels,
)

# how the installed prometheus_client writes exponents, which the C sample lines follow
_ZERO_EXPONENT = floatToGoString(10**12) == "1e+012"
# Series per chunk: bounds the text a scrape holds at once; also what the cache of compressed
# text keeps apart, so what one moving counter makes a scrape render and compress again.
# Smaller chunks redo less but compress worse and cost more per series (docs/performance.md).
CHUNK_SERIES = 512


class Format(Enum):
    TEXT = "text 0.0.4"
    OPENMETRICS = "openmetrics"

    @property
    def content_type(self) -> str:
        return CONTENT_TYPE_PLAIN_0_0_4 if self is Format.TEXT else om.CONTENT_TYPE_LATEST


def negotiate(accept: str) -> Format:
    """The format for an Accept header: OpenMetrics 1.0.0 when it lists
    application/openmetrics-text with no version or version 1.0.0, else text
    0.0.4, whatever other types, versions or malformed parameters it holds. Only these two
    are spoken, so the Content-Type never echoes a version from the request; every name
    here is a legacy one, so an escaping= scheme (dots, values) is not applied to part of
    the body only: it is applied to none and not named."""
    for item in accept.split(","):
        media, *params = (part.strip() for part in item.split(";"))
        if media.lower() != "application/openmetrics-text":
            continue
        named = {k.strip().lower(): v.strip().strip('"') for k, _, v in (p.partition("=") for p in params)}
        if named.get("version", "1.0.0") == "1.0.0":
            return Format.OPENMETRICS
    return Format.TEXT


def escape(value: str) -> str:
    """A label value as both text formats write it."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def fmt(v: int) -> str:
    """floatToGoString for an integer, without the float detour for small ones."""
    return f"{v}.0" if -1000000 < v < 1000000 else str(floatToGoString(v))


@functools.cache
def _template(names: tuple[str, ...]) -> str:
    """A str.format template writing labels sorted by name, as prometheus_client does."""
    order = sorted(range(len(names)), key=names.__getitem__)
    body = ",".join(f'{names[i]}="{{{i}}}"' for i in order)
    return "{{" + body + "}}" if names else ""


def label_text(names: Sequence[str], values: Sequence[str]) -> str:
    """'{a="1",b="2"}' with the labels sorted by name and the values escaped."""
    escaped = [escape(v) if ("\\" in v or '"' in v or "\n" in v) else v for v in values]
    return _template(tuple(names)).format(*escaped)


def header(name: str, kind: Kind, help_text: str, form: Format) -> bytes:
    """HELP and TYPE lines; a counter's family name drops _total in OpenMetrics."""
    counter = kind is Kind.COUNTER
    base = name[:-6] if counter and name.endswith("_total") else name
    shown = base + "_total" if counter and form is Format.TEXT else base
    text_doc = help_text.replace("\\", "\\\\").replace("\n", "\\n")
    doc = text_doc if form is Format.TEXT else escape(help_text)
    return f"# HELP {shown} {doc}\n# TYPE {shown} {kind.value}\n".encode()


def _sample_name(d: MetricDef) -> str:
    return d.name if d.kind is not Kind.COUNTER or d.name.endswith("_total") else d.name + "_total"


class _Series:
    """One level's series for a shape: their label text, and how rows become series.

    rows: the rows that have a series of their own, when not every row does (else None);
    groups: for levels whose rows merge (--destination-labels), each row's series (-1: none).
    """

    def __init__(self, names: Sequence[str], keys: Sequence[tuple[str, ...] | None]) -> None:
        index: dict[tuple[str, ...], int] = {}
        groups = array("i", (-1 if k is None else index.setdefault(k, len(index)) for k in keys))
        # every series' label text (and the space before its value) in one bytes value, series
        # i at text[ends[i]:ends[i + 1]], for the C speedups to write sample lines from
        texts = [(label_text(names, k) + " ").encode() for k in index]
        self.text = b"".join(texts)
        self.ends = array("I", accumulate(map(len, texts), initial=0))
        self.rows: array[int] | None = None
        self.groups: array[int] | None = None
        if len(index) < sum(1 for g in groups if g >= 0):
            self.groups, self.n = groups, len(index)
        elif len(index) < len(keys):
            self.rows = array("I", (i for i, g in enumerate(groups) if g >= 0))

    def values(self, column: Sequence[int]) -> Sequence[int]:
        """The column's values in series order."""
        if self.groups is not None:
            sums = [0] * self.n
            for g, v in zip(self.groups, column):
                if g >= 0:
                    sums[g] += v
            return sums
        if self.rows is not None:
            return [column[i] for i in self.rows]
        return column


class Shape:
    """Everything about a snapshot that does not change between scrapes of the same IPVS
    configuration: each level's series text, the info families' lines, and the cache of
    compressed text."""

    def __init__(
        self, snap: Snapshot, namespace: str, ports: Ports, options: Options, vips: Vips | None = None
    ) -> None:
        svc = service_labels(snap, ports, vips)
        self.series = {
            level: _Series(options.label_names(level), series_labels(level, snap, namespace, svc, options))
            for level in Level
            if options.exports(level)
        }
        self.cache = SegmentCache()
        self._info_segments: dict[Format, list[Segment]] = {}
        # info families: whole lines (header excluded), values are always 1
        self.info: list[tuple[InfoDef, list[bytes]]] = []
        for d, names, rows in info_rows(snap, namespace, svc, ports, options):
            lines = [f"{d.name}{label_text(names, row)} 1.0\n" for row in rows]
            chunks = [
                "".join(lines[i : i + CHUNK_SERIES]).encode() for i in range(0, len(lines), CHUNK_SERIES)
            ]
            self.info.append((d, chunks))

    def values(self, d: MetricDef, snap: Snapshot) -> Sequence[int]:
        """The family's values in series order, sliced column-wise from the snapshot."""
        if d.column == "count":
            return [snap.n_svc]
        rows = snap.services if d.level.of_services else snap.dests
        return self.series[d.level].values(getattr(rows, d.column))

    def samples(self, d: MetricDef, values: Sequence[int]) -> list[bytes]:
        """The family's sample lines, in chunks of CHUNK_SERIES series."""
        return [self.lines(d, values, i, i + CHUNK_SERIES) for i in range(0, len(values), CHUNK_SERIES)]

    def lines(self, d: MetricDef, values: Sequence[int], start: int, stop: int) -> bytes:
        """The sample lines of series start..stop-1, written by the C speedups from the cached label
        text; values it leaves to Python (2^53 or more) as prometheus_client writes them."""
        series, vs = self.series[d.level], values[start:stop]
        name = _sample_name(d).encode()
        text = format_samples(name, series.text, series.ends, start, vs, _ZERO_EXPONENT)
        if text is not None:
            return text
        ends, at = series.ends, series.text
        return b"".join(
            b"%s%s%s\n" % (name, at[ends[i] : ends[i + 1]], fmt(v).encode()) for i, v in enumerate(vs, start)
        )

    def info_segments(self, form: Format) -> list[Segment]:
        """The info families' lines (headers apart) deflated, once per shape and format: they
        never change while the shape holds (replaced whole, so concurrent scrapes at worst
        both build it)."""
        segs = self._info_segments.get(form)
        if segs is None:
            segs = [deflate(chunks) for _, chunks in self.info]
            self._info_segments[form] = segs
        return segs

    def segment(self, d: MetricDef, values: Sequence[int], form: Format) -> Segment:
        """The family's samples (header apart: see header_segment) deflated in chunks of
        CHUNK_SERIES series, each compressed on its own. A chunk whose values are those of
        the last scrape (weights, thresholds, idle services and real servers) comes from the
        cache, neither rendered nor compressed again; so does a family with no change at all."""
        packed, width = _packed(values)
        per = CHUNK_SERIES if width else max(1, len(values))

        def chunk(i: int) -> Segment:
            start = i * per
            return deflate([self.lines(d, values, start, start + per)])

        return self.cache.segment((d.name, form), packed, per * width, chunk)


def _packed(values: Sequence[int]) -> tuple[bytes, int]:
    """The values as bytes, to compare with the next scrape's, and the bytes per value (0 when
    the values are not one per fixed width). A first byte tags the form, so two forms never
    compare equal; sums of 64-bit counters may not fit 64 bits."""
    if isinstance(values, memoryview):
        return values.format.encode() + values.tobytes(), values.itemsize
    try:
        return b"q" + array("q", values).tobytes(), 8
    except OverflowError:
        return b"r" + repr(values).encode(), 0


class View(NamedTuple):
    """One namespace's reading, as the renderer needs it."""

    namespace: str
    snapshot: Snapshot
    ports: Ports
    vips: Vips = {}


_HEADERS: dict[tuple[str, Format], Segment] = {}


def header_segment(d: MetricDef | InfoDef, form: Format) -> Segment:
    """A family's HELP and TYPE lines deflated (they never change: made once per process)."""
    seg = _HEADERS.get((d.name, form))
    if seg is None:
        kind = d.kind if isinstance(d, MetricDef) else Kind.GAUGE
        seg = _HEADERS[(d.name, form)] = deflate([header(d.name, kind, d.help, form)])
    return seg


class Renderer:
    """Renders the IPVS families of one or more namespaces' snapshots (each family once,
    with every namespace's series in turn), keeping the Shape of each namespace's last one."""

    def __init__(self) -> None:
        self._shapes: dict[str, tuple[tuple[Any, ...], Shape]] = {}
        self._lock = threading.Lock()

    def chunks(self, views: Sequence[View], options: Options, openmetrics: bool = False) -> Iterator[bytes]:
        """The rendering in chunks of at most CHUNK_SERIES lines, so a large scrape is never
        whole in memory.

        Concurrent scrapes each keep their own reference to the shapes they render with;
        shapes() and the shapes' caches lock their bookkeeping, not the rendering."""
        if not views:
            return
        shapes = self.shapes(views, options)
        form = Format.OPENMETRICS if openmetrics else Format.TEXT
        for d in METRICS:
            if options.exports_family(d):
                yield header(d.name, d.kind, d.help, form)
                for shape, v in zip(shapes, views):
                    yield from shape.samples(d, shape.values(d, v.snapshot))
        for i, (info, _) in enumerate(shapes[0].info):
            yield header(info.name, Kind.GAUGE, info.help, form)
            for shape in shapes:
                yield from shape.info[i][1]

    def segments(
        self, views: Sequence[View], options: Options, openmetrics: bool = False
    ) -> Iterator[Segment]:
        """The same rendering, deflated family by family for a GzipStream; unchanged families
        come from the shapes' caches (same concurrency rules as chunks())."""
        if not views:
            return
        shapes = self.shapes(views, options)
        form = Format.OPENMETRICS if openmetrics else Format.TEXT
        for d in METRICS:
            if options.exports_family(d):
                yield header_segment(d, form)
                for shape, v in zip(shapes, views):
                    yield shape.segment(d, shape.values(d, v.snapshot), form)
        for i, (info, _) in enumerate(shapes[0].info):
            yield header_segment(info, form)
            for shape in shapes:
                yield shape.info_segments(form)[i]

    def shapes(self, views: Sequence[View], options: Options) -> list[Shape]:
        """The Shape of each view: a namespace's last one while what its series text depends
        on (compared, not hashed; packed, so no old snapshot is kept alive) is unchanged.
        Shapes of namespaces not in this scrape are let go. The lock guards the bookkeeping
        only: a new Shape is built outside it (two scrapes that see it may both build it)."""
        out = []
        for v in views:
            snap = v.snapshot
            key = (
                options,
                snap.services.shape(),
                snap.dests.shape(),
                {m: tuple(p) for m, p in v.ports.items()},
                {m: tuple(a) for m, a in v.vips.items()},
            )
            with self._lock:
                last = self._shapes.get(v.namespace)
                if last is not None and last[0] != key:
                    del self._shapes[v.namespace]  # let the old shape go before building anew
                    last = None
            if last is None:
                last = (key, Shape(snap, v.namespace, v.ports, options, v.vips))
                with self._lock:
                    self._shapes[v.namespace] = last
            out.append(last[1])
        shown = {v.namespace for v in views}
        with self._lock:
            for gone in [ns for ns in list(self._shapes) if ns not in shown]:
                self._shapes.pop(gone, None)
        return out


class Source(Protocol):
    """What MetricsApp scrapes: an NamespaceReader (one namespace) or namespaces.Namespaces."""

    options: Options

    def readings(self, scrape_timeout: float | None = None) -> list[tuple[NamespaceReader, Reading]]: ...


class _Families:
    """A scrape's own families as a prometheus_client Collector."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


class MetricsApp:
    """The telemetry body: the IPVS families through the Renderer, then the families about
    this scrape's readings (health, IPVS info, swarm) and the `extra` collectors' (build,
    process) through prometheus_client's encoder, in the format negotiate() picks; one gzip
    member when asked.

    A scrape is a value: every family of a body comes from the readings that request made,
    so concurrent scrapes (an HA pair of Prometheus servers) never mix their outcomes.
    after_scrape runs when a body has been sent or abandoned (the CLI trims the heap there)."""

    def __init__(
        self, source: Source, extra: Sequence[Collector] = (), after_scrape: Callable[[], None] = lambda: None
    ) -> None:
        self.source = source
        self.extra = list(extra)
        self.after_scrape = after_scrape
        self.renderer = Renderer()

    def stream(
        self, accept: str, gzip: bool = False, scrape_timeout: float | None = None
    ) -> tuple[Iterator[bytes], str]:
        """The exposition as chunks of bytes (one gzip member when asked), and its content
        type; scrape_timeout: the scraper's, in seconds, when it said (see Source.readings)."""
        form = negotiate(accept)
        encoder = om.generate_latest if form is Format.OPENMETRICS else generate_latest
        return self._chunks(encoder, form is Format.OPENMETRICS, gzip, scrape_timeout), form.content_type

    def _registry(self, readings: list[tuple[NamespaceReader, Reading]]) -> CollectorRegistry:
        """This scrape's registry: the families about its readings, then the extra collectors."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Families(scrape_families(readings)))
        for c in self.extra:
            registry.register(c)
        return registry

    def _chunks(
        self,
        encoder: Callable[[CollectorRegistry], bytes],
        openmetrics: bool,
        gzip: bool,
        scrape_timeout: float | None,
    ) -> Iterator[bytes]:
        readings = self.source.readings(scrape_timeout)
        views = [
            View(c.namespace, r.snapshot, r.ports, r.vips) for c, r in readings if r.snapshot is not None
        ]
        options = self.source.options
        stream = GzipStream() if gzip else None
        try:
            if stream is not None:
                yield GzipStream.HEADER
                # no lock: a slow client must not hold up other scrapes (see Renderer.chunks())
                for seg in self.renderer.segments(views, options, openmetrics):
                    yield from stream.add(seg)
                yield from stream.add(deflate([encoder(self._registry(readings))]))
                yield stream.trailer()
            else:
                yield from self.renderer.chunks(views, options, openmetrics)
                yield encoder(self._registry(readings))
        finally:
            del views, readings
            self.after_scrape()
