"""One scrape of a namespace: its snapshot and port map for the renderer, and the exporter's
own families (IPVS info, swarm names, health) as a prometheus_client Collector.

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
from prometheus_client.registry import Collector, CollectorRegistry

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
from .metrics import DEFAULT_OPTIONS, Options, Ports, Vips
from .settings import settings_families

log = logging.getLogger(__name__)

NS_LABELS = ("namespace",)


class SwarmNames(Protocol):
    """What docker.DockerServices offers: the service behind each fwmark of a namespace (named
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
    """What one scrape read: the snapshot (None when IPVS could not be read), the
    fwmark -> published ports and fwmark -> VIPs maps of its fwmarks, and the namespace's
    settings (None when not read: see settings.settings_families)."""

    snapshot: Snapshot | None
    ports: Ports = field(default_factory=dict)
    vips: Vips = field(default_factory=dict)
    settings: Settings | None = None


@dataclass
class _State:
    """The last scrape's outcome, for the families collect() yields."""

    up: int | None = None  # None: no scrape yet
    seconds: float = 0.0
    ports: Ports = field(default_factory=dict)
    info: tuple[int, int] | None = None
    marks: tuple[int, ...] = ()  # the snapshot's fwmarks, for the swarm names
    settings: Settings | None = None


class IPVSCollector:
    """Reads one namespace's IPVS per scrape (read()) and yields the families about that
    read (collect()): ipvs_version_info and ipvs_connection_table_size, the swarm names,
    ipvs_up, ipvs_scrape_duration_seconds and ipvs_scrape_errors_total.

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
        self.last_error: IPVSError | None = None
        self._state = _State()
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
            with self._lock:
                self._state = _State(0, time.monotonic() - start)
            return Reading(None)
        settings = self._read_settings()
        self._said.reset()
        self.last_error = None
        with self._lock:
            self._state = _State(1, time.monotonic() - start, ports, info, marks, settings)
        return Reading(snap, ports, vips, settings)

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

    def overdue(self, seconds: float) -> None:
        """The read still runs after `seconds`: this scrape reports the namespace down."""
        message = f"reading IPVS in {describe_namespace(self.namespace)} took longer than {seconds:g}s"
        self._failed(ReadTimeout(errno.ETIMEDOUT, message))
        with self._lock:
            self._state = _State(0, seconds)

    def describe(self) -> list[Metric]:
        """The families without samples, so that registering does no netlink I/O."""
        return list(self._health(_State()))

    def collect(self) -> Iterator[Metric]:
        state = self._state
        if state.up:
            if state.info is not None and not self.options.original_only:
                yield from self._ipvs_info(*state.info)
            if self._swarm is not None:
                yield from self._swarm_families(state.marks, state.ports)
            yield from settings_families(self.namespace, state.settings)
        yield from self._health(state)

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

    def _health(self, state: _State) -> list[Metric]:
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
        if state.up is not None:
            u.add_metric([self.namespace], state.up)
            d.add_metric([self.namespace], state.seconds)
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
        self.last_error = e
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


def build_info() -> Metric:
    """The build info family on its own (for packaging checks)."""
    return next(BuildInfoCollector().collect())


def exporter_registry(collector: Collector, exporter_metrics: bool = True) -> CollectorRegistry:
    """The families served after the IPVS ones: the collector's, then (unless
    exporter_metrics is off, as node_exporter's --web.disable-exporter-metrics does for its
    own) the exporter's build info and process metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    if exporter_metrics:
        registry.register(BuildInfoCollector())
        registry.register(ProcessCollector(registry=None))
    return registry
