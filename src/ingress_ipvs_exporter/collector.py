"""One read of a namespace: its snapshot and port map for the renderer, and the families
about that read (IPVS info, swarm names, health), built from the read's own Reading.

The data sources are injected: production passes a live Handle's methods, tests pass
snapshots they made. The IPVS families themselves are rendered by exposition.Renderer.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client import ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .ipvs import (
    IPVSError,
    NamespaceNotFound,
    NotANamespace,
    ReadTimeout,
    Settings,
    Snapshot,
    describe_namespace,
)
from .logonce import LogOnce
from .render.metrics import DEFAULT_OPTIONS, Options, Ports, Vips
from .settings import settings_families

log = logging.getLogger(__name__)

NS_LABELS = ("namespace",)


class SwarmNames(Protocol):
    """What swarm.names.DockerServices offers: the service behind each fwmark of a namespace (named
    by its file and the mark, else by the mark's published ports), and whether the last query
    of the Docker Engine API worked."""

    @property
    def up(self) -> bool: ...

    def names(
        self, namespace_path: str, marks: Iterable[int], ports: Ports | None = None
    ) -> Mapping[int, SwarmOwner]: ...


class SwarmOwner(Protocol):
    @property
    def id(self) -> str: ...  # "" when no swarm manager answered
    @property
    def name(self) -> str: ...
    @property
    def network(self) -> str: ...


@dataclass(frozen=True)
class Reading:
    """What one read of a namespace found, and how it went: a value that belongs to the scrape
    that asked for it, so two concurrent scrapes never mix their health families.

    snapshot: None when IPVS could not be read (error says why); ports and vips: fwmark ->
    published ports and fwmark -> VIPs of the snapshot's fwmarks; info: (IPVS version,
    connection table size) when read; settings: the namespace's settings (None when not read:
    see settings.settings_families); seconds: how long the read took.
    """

    snapshot: Snapshot | None
    ports: Ports = field(default_factory=dict)
    vips: Vips = field(default_factory=dict)
    info: tuple[int, int] | None = None
    settings: Settings | None = None
    seconds: float = 0.0
    error: IPVSError | None = None

    @property
    def up(self) -> int:
        return 0 if self.snapshot is None else 1


class IPVSCollector:
    """Reads one namespace's IPVS per scrape (read(), returning a Reading) and builds the
    families about that reading (families()): ipvs_version_info and ipvs_connection_table_size,
    the swarm names, ipvs_up, ipvs_scrape_duration_seconds and ipvs_scrape_errors_total.

    The only state shared by scrapes is the error count (a counter across scrapes, under a
    lock) and what is logged once.

    snapshot: returns a Snapshot (raises IPVSError when IPVS cannot be read).
    ports: fwmarks -> {fwmark: [PublishedPort, ...]}; vips: fwmarks -> {fwmark: [VIP, ...]}.
    info: returns (IPVS version, connection table size); swarm: names fwmark services.
    settings: returns the namespace's Settings (not read under original_only).
    optional: a namespace matched by a glob, whose absence is no error worth a log line.
    """

    def __init__(
        self,
        namespace: str,
        snapshot: Callable[[], Snapshot],
        ports: Callable[[Iterable[int]], Ports],
        options: Options = DEFAULT_OPTIONS,
        info: Callable[[], tuple[int, int]] | None = None,
        swarm: SwarmNames | None = None,
        vips: Callable[[Iterable[int]], Vips] | None = None,
        optional: bool = False,
        settings: Callable[[], Settings] | None = None,
    ) -> None:
        self.namespace = namespace
        self.options = options
        self._snapshot = snapshot
        self._ports = ports
        self._info = info
        self._swarm = swarm
        self._vips = vips
        self._optional = optional
        self._settings = settings if not options.original_only else None
        self._errors: dict[str, int] = {}
        self._said = LogOnce(log)
        self._settings_said = LogOnce(log)  # never reset: a setting unreadable is said once
        self._lock = threading.Lock()

    def read(self) -> Reading:
        """Read IPVS and the port map now; a failure is counted and logged, never raised."""
        start = time.monotonic()
        try:
            snap = self._snapshot()
            marks = tuple(snap.fwmarks())
            ports = self._ports(marks)
            vips = self._vips(marks) if self._vips else {}
            info = self._info() if self._info else None
        except IPVSError as e:
            self._failed(e)
            return Reading(None, seconds=time.monotonic() - start, error=e)
        settings = self._read_settings()
        self._said.reset()
        return Reading(snap, ports, vips, info, settings, time.monotonic() - start)

    def _read_settings(self) -> Settings | None:
        """The namespace's settings, or None; what could not be read is logged once per kind
        (a namespace that has it for good must not fill the log) and costs no other family."""
        if self._settings is None:
            return None
        try:
            settings = self._settings()
        except IPVSError as e:
            self._settings_said.log(("settings", e.errno), logging.WARNING, "%s", e.strerror or e)
            return None
        for key, message in settings.problems:
            self._settings_said.log(key, logging.WARNING, "%s", message)
        return settings

    def readings(self, scrape_timeout: float | None = None) -> list[tuple[IPVSCollector, Reading]]:
        """This one namespace read now (what exposition.MetricsApp asks of its source; one
        namespace is read in the scrape's thread, so there is no deadline to follow)."""
        return [(self, self.read())]

    def overdue(self, seconds: float) -> Reading:
        """The read still runs after `seconds`: this scrape's reading of the namespace, down."""
        message = f"reading IPVS in {describe_namespace(self.namespace)} took longer than {seconds:g}s"
        error = ReadTimeout(errno.ETIMEDOUT, message)
        self._failed(error)
        return Reading(None, seconds=seconds, error=error)

    def families(self, reading: Reading) -> list[Metric]:
        """The families about one reading (this collector's read or overdue())."""
        out: list[Metric] = []
        if reading.snapshot is not None:
            if reading.info is not None and not self.options.original_only:
                out += self._ipvs_info(*reading.info)
            if self._swarm is not None:
                out += self._swarm_families(reading.snapshot.fwmarks(), reading.ports)
            out += settings_families(self.namespace, reading.settings)
        return out + self._health(reading)

    def _swarm_families(self, marks: Iterable[int], ports: Ports) -> list[Metric]:
        """ipvs_swarm_service_info: one series per named fwmark, with the same port label as the
        fwmark's other series ("" for a VIP's mark, which has no published port), so PromQL can
        join service names on (namespace, fwmark)."""
        assert self._swarm is not None
        names = self._swarm.names(self.namespace, marks, ports)
        info = GaugeMetricFamily(
            "ipvs_swarm_service_info",
            "The Docker Swarm service behind the fwmark, and the network it is balanced on (always 1)",
            labels=("fwmark", "namespace", "network", "port", "service_id", "service_name"),
        )
        for mark, owner in sorted(names.items()):
            port = str(min(p.port for p in ports[mark])) if ports.get(mark) else ""
            info.add_metric([str(mark), self.namespace, owner.network, port, owner.id, owner.name], 1)
        up = GaugeMetricFamily(
            "ipvs_docker_up",
            "1 when the last query of the Docker Engine API for swarm service names succeeded, else 0",
            labels=NS_LABELS,
        )
        up.add_metric([self.namespace], 1 if self._swarm.up else 0)
        return [info, up]

    def _ipvs_info(self, version: int, table: int) -> list[Metric]:
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

    def _health(self, reading: Reading) -> list[Metric]:
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
        u.add_metric([self.namespace], reading.up)
        d.add_metric([self.namespace], reading.seconds)
        with self._lock:
            errors = sorted(self._errors.items())
        for reason, n in errors:
            e.add_metric([self.namespace, reason], n)
        return [u, d, e]

    def check(self) -> None:
        """Read IPVS once (at start-up); raise its error, which scrapes then won't log again."""
        try:
            self._snapshot()
        except IPVSError as e:
            self._said.log(e.reason, logging.DEBUG, "%s", e.strerror or e)  # the caller says it
            raise

    def _failed(self, e: IPVSError) -> None:
        """Count the failure by reason; log the first of a kind, not every scrape (at debug
        level for a glob match that is gone or not a namespace: Docker removes them)."""
        gone = self._optional and isinstance(e, (NamespaceNotFound, NotANamespace))
        with self._lock:
            self._errors[e.reason] = self._errors.get(e.reason, 0) + 1
        self._said.log(e.reason, logging.DEBUG if gone else logging.ERROR, "%s", e.strerror or e)


class BuildInfoCollector:
    """ipvs_exporter_build_info: this exporter's version, the libnl it was built with, the kernel."""

    def __init__(self) -> None:
        from . import __version__
        from .ipvs import libnl_version

        self._labels = [__version__, libnl_version(), os.uname().release]

    def collect(self) -> Iterator[Metric]:
        f = GaugeMetricFamily(
            "ipvs_exporter_build_info",
            "Version of the exporter, its libnl and the kernel (always 1)",
            labels=("version", "libnl_version", "kernel"),
        )
        f.add_metric(self._labels, 1)
        yield f


def scrape_families(readings: Iterable[tuple[IPVSCollector, Reading]]) -> list[Metric]:
    """The families about one scrape's readings, one family per name with every namespace's
    samples in turn."""
    merged: dict[str, Metric] = {}
    for collector, reading in readings:
        for family in collector.families(reading):
            have = merged.get(family.name)
            if have is None:
                merged[family.name] = family
            else:
                have.samples.extend(family.samples)
    return list(merged.values())


def exporter_collectors(exporter_metrics: bool = True) -> list[Collector]:
    """The families served after those about the scrape: unless exporter_metrics is off (as
    node_exporter's --web.disable-exporter-metrics does for its own), the exporter's build
    info and process metrics."""
    if not exporter_metrics:
        return []
    return [BuildInfoCollector(), ProcessCollector(registry=None)]
