"""Fast rendering of the IPVS families, byte-identical to prometheus_client's own.

prometheus_client builds a Sample per series and formats it field by field (~12 us a
sample here). This renderer keeps, per family, the text of every series up to its value
("name{labels} ") and reuses it across scrapes while the IPVS shape (services,
destinations, labels) is unchanged; a scrape then only formats values, taken column-wise
from the snapshot's flat lists. collector.ipvs_families() stays the reference: tests assert
both renderings are identical for both text formats.
"""
from __future__ import annotations

import gzip
import operator
import threading
from typing import Mapping, Sequence

from prometheus_client.exposition import choose_encoder
from prometheus_client.utils import floatToGoString

from .collector import (DEST_LABEL_CHOICES, DST_LABELS, METRICS, NS_LABELS, SEED_DST_LABELS, SEED_SVC_LABELS,
                        SVC_LABELS, MetricDef, Options, _label_columns, info_rows, ipvs_families)
from .ipvs import DST_NCOLS, NSTATS, SVC_NCOLS, Snapshot, lib

_TEXT, _OPENMETRICS = 0, 1


def escape(value: str) -> str:
    """A label value as both text formats write it."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def fmt(v: int) -> str:
    """floatToGoString for an integer, without the float detour for small ones."""
    return f"{v}.0" if -1000000 < v < 1000000 else floatToGoString(v)


def _labelstr(names: Sequence[str], values: Sequence[str]) -> str:
    pairs = sorted(zip(names, values))
    return "{" + ",".join(f'{k}="{escape(v)}"' for k, v in pairs) + "}" if pairs else ""


def _header(d_name: str, kind: str, help_text: str, form: int) -> str:
    """HELP and TYPE lines; for a counter the family name drops _total in OpenMetrics."""
    base = d_name[:-6] if kind == "counter" and d_name.endswith("_total") else d_name
    shown = base + "_total" if kind == "counter" and form == _TEXT else base
    if form == _TEXT:
        doc = help_text.replace("\\", "\\\\").replace("\n", "\\n")
    else:
        doc = escape(help_text)
    return f"# HELP {shown} {doc}\n# TYPE {shown} {kind}\n"


def _sample_name(d: MetricDef) -> str:
    return d.name if d.kind != "counter" or d.name.endswith("_total") else d.name + "_total"


class _Shape:
    """Everything about a snapshot that does not change between scrapes of the same IPVS
    configuration: the per-family series prefixes, in both formats' shared sample syntax."""

    def __init__(self, snap: Snapshot, namespace: str, ports: Mapping[int, Sequence], options: Options):
        svc_seed, svc_full, dst = _label_columns(snap, ports)
        self.seed_rows = [i for i, s in enumerate(svc_seed) if s is not None]
        ns = namespace
        seed_svc = [_labelstr(SEED_SVC_LABELS, (svc_seed[i][0], ns, svc_seed[i][1])) for i in self.seed_rows]
        full_svc = [_labelstr(SVC_LABELS, (f, fw, ns, p, pr, v)) for (f, fw, p, pr, v) in svc_full]
        self.seed_dst_rows = [j for j, (svc, _, _) in enumerate(dst) if svc_seed[svc] is not None]
        seed_dst = [_labelstr(SEED_DST_LABELS, (dst[j][1], svc_seed[dst[j][0]][0], ns, svc_seed[dst[j][0]][1]))
                    for j in self.seed_dst_rows]
        full_dst = [_labelstr(DST_LABELS, (addr, dport, *svc_full[svc][:2], ns, *svc_full[svc][2:]))
                    for (svc, addr, dport) in dst]
        self.prefixes: dict[str, list[str]] = {}
        for d in METRICS:
            labels = {"namespace": [_labelstr(NS_LABELS, (ns,))], "seed_service": seed_svc, "service": full_svc,
                      "seed_destination": seed_dst, "destination": full_dst}[d.level]
            name = _sample_name(d)
            self.prefixes[d.name] = [f"{name}{ls} " for ls in labels]
        self._last: dict[str, tuple[list[int], str]] = {}
        # info families: whole lines (header excluded), values are always 1
        self.info = [(d, "".join(f"{d.name}{_labelstr(names, row)} 1.0\n" for row in rows))
                     for d, names, rows in info_rows(snap, ns, svc_full, dst, ports, options)]


    def samples(self, d: MetricDef, values: list[int]) -> str:
        """The family's sample lines. A family whose values are those of the last scrape
        (weights, thresholds, idle services) reuses its text; otherwise, when every value
        prints as "<int>.0", the lines are joined by C-level map() without a Python loop."""
        last = self._last.get(d.name)
        if last is not None and last[0] == values:
            return last[1]
        prefixes = self.prefixes[d.name]
        if not values:
            text = ""
        elif -1000000 < min(values) and max(values) < 1000000:
            text = ".0\n".join(map(operator.add, prefixes, map(str, values))) + ".0\n"
        else:
            text = "\n".join([p + fmt(v) for p, v in zip(prefixes, values)]) + "\n"
        self._last[d.name] = (values, text)
        return text


def _shape_key(snap: Snapshot, namespace: str, ports: Mapping[int, Sequence], options: Options) -> tuple:
    """What the series text depends on; compared (not hashed) against the last scrape's."""
    s, d = snap.svc_u32, snap.dst_u32
    svc_cols = tuple(s[c::SVC_NCOLS] for c in (lib.IPVS_SVC_AF, lib.IPVS_SVC_PROTOCOL, lib.IPVS_SVC_PORT,
                                               lib.IPVS_SVC_FWMARK, lib.IPVS_SVC_FLAGS, lib.IPVS_SVC_DEST_COUNT))
    dst_cols = tuple(d[c::DST_NCOLS] for c in (lib.IPVS_DST_SVC, lib.IPVS_DST_AF, lib.IPVS_DST_PORT,
                                               lib.IPVS_DST_FWD))
    return (namespace, options, snap.n_svc, snap.n_dst, svc_cols, dst_cols, snap.svc_addr, snap.dst_addr,
            snap.svc_sched, {m: tuple(v) for m, v in ports.items()})


class FastRenderer:
    """Renders ipvs_families() as text, caching series prefixes across scrapes."""

    def __init__(self):
        self._key = None
        self._shape: _Shape | None = None

    @staticmethod
    def supports(options: Options) -> bool:
        """Summing merged destination series is left to the reference path."""
        return not options.per_destination or tuple(options.destination_labels) == DEST_LABEL_CHOICES

    def render(self, snap: Snapshot, namespace: str, ports: Mapping[int, Sequence], options: Options,
               openmetrics: bool = False) -> str:
        key = _shape_key(snap, namespace, ports, options)
        if key != self._key:
            self._shape, self._key = _Shape(snap, namespace, ports, options), key
        shape = self._shape
        form = _OPENMETRICS if openmetrics else _TEXT
        out = []
        for d in METRICS:
            if not options.wants(d.level):
                continue
            out.append(_header(d.name, d.kind, d.help, form))
            out.append(shape.samples(d, _column(d, snap, shape)))
        for d, lines in shape.info:
            out.append(_header(d.name, "gauge", d.help, form))
            out.append(lines)
        return "".join(out)


def _column(d: MetricDef, snap: Snapshot, shape: _Shape) -> list[int]:
    """The family's values in series order, sliced column-wise from the snapshot."""
    block, col = d.column
    if block == "services":
        return [snap.n_svc]
    service = d.level in ("service", "seed_service")
    if block == "dests":
        values = snap.svc_u32[lib.IPVS_SVC_DEST_COUNT::SVC_NCOLS]
    elif block == "stats":
        values = (snap.svc_stats if service else snap.dst_stats)[col::NSTATS]
    else:
        values = (snap.svc_u32 if service else snap.dst_u32)[col::SVC_NCOLS if service else DST_NCOLS]
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
        self._lock = threading.Lock()

    def body(self, accept: str) -> tuple[bytes, str]:
        encoder, content_type = choose_encoder(accept)
        openmetrics = content_type.startswith("application/openmetrics-text")
        c = self.collector
        snap, ports, tail = c.read()
        parts = []
        if snap is not None:
            if FastRenderer.supports(c.options):
                with self._lock:  # the renderer's cache is shared by concurrent scrapes
                    parts.append(self.renderer.render(snap, c.namespace, ports, c.options, openmetrics).encode())
            else:
                text = encoder(_Families(ipvs_families(snap, c.namespace, ports, c.options)))
                parts.append(text[: -len(b"# EOF\n")] if openmetrics else text)
        parts.append(encoder(_Families(tail, *self.others)))
        return b"".join(parts), content_type

    def __call__(self, environ, start_response):
        body, content_type = self.body(environ.get("HTTP_ACCEPT", ""))
        headers = [("Content-Type", content_type)]
        if "gzip" in environ.get("HTTP_ACCEPT_ENCODING", ""):
            body = gzip.compress(body, compresslevel=1)
            headers.append(("Content-Encoding", "gzip"))
        headers.append(("Content-Length", str(len(body))))
        start_response("200 OK", headers)
        return [body] if environ.get("REQUEST_METHOD") != "HEAD" else [b""]
