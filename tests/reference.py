"""The test oracle: a snapshot's IPVS families built as prometheus_client metric families,
series by series, and rendered by prometheus_client's own encoders. The production renderer
(exposition.Renderer) must produce the same bytes.

The oracle takes from production only the families' definitions (name, help, kind, level,
column) and which of them the options export; every series' labels it derives here, by name,
from the snapshot's raw columns, as docs/metrics.md describes them, so that a label bug in
render/metrics.py shows as a mismatch instead of being copied.
"""

from __future__ import annotations

import ipaddress
import socket

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from ingress_ipvs_exporter.render.metrics import METRICS, Kind, Level

_FAMILY = {socket.AF_INET: "ipv4", socket.AF_INET6: "ipv6"}
_PROTOCOL = {6: "tcp", 17: "udp", 132: "sctp"}
_FORWARDING = {0: "masq", 1: "local", 2: "tunnel", 3: "route", 4: "bypass"}  # IP_VS_CONN_F_*
_SERVICE_FLAGS = (("persistent", 0x1), ("hashed", 0x2), ("one_packet", 0x4))  # IP_VS_SVC_F_*
# The label names of a level's series (kept destination labels aside): alphabetical
_LEVEL_LABELS = {
    Level.NAMESPACE: ("namespace",),
    Level.ORIGINAL_SERVICE: ("fwmark", "namespace", "port"),
    Level.ORIGINAL_DESTINATION: ("address", "fwmark", "namespace", "port"),
    Level.SERVICE: ("family", "fwmark", "namespace", "port", "protocol", "vip"),
    Level.DESTINATION: (
        "address",
        "destination_port",
        "family",
        "fwmark",
        "namespace",
        "port",
        "protocol",
        "vip",
    ),
}


def _is_v6(address: str) -> bool:
    return ipaddress.ip_address(address).version == 6


def _services(snap, namespace, ports, vips) -> list[dict[str, str]]:
    """Each virtual service's labels by name. A fwmark service: its lowest published port,
    no protocol, the first of its VIPs in its own address family; any other: its own
    protocol, address and port, fwmark 0."""
    s = snap.services
    out = []
    for af, mark, proto, addr, port in zip(s.af, s.fwmark, s.protocol, s.addresses(), s.port):
        family = _FAMILY.get(af, str(af))
        labels = {"family": family, "namespace": namespace}
        if mark:
            published = sorted(p.port for p in ports.get(mark, ()))
            same_af = [v for v in (vips or {}).get(mark, ()) if _is_v6(v) == (af == socket.AF_INET6)]
            labels.update(
                fwmark=str(mark),
                port=str(published[0]) if published else "",
                protocol="",
                vip=same_af[0] if same_af else "",
            )
        else:
            labels.update(fwmark="0", port=str(port), protocol=_PROTOCOL.get(proto, str(proto)), vip=addr)
        out.append(labels)
    return out


def _destinations(snap, services) -> list[dict[str, str]]:
    """Each real server's labels by name: its address and port, and its service's labels."""
    d = snap.dests
    return [
        {**services[owner], "address": addr, "destination_port": str(port)}
        for owner, addr, port in zip(d.service, d.addresses(), d.port)
    ]


def _label_names(level, options) -> list[str]:
    dropped = {"address", "destination_port"} - set(options.destination_labels)
    if level in (Level.ORIGINAL_DESTINATION, Level.DESTINATION):
        return [n for n in _LEVEL_LABELS[level] if n not in dropped]
    return list(_LEVEL_LABELS[level])


def _rows(level, services, dests, namespace) -> list[dict[str, str] | None]:
    """The labels of each row a level's column has (None: a row the level has no series for)."""
    if level is Level.NAMESPACE:
        return [{"namespace": namespace}]
    rows = services if level in (Level.SERVICE, Level.ORIGINAL_SERVICE) else dests
    if level in (Level.ORIGINAL_SERVICE, Level.ORIGINAL_DESTINATION):
        return [r if r["fwmark"] != "0" else None for r in rows]  # the original covers fwmark services
    return list(rows)


def ipvs_families(snap, namespace, ports, options, vips=None) -> list[Metric]:
    """Every IPVS metric family of one snapshot, one add_metric per series; rows whose
    labels are equal are summed into one series."""
    services = _services(snap, namespace, ports, vips)
    dests = _destinations(snap, services)
    out = []
    for d in METRICS:
        if not options.exports_family(d):
            continue
        family = CounterMetricFamily if d.kind is Kind.COUNTER else GaugeMetricFamily
        names = _label_names(d.level, options)
        fam = family(d.name, d.help, labels=names)
        if d.column == "count":
            values = [snap.n_svc]
        else:
            values = list(
                getattr(
                    snap.dests
                    if d.level in (Level.DESTINATION, Level.ORIGINAL_DESTINATION)
                    else snap.services,
                    d.column,
                )
            )
        sums: dict[tuple, int] = {}
        for row, value in zip(_rows(d.level, services, dests, namespace), values):
            if row is not None:
                key = tuple(row[n] for n in names)
                sums[key] = sums.get(key, 0) + value
        for key, value in sums.items():
            fam.add_metric(list(key), value)
        out.append(fam)
    if not options.original_only:
        out += _info_families(snap, namespace, ports, options, services, dests)
    return out


def _info_families(snap, namespace, ports, options, services, dests) -> list[Metric]:
    """ipvs_service_info, ipvs_service_published_port_info and (with the backend families)
    ipvs_backend_info, each series once."""
    names = ["family", "fwmark", "namespace", "port", "protocol", "vip", "scheduler"]
    names += [n for n, _ in _SERVICE_FLAGS]
    info = GaugeMetricFamily(
        "ipvs_service_info", "Scheduler and flags of the virtual service (always 1)", labels=names
    )
    s = snap.services
    for labels, scheduler, flags in zip(services, s.schedulers(), s.flags):
        flag_values = ["true" if flags & bit else "false" for _, bit in _SERVICE_FLAGS]
        info.add_metric([*(labels[n] for n in names[:6]), scheduler, *flag_values], 1)
    published = GaugeMetricFamily(
        "ipvs_service_published_port_info",
        "Every port and protocol the namespace's mangle rules mark with the fwmark (always 1)",
        labels=["fwmark", "namespace", "port", "protocol"],
    )
    for mark in sorted(ports):
        for p in sorted(ports[mark], key=lambda p: (p.protocol, p.port)):
            published.add_metric([str(mark), namespace, str(p.port), p.protocol], 1)
    out = [info, published]
    if options.exports(Level.DESTINATION):
        names = [*_label_names(Level.DESTINATION, options), "forwarding"]
        backend = GaugeMetricFamily(
            "ipvs_backend_info", "Forwarding method of the real server (always 1)", labels=names
        )
        seen = set()
        for labels, fwd in zip(dests, snap.dests.fwd):
            key = (*(labels[n] for n in names[:-1]), _FORWARDING.get(fwd, "unknown"))
            if key not in seen:
                seen.add(key)
                backend.add_metric(list(key), 1)
        out.append(backend)
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
