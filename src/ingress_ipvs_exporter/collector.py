"""prometheus_client collector: an IPVS snapshot -> metric families, built fresh per scrape.

Every metric is defined once, in METRICS (data, not code). The data source is injected:
production passes a live Handle's snapshot, tests pass snapshots they made.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .ipvs import IPVSError, Service, Snapshot

log = logging.getLogger(__name__)

# Label names in the order the seed exporter printed them (sorted).
SERVICE_LABELS = ("fwmark", "namespace", "port")
DEST_LABELS = ("address", "fwmark", "namespace", "port")
NAMESPACE_LABELS = ("namespace",)


@dataclass(frozen=True)
class MetricDef:
    """One metric family: name, type, help, level (namespace/service/destination) and value."""

    name: str
    kind: str  # "counter" | "gauge"
    help: str
    level: str  # "namespace" | "service" | "destination"
    value: Callable  # (snapshot) | (service) | (destination) -> number


METRICS: Sequence[MetricDef] = (
    MetricDef("ipvs_bytes_in_total", "counter",
              "The total number of incoming bytes a virtual server", "service",
              lambda s: s.stats.inbytes),
    MetricDef("ipvs_bytes_out_total", "counter",
              "The total number of outgoing bytes from a virtual server", "service",
              lambda s: s.stats.outbytes),
    MetricDef("ipvs_connections_total", "counter",
              "The total number of connections made to a virtual server", "service",
              lambda s: s.stats.conns),
    MetricDef("ipvs_destination_active_connections_total", "gauge",
              "The total number of connections established to a destination server", "destination",
              lambda d: d.active_conns),
    MetricDef("ipvs_destination_bytes_in_total", "counter",
              "The total number of incoming bytes to a real server", "destination",
              lambda d: d.stats.inbytes),
    MetricDef("ipvs_destination_bytes_out_total", "counter",
              "The total number of outgoing bytes to a real server", "destination",
              lambda d: d.stats.outbytes),
    MetricDef("ipvs_destination_connections_total", "counter",
              "The total number connections ever established to a destination", "destination",
              lambda d: d.stats.conns),
    MetricDef("ipvs_destination_inactive_connections_total", "gauge",
              "The total number of connections inactive but established to a destination server", "destination",
              lambda d: d.inactive_conns),
    MetricDef("ipvs_destination_total", "gauge",
              "The total number of real servers that are destinations to the service", "service",
              lambda s: len(s.destinations)),
    MetricDef("ipvs_services_total", "gauge",
              "The total number of services registered in ipvs", "namespace",
              lambda snap: snap.n_svc),
)

_LABELS = {"namespace": NAMESPACE_LABELS, "service": SERVICE_LABELS, "destination": DEST_LABELS}
_FAMILY = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily}


def new_family(d: MetricDef) -> Metric:
    return _FAMILY[d.kind](d.name, d.help, labels=_LABELS[d.level])


PortLookup = Callable[[Iterable[int]], Mapping[int, Sequence]]


def port_label(service: Service, ports: Mapping[int, Sequence]) -> str:
    """The published port of a service: for a fwmark, the lowest port its mangle rules
    mark (empty when no rule marks it); for an address:port service, its own port."""
    if not service.fwmark:
        return str(service.port)
    found = ports.get(service.fwmark)
    return str(min(p.port for p in found)) if found else ""


class IPVSCollector:
    """Collects the IPVS metrics of one namespace on every scrape.

    snapshot: returns a Snapshot (raises IPVSError when IPVS cannot be read).
    ports: fwmarks -> {fwmark: [PublishedPort, ...]}.
    """

    def __init__(self, namespace: str, snapshot: Callable[[], Snapshot], ports: PortLookup):
        self.namespace = namespace
        self._snapshot = snapshot
        self._ports = ports
        self._logged: set[str] = set()

    def describe(self) -> list[Metric]:
        """The families without samples, so that registering does no netlink I/O."""
        return [new_family(d) for d in METRICS] + [_up_family(), _duration_family()]

    def collect(self) -> Iterable[Metric]:
        start = time.monotonic()
        try:
            snap = self._snapshot()
        except IPVSError as e:
            self._log_once(e)
            yield _up_family(0)
            yield _duration_family(time.monotonic() - start)
            return
        self._logged.clear()
        yield from self.families(snap)
        yield _up_family(1)
        yield _duration_family(time.monotonic() - start)

    def families(self, snap: Snapshot) -> list[Metric]:
        """The seed's metric families for one snapshot (the reference rendering)."""
        services = snap.services()
        ports = self._ports(snap.fwmarks())
        fams = {d.name: new_family(d) for d in METRICS}
        ns = self.namespace
        for d in METRICS:
            if d.level == "namespace":
                fams[d.name].add_metric([ns], d.value(snap))
        svc_defs = [d for d in METRICS if d.level == "service"]
        dst_defs = [d for d in METRICS if d.level == "destination"]
        for s in services:
            fw, port = str(s.fwmark), port_label(s, ports)
            for d in svc_defs:
                fams[d.name].add_metric([fw, ns, port], d.value(s))
            for dst in s.destinations:
                labels = [dst.address, fw, ns, port]
                for d in dst_defs:
                    fams[d.name].add_metric(labels, d.value(dst))
        return list(fams.values())

    def check(self) -> None:
        """Read IPVS once (at start-up); raise its error, which scrapes then won't log again."""
        try:
            self._snapshot()
        except IPVSError as e:
            self._logged = {getattr(e, "reason", "error")}
            raise

    def _log_once(self, e: IPVSError) -> None:
        """Log the first error of a kind, not every scrape."""
        kind = getattr(e, "reason", "error")
        if kind not in self._logged:
            self._logged = {kind}
            log.error("%s", e.strerror or e)


def _up_family(value: float | None = None) -> Metric:
    f = GaugeMetricFamily("ipvs_up", "1 when the last scrape read IPVS in the namespace, else 0")
    if value is not None:
        f.add_metric([], value)
    return f


def _duration_family(seconds: float | None = None) -> Metric:
    f = GaugeMetricFamily("ipvs_scrape_duration_seconds", "Time this scrape spent reading IPVS and building metrics")
    if seconds is not None:
        f.add_metric([], seconds)
    return f
