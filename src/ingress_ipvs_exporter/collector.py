"""prometheus_client collector: an IPVS snapshot -> metric families, built fresh per scrape.

Every IPVS metric is defined once, in METRICS: its name, type, help, the level it lives at
(namespace, service, destination) and which snapshot column it reads. The data source is
injected: production passes a live Handle, tests pass snapshots they made.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .ipvs import ADDR_LEN, DST_NCOLS, NAME_LEN, NSTATS, SVC_NCOLS, IPVSError, Snapshot, format_addr, lib

log = logging.getLogger(__name__)

# ---- label sets -------------------------------------------------------------------
# The seed's families keep the original exporter's labels (printed sorted, as it did) and
# cover fwmark services, which is what swarm programs. The full families cover every kind
# of service, so they add what makes an address:port service distinct.
NS_LABELS = ("namespace",)
SEED_SVC_LABELS = ("fwmark", "namespace", "port")
SEED_DST_LABELS = ("address", "fwmark", "namespace", "port")
SVC_LABELS = ("family", "fwmark", "namespace", "port", "protocol", "vip")
DST_LABELS = ("address", "destination_port", "family", "fwmark", "namespace", "port", "protocol", "vip")
DEST_LABEL_CHOICES = ("address", "destination_port")  # what --destination-labels may keep

LABELS = {
    "namespace": NS_LABELS,
    "seed_service": SEED_SVC_LABELS,
    "seed_destination": SEED_DST_LABELS,
    "service": SVC_LABELS,
    "destination": DST_LABELS,
}


@dataclass(frozen=True)
class MetricDef:
    """One metric family. `column` says where its value comes from:
    ("stats", IPVS_ST_*) or ("u32", IPVS_SVC_*/IPVS_DST_*) in the level's row,
    ("dests", None) the service's destination count, ("services", None) the service count."""

    name: str
    kind: str  # "counter" | "gauge"
    help: str
    level: str  # a LABELS key
    column: tuple


def _st(name: str) -> tuple:
    return ("stats", getattr(lib, f"IPVS_ST_{name}"))


def _svc(name: str) -> tuple:
    return ("u32", getattr(lib, f"IPVS_SVC_{name}"))


def _dst(name: str) -> tuple:
    return ("u32", getattr(lib, f"IPVS_DST_{name}"))


C, G = "counter", "gauge"
METRICS: Sequence[MetricDef] = (
    # -- the original exporter's ten, verbatim --
    MetricDef(
        "ipvs_bytes_in_total",
        C,
        "The total number of incoming bytes a virtual server",
        "seed_service",
        _st("INBYTES"),
    ),
    MetricDef(
        "ipvs_bytes_out_total",
        C,
        "The total number of outgoing bytes from a virtual server",
        "seed_service",
        _st("OUTBYTES"),
    ),
    MetricDef(
        "ipvs_connections_total",
        C,
        "The total number of connections made to a virtual server",
        "seed_service",
        _st("CONNS"),
    ),
    MetricDef(
        "ipvs_destination_active_connections_total",
        G,
        "The total number of connections established to a destination server",
        "seed_destination",
        _dst("ACTIVE"),
    ),
    MetricDef(
        "ipvs_destination_bytes_in_total",
        C,
        "The total number of incoming bytes to a real server",
        "seed_destination",
        _st("INBYTES"),
    ),
    MetricDef(
        "ipvs_destination_bytes_out_total",
        C,
        "The total number of outgoing bytes to a real server",
        "seed_destination",
        _st("OUTBYTES"),
    ),
    MetricDef(
        "ipvs_destination_connections_total",
        C,
        "The total number connections ever established to a destination",
        "seed_destination",
        _st("CONNS"),
    ),
    MetricDef(
        "ipvs_destination_inactive_connections_total",
        G,
        "The total number of connections inactive but established to a destination server",
        "seed_destination",
        _dst("INACTIVE"),
    ),
    MetricDef(
        "ipvs_destination_total",
        G,
        "The total number of real servers that are destinations to the service",
        "seed_service",
        ("dests", None),
    ),
    MetricDef(
        "ipvs_services_total",
        G,
        "The total number of services registered in ipvs",
        "namespace",
        ("services", None),
    ),
    # -- every virtual service, of every kind --
    MetricDef(
        "ipvs_service_connections_total",
        C,
        "Connections scheduled by the virtual service",
        "service",
        _st("CONNS"),
    ),
    MetricDef(
        "ipvs_service_packets_in_total",
        C,
        "Incoming packets of the virtual service",
        "service",
        _st("INPKTS"),
    ),
    MetricDef(
        "ipvs_service_packets_out_total",
        C,
        "Outgoing packets of the virtual service",
        "service",
        _st("OUTPKTS"),
    ),
    MetricDef(
        "ipvs_service_bytes_in_total", C, "Incoming bytes of the virtual service", "service", _st("INBYTES")
    ),
    MetricDef(
        "ipvs_service_bytes_out_total", C, "Outgoing bytes of the virtual service", "service", _st("OUTBYTES")
    ),
    MetricDef(
        "ipvs_service_connections_per_second",
        G,
        "The kernel's estimate of new connections per second",
        "service",
        _st("CPS"),
    ),
    MetricDef(
        "ipvs_service_packets_in_per_second",
        G,
        "The kernel's estimate of incoming packets per second",
        "service",
        _st("INPPS"),
    ),
    MetricDef(
        "ipvs_service_packets_out_per_second",
        G,
        "The kernel's estimate of outgoing packets per second",
        "service",
        _st("OUTPPS"),
    ),
    MetricDef(
        "ipvs_service_bytes_in_per_second",
        G,
        "The kernel's estimate of incoming bytes per second",
        "service",
        _st("INBPS"),
    ),
    MetricDef(
        "ipvs_service_bytes_out_per_second",
        G,
        "The kernel's estimate of outgoing bytes per second",
        "service",
        _st("OUTBPS"),
    ),
    MetricDef(
        "ipvs_service_destinations", G, "Real servers of the virtual service", "service", ("dests", None)
    ),
    MetricDef(
        "ipvs_service_persistence_timeout_seconds",
        G,
        "Persistence timeout of the virtual service (0 when not persistent)",
        "service",
        _svc("TIMEOUT"),
    ),
    # -- every real server --
    MetricDef(
        "ipvs_backend_connections_total",
        C,
        "Connections scheduled to the real server",
        "destination",
        _st("CONNS"),
    ),
    MetricDef(
        "ipvs_backend_packets_in_total",
        C,
        "Incoming packets of the real server",
        "destination",
        _st("INPKTS"),
    ),
    MetricDef(
        "ipvs_backend_packets_out_total",
        C,
        "Outgoing packets of the real server",
        "destination",
        _st("OUTPKTS"),
    ),
    MetricDef(
        "ipvs_backend_bytes_in_total", C, "Incoming bytes of the real server", "destination", _st("INBYTES")
    ),
    MetricDef(
        "ipvs_backend_bytes_out_total", C, "Outgoing bytes of the real server", "destination", _st("OUTBYTES")
    ),
    MetricDef(
        "ipvs_backend_connections_per_second",
        G,
        "The kernel's estimate of new connections per second",
        "destination",
        _st("CPS"),
    ),
    MetricDef(
        "ipvs_backend_packets_in_per_second",
        G,
        "The kernel's estimate of incoming packets per second",
        "destination",
        _st("INPPS"),
    ),
    MetricDef(
        "ipvs_backend_packets_out_per_second",
        G,
        "The kernel's estimate of outgoing packets per second",
        "destination",
        _st("OUTPPS"),
    ),
    MetricDef(
        "ipvs_backend_bytes_in_per_second",
        G,
        "The kernel's estimate of incoming bytes per second",
        "destination",
        _st("INBPS"),
    ),
    MetricDef(
        "ipvs_backend_bytes_out_per_second",
        G,
        "The kernel's estimate of outgoing bytes per second",
        "destination",
        _st("OUTBPS"),
    ),
    MetricDef(
        "ipvs_backend_active_connections",
        G,
        "Established connections to the real server",
        "destination",
        _dst("ACTIVE"),
    ),
    MetricDef(
        "ipvs_backend_inactive_connections",
        G,
        "Connections to the real server not established (or closing)",
        "destination",
        _dst("INACTIVE"),
    ),
    MetricDef(
        "ipvs_backend_persistent_connections",
        G,
        "Persistence templates pointing at the real server",
        "destination",
        _dst("PERSIST"),
    ),
    MetricDef(
        "ipvs_backend_weight",
        G,
        "Scheduling weight of the real server (0 = quiesced)",
        "destination",
        _dst("WEIGHT"),
    ),
    MetricDef(
        "ipvs_backend_upper_threshold",
        G,
        "Connection upper threshold of the real server (0 = none)",
        "destination",
        _dst("U_THRESH"),
    ),
    MetricDef(
        "ipvs_backend_lower_threshold",
        G,
        "Connection lower threshold of the real server (0 = none)",
        "destination",
        _dst("L_THRESH"),
    ),
)

_FAMILY = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily}

PROTOCOLS = {socket.IPPROTO_TCP: "tcp", socket.IPPROTO_UDP: "udp", 132: "sctp"}
FAMILIES = {socket.AF_INET: "ipv4", socket.AF_INET6: "ipv6"}
FORWARDING = {0: "masq", 1: "local", 2: "tunnel", 3: "route", 4: "bypass"}
SVC_FLAGS = (("persistent", 0x1), ("hashed", 0x2), ("one_packet", 0x4))


def new_family(name: str, kind: str, help_text: str, labels: Sequence[str]) -> Metric:
    return _FAMILY[kind](name, help_text, labels=labels)


PortLookup = Callable[[Iterable[int]], Mapping[int, Sequence]]


@dataclass(frozen=True)
class Options:
    """What to export. destination_labels: labels kept on per-destination series (the
    rest are summed away); per_destination False drops those series; backends adds the
    ipvs_backend_* families (every detail of every real server: ~17 series each)."""

    destination_labels: tuple[str, ...] = DEST_LABEL_CHOICES
    per_destination: bool = True
    backends: bool = False

    def wants(self, level: str) -> bool:
        """Whether families of this level (see LABELS) are exported."""
        if level == "destination":
            return self.per_destination and self.backends
        return self.per_destination or level != "seed_destination"


DEFAULT_OPTIONS = Options()


def _label_columns(snap: Snapshot, ports: Mapping[int, Sequence]):
    """Per-service label values: (seed labels, full labels), and per-destination (address, port)."""
    svc_seed, svc_full = [], []
    for i in range(snap.n_svc):
        r = snap.svc_u32[i * SVC_NCOLS : (i + 1) * SVC_NCOLS]
        fwmark, af = r[lib.IPVS_SVC_FWMARK], r[lib.IPVS_SVC_AF]
        if fwmark:
            found = ports.get(fwmark)
            port = str(min(p.port for p in found)) if found else ""
            proto = vip = ""
        else:
            port = str(r[lib.IPVS_SVC_PORT])
            proto = PROTOCOLS.get(r[lib.IPVS_SVC_PROTOCOL], str(r[lib.IPVS_SVC_PROTOCOL]))
            vip = format_addr(af, snap.svc_addr[i * ADDR_LEN : (i + 1) * ADDR_LEN])
        fw = str(fwmark)
        svc_seed.append((fw, port) if fwmark else None)
        svc_full.append((FAMILIES.get(af, str(af)), fw, port, proto, vip))
    dst = []
    for j in range(snap.n_dst):
        r = snap.dst_u32[j * DST_NCOLS : (j + 1) * DST_NCOLS]
        dst.append(
            (
                r[lib.IPVS_DST_SVC],
                format_addr(r[lib.IPVS_DST_AF], snap.dst_addr[j * ADDR_LEN : (j + 1) * ADDR_LEN]),
                str(r[lib.IPVS_DST_PORT]),
            )
        )
    return svc_seed, svc_full, dst


def _value(d: MetricDef, snap: Snapshot, row: int) -> int:
    block, col = d.column
    if block == "services":
        return snap.n_svc
    if d.level in ("service", "seed_service"):
        if block == "dests":
            return snap.svc_u32[row * SVC_NCOLS + lib.IPVS_SVC_DEST_COUNT]
        return snap.svc_stats[row * NSTATS + col] if block == "stats" else snap.svc_u32[row * SVC_NCOLS + col]
    if block == "stats":
        return snap.dst_stats[row * NSTATS + col]
    v = snap.dst_u32[row * DST_NCOLS + col]
    if col == lib.IPVS_DST_WEIGHT and v >= 1 << 31:
        v -= 1 << 32  # weight is a signed int in the kernel
    return v


def ipvs_families(
    snap: Snapshot, namespace: str, ports: Mapping[int, Sequence], options: Options = DEFAULT_OPTIONS
) -> list[Metric]:
    """Every IPVS metric family for one snapshot: the reference rendering."""
    svc_seed, svc_full, dst = _label_columns(snap, ports)
    keep = [i for i, name in enumerate(DEST_LABEL_CHOICES) if name in options.destination_labels]
    seed_keeps_address = "address" in options.destination_labels
    out = []
    for d in METRICS:
        if d.level == "namespace":
            fam = new_family(d.name, d.kind, d.help, NS_LABELS)
            fam.add_metric([namespace], _value(d, snap, 0))
        elif d.level in ("service", "seed_service"):
            fam = new_family(d.name, d.kind, d.help, LABELS[d.level])
            for i in range(snap.n_svc):
                if d.level == "seed_service":
                    if svc_seed[i] is not None:
                        fw, port = svc_seed[i]
                        fam.add_metric([fw, namespace, port], _value(d, snap, i))
                else:
                    family, fw, port, proto, vip = svc_full[i]
                    fam.add_metric([family, fw, namespace, port, proto, vip], _value(d, snap, i))
        else:
            if not options.wants(d.level):
                continue
            seed = d.level == "seed_destination"
            names = (
                (("address",) if seed_keeps_address else ()) + SEED_SVC_LABELS
                if seed
                else tuple(DEST_LABEL_CHOICES[k] for k in keep) + SVC_LABELS
            )
            fam = new_family(d.name, d.kind, d.help, names)
            sums: dict[tuple, int] = {}
            for j, (svc, addr, dport) in enumerate(dst):
                if seed:
                    if svc_seed[svc] is None:
                        continue
                    fw, port = svc_seed[svc]
                    key = ((addr,) if seed_keeps_address else ()) + (fw, namespace, port)
                else:
                    family, fw, port, proto, vip = svc_full[svc]
                    key = tuple((addr, dport)[k] for k in keep) + (family, fw, namespace, port, proto, vip)
                sums[key] = sums.get(key, 0) + _value(d, snap, j)
            for key, v in sums.items():
                fam.add_metric(list(key), v)
        out.append(fam)
    out.extend(_info_families(snap, namespace, svc_full, dst, ports, options))
    return out


@dataclass(frozen=True)
class InfoDef:
    """An info family (value always 1): name, help, label names; rows come from a function."""

    name: str
    help: str
    labels: tuple


SERVICE_INFO = InfoDef(
    "ipvs_service_info",
    "Scheduler and flags of the virtual service (always 1)",
    SVC_LABELS + ("scheduler",) + tuple(n for n, _ in SVC_FLAGS),
)
PUBLISHED_INFO = InfoDef(
    "ipvs_service_published_port_info",
    "Every port and protocol the namespace's mangle rules mark with the fwmark (always 1)",
    ("fwmark", "namespace", "port", "protocol"),
)
BACKEND_INFO = InfoDef(
    "ipvs_backend_info", "Forwarding method of the real server (always 1)", DST_LABELS + ("forwarding",)
)


def info_rows(snap: Snapshot, namespace: str, svc_full, dst, ports, options: Options):
    """(InfoDef, label names, [label values, ...]) for each info family of a snapshot."""
    svc_rows = []
    for i in range(snap.n_svc):
        flags = snap.svc_u32[i * SVC_NCOLS + lib.IPVS_SVC_FLAGS]
        sched = (
            snap.svc_sched[i * NAME_LEN : (i + 1) * NAME_LEN].split(b"\0", 1)[0].decode("ascii", "replace")
        )
        family, fw, port, proto, vip = svc_full[i]
        svc_rows.append(
            (
                family,
                fw,
                namespace,
                port,
                proto,
                vip,
                sched,
                *("true" if flags & bit else "false" for _, bit in SVC_FLAGS),
            )
        )
    pub_rows = [
        (str(mark), namespace, str(p.port), p.protocol) for mark in sorted(ports) for p in sorted(ports[mark])
    ]
    out = [(SERVICE_INFO, SERVICE_INFO.labels, svc_rows), (PUBLISHED_INFO, PUBLISHED_INFO.labels, pub_rows)]
    if options.wants("destination"):
        keep = [k for k, name in enumerate(DEST_LABEL_CHOICES) if name in options.destination_labels]
        rows: dict[tuple, None] = {}
        for j, (svc, addr, dport) in enumerate(dst):
            method = FORWARDING.get(snap.dst_u32[j * DST_NCOLS + lib.IPVS_DST_FWD], "unknown")
            family, fw, port, proto, vip = svc_full[svc]
            rows[
                tuple((addr, dport)[k] for k in keep) + (family, fw, namespace, port, proto, vip, method)
            ] = None
        names = tuple(DEST_LABEL_CHOICES[k] for k in keep) + BACKEND_INFO.labels[2:]
        out.append((BACKEND_INFO, names, list(rows)))
    return out


def _info_families(snap, namespace, svc_full, dst, ports, options) -> list[Metric]:
    out = []
    for d, names, rows in info_rows(snap, namespace, svc_full, dst, ports, options):
        fam = GaugeMetricFamily(d.name, d.help, labels=names)
        for row in rows:
            fam.add_metric(list(row), 1)
        out.append(fam)
    return out


def build_info() -> Metric:
    """ipvs_exporter_build_info: this exporter's version, the libnl it was built with, the kernel."""
    from . import __version__
    from .ipvs import libnl_version

    f = GaugeMetricFamily(
        "ipvs_exporter_build_info",
        "Version of the exporter, its libnl and the kernel (always 1)",
        labels=("version", "libnl_version", "kernel"),
    )
    f.add_metric([__version__, libnl_version(), os.uname().release], 1)
    return f


class IPVSCollector:
    """Collects the IPVS metrics of one namespace on every scrape, plus the exporter's health.

    snapshot: returns a Snapshot (raises IPVSError when IPVS cannot be read).
    ports: fwmarks -> {fwmark: [PublishedPort, ...]}.
    """

    def __init__(
        self,
        namespace: str,
        snapshot: Callable[[], Snapshot],
        ports: PortLookup,
        options: Options = DEFAULT_OPTIONS,
        info: Callable[[], tuple[int, int]] | None = None,
        swarm=None,
    ):
        """swarm: optional docker.DockerServices, naming the swarm service of each fwmark."""
        self.namespace = namespace
        self._snapshot = snapshot
        self._ports = ports
        self._info = info
        self._swarm = swarm
        self.options = options
        self._logged: set[str] = set()
        self._errors: dict[str, int] = {}
        self._build = build_info()

    def describe(self) -> list[Metric]:
        """The families without samples, so that registering does no netlink I/O."""
        return [new_family(d.name, d.kind, d.help, LABELS[d.level]) for d in METRICS] + self._health(
            None, 0.0
        )

    def read(self) -> tuple[Snapshot | None, Mapping[int, Sequence], list[Metric]]:
        """One scrape's data: the snapshot (None when IPVS could not be read), the fwmark ->
        ports map, and the families that follow the IPVS ones (IPVS info, health)."""
        start = time.monotonic()
        try:
            snap = self._snapshot()
            ports = self._ports(snap.fwmarks())
            tail = self._ipvs_info() if self._info else []
            if self._swarm is not None:
                tail += self._swarm_families(ports)
        except IPVSError as e:
            self._failed(e)
            return None, {}, self._health(0, time.monotonic() - start)
        self._logged.clear()
        return snap, ports, tail + self._health(1, time.monotonic() - start)

    def collect(self) -> Iterable[Metric]:
        snap, ports, tail = self.read()
        if snap is not None:
            yield from ipvs_families(snap, self.namespace, ports, self.options)
        yield from tail

    def _swarm_families(self, ports: Mapping[int, Sequence]) -> list[Metric]:
        """ipvs_swarm_service_info: one series per fwmark, with the same port label as the
        fwmark's other series, so PromQL can join service names on (namespace, fwmark)."""
        names = self._swarm.lookup(p for found in ports.values() for p in found)
        info = GaugeMetricFamily(
            "ipvs_swarm_service_info",
            "The Docker Swarm service that publishes the fwmark's ports (always 1)",
            labels=("fwmark", "namespace", "port", "service_id", "service_name"),
        )
        for mark in sorted(ports):
            owners = {names[(p.protocol, p.port)] for p in ports[mark] if (p.protocol, p.port) in names}
            for owner in sorted(owners, key=lambda o: o.id):
                port = str(min(p.port for p in ports[mark]))
                info.add_metric([str(mark), self.namespace, port, owner.id, owner.name], 1)
        up = GaugeMetricFamily(
            "ipvs_docker_up",
            "1 when the last query of the Docker Engine API for swarm service names succeeded, else 0",
            labels=NS_LABELS,
        )
        up.add_metric([self.namespace], 1 if self._swarm.up else 0)
        return [info, up]

    def _ipvs_info(self) -> list[Metric]:
        version, table = self._info()
        v = GaugeMetricFamily(
            "ipvs_version_info",
            "IPVS version of the namespace's kernel (always 1)",
            labels=("namespace", "version"),
        )
        v.add_metric([self.namespace, f"{version >> 16}.{(version >> 8) & 0xFF}.{version & 0xFF}"], 1)
        t = GaugeMetricFamily(
            "ipvs_connection_table_size", "Size of the IPVS connection hash table", labels=NS_LABELS
        )
        t.add_metric([self.namespace], table)
        return [v, t]

    def _health(self, up: int | None, seconds: float) -> list[Metric]:
        u = GaugeMetricFamily(
            "ipvs_up", "1 when the last scrape read IPVS in the namespace, else 0", labels=NS_LABELS
        )
        d = GaugeMetricFamily(
            "ipvs_scrape_duration_seconds",
            "Time this scrape spent reading IPVS over netlink and the port map",
            labels=NS_LABELS,
        )
        e = CounterMetricFamily(
            "ipvs_scrape_errors",
            "Scrapes that could not read IPVS, by reason",
            labels=("namespace", "reason"),
        )
        if up is not None:
            u.add_metric([self.namespace], up)
            d.add_metric([self.namespace], seconds)
            for reason, n in sorted(self._errors.items()):
                e.add_metric([self.namespace, reason], n)
        return [u, d, e, self._build]

    def check(self) -> None:
        """Read IPVS once (at start-up); raise its error, which scrapes then won't log again."""
        try:
            self._snapshot()
        except IPVSError as e:
            self._logged = {getattr(e, "reason", "error")}
            raise

    def _failed(self, e: IPVSError) -> None:
        """Count the failure by reason; log the first of a kind, not every scrape."""
        kind = getattr(e, "reason", "error")
        self._errors[kind] = self._errors.get(kind, 0) + 1
        if kind not in self._logged:
            self._logged = {kind}
            log.error("%s", e.strerror or e)
