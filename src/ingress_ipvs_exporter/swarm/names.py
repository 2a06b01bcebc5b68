"""Which Docker Swarm service is behind each fwmark of a load-balancer namespace, from the Docker Engine API.

Optional (--docker-host): names IPVS fwmark services after the swarm services behind them, on
every node (verbose network inspect: LocalLBIndex is the fwmark), with IDs from a manager
(client.py asks, endpoint.py says where). Docker is asked from a background thread only; a
scrape reads a cache and never waits on it.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, TypeVar

from ..logonce import LogOnce
from ..logs import one_line
from .client import DockerError, get_json
from .refresh import Refreshing, Spawn

log = logging.getLogger(__name__)

# Unversioned: the daemon answers with its own API version, so neither an old (20.10, API
# 1.41) nor a new daemon (whose minimum API version keeps rising) rejects the request.
_SERVICES_PATH = "/services"  # swarm managers only
_NETWORKS_PATH = "/networks"  # every node, from its own network database
_NETWORK_ID = re.compile(r"[0-9A-Za-z]{1,64}")  # what may go into the inspect's URL path
INGRESS = "ingress"  # the routing mesh's network
INGRESS_SANDBOX = "ingress_sbox"  # its load-balancer namespace's file name
_LB_PREFIX = "lb_"  # + the first 9 characters of an overlay network's ID: its load-balancer namespace
_ROUTES = {  # what each route gives, for the log
    "networks": "swarm service names",
    "services": "swarm service IDs (and names by published port)",
}

Port = tuple[str, int]  # (protocol, published port), e.g. ("tcp", 30000)
_T = TypeVar("_T")


@dataclass(frozen=True)
class SwarmService:
    """A swarm service: its ID ("" when only a worker's route answered), its name (Spec.Name)
    and the name of the network whose load balancer it is found in ("ingress" for published ports)."""

    id: str
    name: str
    network: str = ""


@dataclass(frozen=True)
class SwarmServices:
    """What GET /services says: the service of each ingress-mode published port, and every
    service's ID by name (service names are unique in a swarm)."""

    by_port: Mapping[Port, SwarmService]
    ids: Mapping[str, str]


def _services_map(services: Any) -> SwarmServices:
    """SwarmServices of a GET /services answer; items of the wrong shape are left out."""
    if not isinstance(services, list):
        raise TypeError("not a JSON list")
    found: dict[Port, SwarmService] = {}
    ids: dict[str, str] = {}
    for item in services:
        if not isinstance(item, dict):
            continue
        spec, endpoint = item.get("Spec"), item.get("Endpoint")
        sid = item.get("ID")
        name = spec.get("Name") if isinstance(spec, dict) else None
        ports = endpoint.get("Ports") if isinstance(endpoint, dict) else None
        if not isinstance(sid, str) or not isinstance(name, str):
            continue
        ids.setdefault(name, sid)
        for port in ports if isinstance(ports, list) else ():
            if not isinstance(port, dict) or (port.get("PublishMode") or "ingress") != "ingress":
                continue  # "host" mode bypasses IPVS
            number, protocol = port.get("PublishedPort"), port.get("Protocol") or "tcp"
            if isinstance(number, int) and 0 < number <= 65535 and isinstance(protocol, str):
                # an ingress-mode published port is always load-balanced on the ingress network
                found.setdefault((protocol.lower(), number), SwarmService(sid, name, INGRESS))
    return SwarmServices(found, ids)


def fetch_services(docker_host: str, timeout: float = 2.0) -> SwarmServices:
    """The services of GET /services (swarm managers only: a worker answers 503). Raises DockerError."""
    services = get_json(docker_host, _SERVICES_PATH, timeout, "a JSON list of services")
    try:
        return _services_map(services)
    except TypeError as exc:
        raise DockerError(
            f"docker at {docker_host}: GET {_SERVICES_PATH} did not return a JSON list of services "
            f"({exc}); check that --docker-host points at a Docker Engine API",
            "answer",
        ) from None


def _sandbox_network(sandbox: str, networks: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The network whose load-balancer namespace is called sandbox: ingress_sbox -> the ingress
    network, lb_<prefix> -> the one network whose ID starts with prefix; else None."""
    if sandbox == INGRESS_SANDBOX:
        found = [n for n in networks if n.get("Ingress") is True] or [
            n for n in networks if n.get("Name") == INGRESS
        ]
    elif sandbox.startswith(_LB_PREFIX) and len(sandbox) > len(_LB_PREFIX):
        prefix = sandbox[len(_LB_PREFIX) :]
        found = [n for n in networks if str(n.get("Id", "")).startswith(prefix)]
    else:
        return None
    return found[0] if len(found) == 1 else None  # two matches: a truncated ID names neither


def _network_services(network: Any, name: str) -> dict[int, SwarmService]:
    """LocalLBIndex (= fwmark in the network's load-balancer namespace) -> service, from a
    verbose network inspect; the pseudo-service (empty name, LocalLBIndex 0) is skipped."""
    services = network.get("Services") if isinstance(network, dict) else None
    found: dict[int, SwarmService] = {}
    if not isinstance(services, dict):  # null when no task of the network runs here
        return found
    for service, detail in services.items():
        mark = detail.get("LocalLBIndex") if isinstance(detail, dict) else None
        if not service or not isinstance(service, str) or type(mark) is not int or mark <= 0:
            continue
        found.setdefault(mark, SwarmService("", service, name))
    return found


def fetch_network_names(
    docker_host: str, timeout: float, sandboxes: Iterable[str]
) -> dict[tuple[str, int], SwarmService]:
    """(sandbox, fwmark) -> service (id ""), for the load-balancer namespaces named
    (ingress_sbox, lb_<network id prefix>), from GET /networks and each one's verbose inspect.

    Every node answers these from its own network database, workers included. Raises
    DockerError; a network gone between the list and its inspect (404) is left out.
    """
    wanted = sorted({s for s in sandboxes if s == INGRESS_SANDBOX or s.startswith(_LB_PREFIX)})
    if not wanted:
        return {}
    listed = get_json(docker_host, _NETWORKS_PATH, timeout, "a JSON list of networks")
    if not isinstance(listed, list):
        raise DockerError(
            f"docker at {docker_host}: GET {_NETWORKS_PATH} did not return a JSON list of networks; "
            "check that --docker-host points at a Docker Engine API",
            "answer",
        )
    networks = [n for n in listed if isinstance(n, dict)]
    found: dict[tuple[str, int], SwarmService] = {}
    for sandbox in wanted:
        network = _sandbox_network(sandbox, networks)
        nid, name = (network.get("Id"), network.get("Name")) if network else (None, None)
        if not isinstance(nid, str) or not _NETWORK_ID.fullmatch(nid) or not isinstance(name, str):
            log.debug("no swarm network for namespace %s in docker's network list", sandbox)
            continue
        try:
            detail = get_json(docker_host, f"{_NETWORKS_PATH}/{nid}?verbose=true", timeout, "a JSON network")
        except DockerError as exc:
            if exc.status == 404:  # removed since it was listed
                continue
            raise
        for mark, service in _network_services(detail, name).items():
            found[(sandbox, mark)] = service
    return found


def _port_key(port: Any) -> Port:
    """(protocol, port) of a tuple or of anything with .protocol and .port (marks.PublishedPort)."""
    if hasattr(port, "protocol") and hasattr(port, "port"):
        return str(port.protocol), int(port.port)
    protocol, number = port
    return str(protocol), int(number)


@dataclass(frozen=True)
class Names:
    """What one refresh learnt: services by (sandbox, fwmark) from the network route, and GET /services."""

    by_mark: Mapping[tuple[str, int], SwarmService]
    services: SwarmServices


_NO_NAMES = Names({}, SwarmServices({}, {}))
_Key = tuple[str, int, tuple[Port, ...]]  # (namespace path, fwmark, its published ports)


class DockerServices:
    """Cached swarm service names for one docker host, refreshed in a background thread.

    names() only reads the cache, so a scrape never waits on Docker. A refresh asks every node's
    route, GET /networks and each asked load-balancer namespace's verbose network inspect, and
    the manager-only GET /services, which adds service IDs and names published ports when the
    network route fails (on a worker it answers 503: names come without IDs). It is requested
    when the (namespace, fwmark, ports) asked about by all namespaces together change, when the
    cache is older than max_age, or when the last refresh failed; at most one runs at a time. A
    refresh fails only when neither route answered: then the last good names are kept and up is
    False. Each failure cause of each route is logged once until that route answers again. The
    policy is refresh.Refreshing's.
    """

    def __init__(
        self,
        docker_host: str,
        timeout: float = 2.0,
        max_age: float = 60.0,
        fetch: Callable[[str, float], SwarmServices] = fetch_services,
        fetch_networks: Callable[
            [str, float, Iterable[str]], Mapping[tuple[str, int], SwarmService]
        ] = fetch_network_names,
        clock: Callable[[], float] = time.monotonic,
        spawn: Spawn | None = None,
    ) -> None:
        self.docker_host = docker_host
        self.timeout = timeout
        self.max_age = max_age
        self._fetch = fetch
        self._fetch_networks = fetch_networks
        self._clock = clock
        self._said = {route: LogOnce(log) for route in _ROUTES}
        self._lock = threading.Lock()
        self._asked: dict[str, tuple[float, frozenset[_Key]]] = {}  # namespace -> (when, keys)
        self._cache: Refreshing[_Key, Names] = Refreshing(
            self._fetch_once,
            _NO_NAMES,
            max_age=max_age,
            wait_for_new_keys=False,
            retry_failed=True,
            clock=clock,
            spawn=spawn,
            name="docker-services",
        )

    def names(
        self, namespace_path: str, marks: Iterable[int], ports: Mapping[int, Iterable[Any]] | None = None
    ) -> dict[int, SwarmService]:
        """Service of each asked fwmark of the namespace that has one, from the cache; never blocks.

        By the namespace's file name (ingress_sbox, lb_<network id prefix>) and the fwmark; a
        mark that route does not name is named by its published ports (ports: fwmark -> ports,
        tuples or PublishedPort) from GET /services. service_id comes from GET /services by name,
        "" when it did not answer.
        """
        ports = ports or {}
        keys = frozenset(
            (namespace_path, mark, tuple(sorted(_port_key(p) for p in ports.get(mark, ())))) for mark in marks
        )
        current = self._cache.get(self._union(namespace_path, keys))
        sandbox = os.path.basename(namespace_path.rstrip("/"))
        by_port, ids = current.services.by_port, current.services.ids
        found: dict[int, SwarmService] = {}
        for _, mark, published in sorted(keys):
            service = current.by_mark.get((sandbox, mark)) or next(
                (by_port[p] for p in published if p in by_port), None
            )
            if service is not None:
                found[mark] = SwarmService(
                    service.id or ids.get(service.name, ""), service.name, service.network
                )
        return found

    def _union(self, namespace_path: str, keys: frozenset[_Key]) -> frozenset[_Key]:
        """What all namespaces asked about, this one now; one collector per namespace shares this
        cache, so a refresh follows a change in any of them, not each alternation between them.
        A namespace not asked about for 3 * max_age (it went away) is forgotten."""
        now = self._clock()
        with self._lock:
            self._asked[namespace_path] = (now, keys)
            for path, (when, _) in list(self._asked.items()):
                if now - when > 3 * self.max_age:
                    del self._asked[path]
            return frozenset().union(*(k for _, k in self._asked.values()))

    @property
    def up(self) -> bool:
        """True when the last refresh got names from either route (False before the first one finished)."""
        return self._cache.ok

    def _fetch_once(self) -> Names:
        """One refresh: both routes, each failure logged once per route and cause; the previous
        names of a route that failed are kept; raises when both failed."""
        with self._lock:
            sandboxes = {os.path.basename(p.rstrip("/")) for p, (_, keys) in self._asked.items() if keys}
        previous = self._cache.value
        by_mark, error = self._route(
            "networks", lambda: self._fetch_networks(self.docker_host, self.timeout, sandboxes)
        )
        services, services_error = self._route(
            "services", lambda: self._fetch(self.docker_host, self.timeout)
        )
        if error is not None and services_error is not None:
            raise error
        return Names(
            previous.by_mark if by_mark is None else dict(by_mark),
            previous.services if services is None else services,
        )

    def _route(self, route: str, fetch: Callable[[], _T]) -> tuple[_T | None, Exception | None]:
        """fetch()'s answer, or None and its error, logged once per cause until the route answers
        again. A worker's 503 to GET /services is how a worker is: info, not a warning."""
        said = self._said[route]
        try:
            answer = fetch()
        except Exception as exc:
            kind = getattr(exc, "kind", type(exc).__name__)
            message = one_line(str(exc) or type(exc).__name__, 400)
            level = logging.INFO if getattr(exc, "status", 0) == 503 else logging.WARNING
            said.log(kind, level, "%s unavailable: %s", _ROUTES[route], message)
            return None, exc
        if said.reset():
            log.info("%s available again from docker at %s", _ROUTES[route], self.docker_host)
        return answer, None

    def close(self) -> None:
        """Start no more refreshes; a running one finishes on its own (it is a daemon thread)."""
        self._cache.close()
