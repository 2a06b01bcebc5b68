"""The test oracle: a snapshot's IPVS families built as prometheus_client metric families,
series by series, and rendered by prometheus_client's own encoders. The production renderer
(exposition.Renderer) must produce the same bytes."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from ingress_ipvs_exporter.render.metrics import (
    METRICS,
    Kind,
    info_rows,
    series_labels,
    service_labels,
)


def ipvs_families(snap, namespace, ports, options, vips=None) -> list[Metric]:
    """Every IPVS metric family of one snapshot, one add_metric per series; rows whose
    labels are equal are summed into one series."""
    svc = service_labels(snap, ports, vips)
    out = []
    for d in METRICS:
        if not options.exports_family(d):
            continue
        family = CounterMetricFamily if d.kind is Kind.COUNTER else GaugeMetricFamily
        fam = family(d.name, d.help, labels=options.label_names(d.level))
        keys = series_labels(d.level, snap, namespace, svc, options)
        if d.column == "count":
            values = [snap.n_svc]
        else:
            values = list(getattr(snap.services if d.level.of_services else snap.dests, d.column))
        sums: dict[tuple, int] = {}
        for key, value in zip(keys, values):
            if key is not None:
                sums[key] = sums.get(key, 0) + value
        for key, value in sums.items():
            fam.add_metric(list(key), value)
        out.append(fam)
    for info, names, rows in info_rows(snap, namespace, svc, ports, options):
        fam = GaugeMetricFamily(info.name, info.help, labels=names)
        for row in rows:
            fam.add_metric(list(row), 1)
        out.append(fam)
    return out


class Fixed:
    """A collector that yields the families it was given."""

    def __init__(self, families):
        self.families = families

    def collect(self):
        return self.families


def merged_families(views, options) -> list[Metric]:
    """ipvs_families() of several namespaces' (namespace, snapshot, ports, vips): each
    family once, with every namespace's series in turn."""
    merged = None
    for v in views:
        families = ipvs_families(v.snapshot, v.namespace, v.ports, options, v.vips)
        if merged is None:
            merged = families
        else:
            for have, more in zip(merged, families):
                have.samples.extend(more.samples)
    return merged or []


def render(snap, namespace, ports, options, openmetrics=False, views=None) -> str:
    """prometheus_client's rendering of ipvs_families() (without OpenMetrics' # EOF), or of
    merged_families(views) when views are given."""
    reg = CollectorRegistry(auto_describe=False)
    families = merged_families(views, options) if views else ipvs_families(snap, namespace, ports, options)
    reg.register(Fixed(families))
    text = (generate_openmetrics if openmetrics else generate_latest)(reg).decode()
    return text[: -len("# EOF\n")] if openmetrics else text
