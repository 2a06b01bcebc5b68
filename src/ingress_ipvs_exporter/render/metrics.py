"""Every IPVS metric family, defined once in data, and the label values each series carries.

"Original" families are the ten of the Go exporter this one replaces: same names, help
texts and labels (they cover fwmark services, which is what swarm programs). The other
families cover every kind of service and real server. The renderer (exposition.py) and the
tests' prometheus_client reference both read these definitions; nothing here formats text.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple, Protocol

from ..ipvs import Snapshot


class Kind(str, Enum):
    COUNTER = "counter"
    GAUGE = "gauge"


class Level(Enum):
    """Which rows a family has a series for, and so which labels it carries."""

    NAMESPACE = "namespace"  # one series
    ORIGINAL_SERVICE = "original_service"  # fwmark services
    ORIGINAL_DESTINATION = "original_destination"  # real servers of fwmark services
    SERVICE = "service"  # every virtual service
    DESTINATION = "destination"  # every real server

    @property
    def of_services(self) -> bool:
        return self in (Level.NAMESPACE, Level.ORIGINAL_SERVICE, Level.SERVICE)


SERVICE_LABELS = ("family", "fwmark", "namespace", "port", "protocol", "vip")
LABELS: Mapping[Level, tuple[str, ...]] = {
    Level.NAMESPACE: ("namespace",),
    Level.ORIGINAL_SERVICE: ("fwmark", "namespace", "port"),
    Level.ORIGINAL_DESTINATION: ("address", "fwmark", "namespace", "port"),
    Level.SERVICE: SERVICE_LABELS,
    Level.DESTINATION: ("address", "destination_port", *SERVICE_LABELS),
}
DEST_LABEL_CHOICES = ("address", "destination_port")  # what --destination-labels may keep


@dataclass(frozen=True)
class MetricDef:
    """One family: its value in each series is column `column` of the level's rows in a
    snapshot (ipvs.ServiceRows or DestinationRows; "count" = the number of services)."""

    name: str
    kind: Kind
    help: str
    level: Level
    column: str

    @property
    def is_rate(self) -> bool:
        """One of the kernel's rate estimates (a gauge Prometheus' rate() makes redundant)."""
        return self.column in RATE_COLUMNS


RATE_COLUMNS = frozenset(("cps", "inpps", "outpps", "inbps", "outbps"))
C, G = Kind.COUNTER, Kind.GAUGE
_OS, _OD, _S, _D = Level.ORIGINAL_SERVICE, Level.ORIGINAL_DESTINATION, Level.SERVICE, Level.DESTINATION


def _traffic(prefix: str, level: Level, scheduled: str, of: str) -> tuple[MetricDef, ...]:
    """The kernel's counters and rate estimates of a service or real server, as families."""
    rate = "The kernel's estimate of {} per second"
    return (
        MetricDef(f"{prefix}_connections_total", C, f"Connections scheduled {scheduled}", level, "conns"),
        MetricDef(f"{prefix}_packets_in_total", C, f"Incoming packets {of}", level, "inpkts"),
        MetricDef(f"{prefix}_packets_out_total", C, f"Outgoing packets {of}", level, "outpkts"),
        MetricDef(f"{prefix}_bytes_in_total", C, f"Incoming bytes {of}", level, "inbytes"),
        MetricDef(f"{prefix}_bytes_out_total", C, f"Outgoing bytes {of}", level, "outbytes"),
        MetricDef(f"{prefix}_connections_per_second", G, rate.format("new connections"), level, "cps"),
        MetricDef(f"{prefix}_packets_in_per_second", G, rate.format("incoming packets"), level, "inpps"),
        MetricDef(f"{prefix}_packets_out_per_second", G, rate.format("outgoing packets"), level, "outpps"),
        MetricDef(f"{prefix}_bytes_in_per_second", G, rate.format("incoming bytes"), level, "inbps"),
        MetricDef(f"{prefix}_bytes_out_per_second", G, rate.format("outgoing bytes"), level, "outbps"),
    )


METRICS: Sequence[MetricDef] = (
    # -- the original exporter's ten, verbatim --
    MetricDef(
        "ipvs_bytes_in_total", C, "The total number of incoming bytes a virtual server", _OS, "inbytes"
    ),
    MetricDef(
        "ipvs_bytes_out_total", C, "The total number of outgoing bytes from a virtual server", _OS, "outbytes"
    ),
    MetricDef(
        "ipvs_connections_total", C, "The total number of connections made to a virtual server", _OS, "conns"
    ),
    MetricDef(
        "ipvs_destination_active_connections_total",
        G,
        "The total number of connections established to a destination server",
        _OD,
        "active",
    ),
    MetricDef(
        "ipvs_destination_bytes_in_total",
        C,
        "The total number of incoming bytes to a real server",
        _OD,
        "inbytes",
    ),
    MetricDef(
        "ipvs_destination_bytes_out_total",
        C,
        "The total number of outgoing bytes to a real server",
        _OD,
        "outbytes",
    ),
    MetricDef(
        "ipvs_destination_connections_total",
        C,
        "The total number connections ever established to a destination",
        _OD,
        "conns",
    ),
    MetricDef(
        "ipvs_destination_inactive_connections_total",
        G,
        "The total number of connections inactive but established to a destination server",
        _OD,
        "inactive",
    ),
    MetricDef(
        "ipvs_destination_total",
        G,
        "The total number of real servers that are destinations to the service",
        _OS,
        "dest_count",
    ),
    MetricDef(
        "ipvs_services_total", G, "The total number of services registered in ipvs", Level.NAMESPACE, "count"
    ),
    # -- every virtual service, of every kind --
    *_traffic("ipvs_service", _S, "by the virtual service", "of the virtual service"),
    MetricDef("ipvs_service_destinations", G, "Real servers of the virtual service", _S, "dest_count"),
    MetricDef(
        "ipvs_service_persistence_timeout_seconds",
        G,
        "Persistence timeout of the virtual service (0 when not persistent)",
        _S,
        "timeout",
    ),
    # -- every real server --
    *_traffic("ipvs_backend", _D, "to the real server", "of the real server"),
    MetricDef(
        "ipvs_backend_active_connections", G, "Established connections to the real server", _D, "active"
    ),
    MetricDef(
        "ipvs_backend_inactive_connections",
        G,
        "Connections to the real server not established (or closing)",
        _D,
        "inactive",
    ),
    MetricDef(
        "ipvs_backend_persistent_connections",
        G,
        "Persistence templates pointing at the real server",
        _D,
        "persist",
    ),
    MetricDef("ipvs_backend_weight", G, "Scheduling weight of the real server (0 = quiesced)", _D, "weight"),
    MetricDef(
        "ipvs_backend_upper_threshold",
        G,
        "Connection upper threshold of the real server (0 = none)",
        _D,
        "u_threshold",
    ),
    MetricDef(
        "ipvs_backend_lower_threshold",
        G,
        "Connection lower threshold of the real server (0 = none)",
        _D,
        "l_threshold",
    ),
)

PROTOCOLS: Mapping[int, str] = {socket.IPPROTO_TCP: "tcp", socket.IPPROTO_UDP: "udp", 132: "sctp"}
FAMILIES: Mapping[int, str] = {socket.AF_INET: "ipv4", socket.AF_INET6: "ipv6"}
FORWARDING: Mapping[int, str] = {0: "masq", 1: "local", 2: "tunnel", 3: "route", 4: "bypass"}
SVC_FLAGS = (("persistent", 0x1), ("hashed", 0x2), ("one_packet", 0x4))


@dataclass(frozen=True)
class Options:
    """What to export. destination_labels: labels kept on per-destination series (the
    rest are summed away); per_destination False drops those series; backends adds the
    ipvs_backend_* families (every detail of every real server); original_only keeps
    only the original exporter's ten families (and the health ones); rates False drops
    the kernel's *_per_second estimates."""

    destination_labels: tuple[str, ...] = DEST_LABEL_CHOICES
    per_destination: bool = True
    backends: bool = False
    original_only: bool = False
    rates: bool = True

    def exports(self, level: Level) -> bool:
        """Whether families of this level are exported."""
        if level is Level.DESTINATION:
            return self.per_destination and self.backends and not self.original_only
        if level is Level.SERVICE:
            return not self.original_only
        return self.per_destination or level is not Level.ORIGINAL_DESTINATION

    def exports_family(self, d: MetricDef) -> bool:
        return self.exports(d.level) and (self.rates or not d.is_rate)

    def label_names(self, level: Level) -> tuple[str, ...]:
        """The level's label names, less the destination labels not kept."""
        drop = set(DEST_LABEL_CHOICES) - set(self.destination_labels)
        if level.of_services or not drop:
            return LABELS[level]
        return tuple(n for n in LABELS[level] if n not in drop)


DEFAULT_OPTIONS = Options()


class PublishedPortLike(Protocol):
    @property
    def protocol(self) -> str: ...
    @property
    def port(self) -> int: ...


Ports = Mapping[int, Sequence[PublishedPortLike]]  # fwmark -> the ports the mangle rules mark with it
Vips = Mapping[int, Sequence[str]]  # fwmark -> the addresses (swarm VIPs) the mangle rules mark


class ServiceLabels(NamedTuple):
    """A virtual service's label values (a fwmark service is labelled with its lowest
    published port and the VIP its mangle rules mark, of its address family; protocol is
    empty for it)."""

    family: str
    fwmark: str
    port: str
    protocol: str
    vip: str


def _vip_of(family: str, addresses: Sequence[str]) -> str:
    """The first of a fwmark's VIPs in the service's address family ("" if none)."""
    v6 = family == "ipv6"
    return next((a for a in addresses if (":" in a) == v6), "")


def service_labels(snap: Snapshot, ports: Ports, vips: Vips | None = None) -> list[ServiceLabels]:
    out = []
    for sid in snap.services.ids():
        family = FAMILIES.get(sid.af, str(sid.af))
        if sid.fwmark:
            found = ports.get(sid.fwmark)
            port = str(min(p.port for p in found)) if found else ""
            vip = _vip_of(family, vips.get(sid.fwmark, ())) if vips else ""
            out.append(ServiceLabels(family, str(sid.fwmark), port, "", vip))
        else:
            proto = PROTOCOLS.get(sid.protocol, str(sid.protocol))
            out.append(ServiceLabels(family, "0", str(sid.port), proto, sid.address))
    return out


LabelValues = tuple[str, ...]


def series_labels(
    level: Level, snap: Snapshot, namespace: str, svc: Sequence[ServiceLabels], options: Options
) -> list[LabelValues | None]:
    """Each row's label values at this level, in options.label_names(level) order; None
    for a row the level leaves out. Rows with equal values form one series (summed)."""
    if level is Level.NAMESPACE:
        return [(namespace,)]
    if level is Level.SERVICE:
        return [(s.family, s.fwmark, namespace, s.port, s.protocol, s.vip) for s in svc]
    if level is Level.ORIGINAL_SERVICE:
        return [(s.fwmark, namespace, s.port) if s.fwmark != "0" else None for s in svc]
    d = snap.dests
    addresses, dports = d.addresses(), [str(p) for p in d.port]
    keep = options.destination_labels
    out: list[LabelValues | None] = []
    for owner, addr, dport in zip(d.service, addresses, dports):
        s = svc[owner]
        kept: tuple[str, ...] = (addr,) if "address" in keep else ()
        if level is Level.ORIGINAL_DESTINATION:
            out.append((*kept, s.fwmark, namespace, s.port) if s.fwmark != "0" else None)
        else:
            kept += (dport,) if "destination_port" in keep else ()
            out.append((*kept, s.family, s.fwmark, namespace, s.port, s.protocol, s.vip))
    return out


@dataclass(frozen=True)
class GaugeDef:
    """A gauge family: name, help, label names."""

    name: str
    help: str
    labels: tuple[str, ...]


@dataclass(frozen=True)
class InfoDef(GaugeDef):
    """An info family (value always 1)."""


SERVICE_INFO = InfoDef(
    "ipvs_service_info",
    "Scheduler and flags of the virtual service (always 1)",
    (*SERVICE_LABELS, "scheduler", *(n for n, _ in SVC_FLAGS)),
)
PUBLISHED_INFO = InfoDef(
    "ipvs_service_published_port_info",
    "Every port and protocol the namespace's mangle rules mark with the fwmark (always 1)",
    ("fwmark", "namespace", "port", "protocol"),
)
BACKEND_INFO = InfoDef(
    "ipvs_backend_info", "Forwarding method of the real server (always 1)", (*LABELS[_D], "forwarding")
)


def _port_order(p: PublishedPortLike) -> tuple[str, int]:
    return p.protocol, p.port


def info_rows(
    snap: Snapshot, namespace: str, svc: Sequence[ServiceLabels], ports: Ports, options: Options
) -> list[tuple[InfoDef, tuple[str, ...], list[LabelValues]]]:
    """(InfoDef, label names, [label values, ...]) for each info family of a snapshot."""
    if options.original_only:
        return []
    s = snap.services
    svc_rows: list[LabelValues] = [
        (*sl[:2], namespace, *sl[2:], sched, *("true" if flags & bit else "false" for _, bit in SVC_FLAGS))
        for sl, sched, flags in zip(svc, s.schedulers(), s.flags)
    ]
    pub_rows: list[LabelValues] = [
        (str(m), namespace, str(p.port), p.protocol)
        for m in sorted(ports)
        for p in sorted(ports[m], key=_port_order)
    ]
    out: list[tuple[InfoDef, tuple[str, ...], list[LabelValues]]] = [
        (SERVICE_INFO, SERVICE_INFO.labels, svc_rows),
        (PUBLISHED_INFO, PUBLISHED_INFO.labels, pub_rows),
    ]
    if options.exports(Level.DESTINATION):
        labels = series_labels(Level.DESTINATION, snap, namespace, svc, options)
        methods = [FORWARDING.get(f, "unknown") for f in snap.dests.fwd]
        rows = dict.fromkeys((*key, m) for key, m in zip(labels, methods) if key is not None)
        out.append((BACKEND_INFO, (*options.label_names(_D), "forwarding"), list(rows)))
    return out


# The namespace's settings (ipvs.Settings); left out under original_only like every added family.
TIMEOUT = GaugeDef(
    "ipvs_timeout_seconds",
    "IPVS connection timeout of the namespace by protocol state, as ipvsadm --set changes it",
    ("namespace", "protocol"),
)
SYNC_DAEMON_INFO = InfoDef(
    "ipvs_sync_daemon_info",
    "A running IPVS connection sync daemon: master or backup, its multicast interface and sync ID (always 1)",
    ("mcast_interface", "namespace", "state", "sync_id"),
)
SYNC_DAEMONS = GaugeDef(
    "ipvs_sync_daemons", "IPVS connection sync daemons running in the namespace", ("namespace",)
)
SYSCTL = GaugeDef(
    "ipvs_sysctl",
    "Value of the namespace's setting net.ipv4.vs.<name> (integer sysctls)",
    ("name", "namespace"),
)
