"""Which Docker Swarm service publishes each ingress port, from the Docker Engine API.

Optional (--docker-host): names IPVS fwmark services after the swarm services behind them.
Plain HTTP/1.1 over a unix socket or TCP with the standard library, so no new dependency.
Docker is asked from a background thread only; a scrape reads a cache and never waits on it.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable
from urllib.parse import urlsplit

from . import __version__
from .logonce import LogOnce
from .refresh import Refreshing, Spawn

log = logging.getLogger(__name__)

# Unversioned: the daemon answers with its own API version, so neither an old (20.10, API
# 1.41) nor a new daemon (whose minimum API version keeps rising) rejects the request.
_SERVICES_PATH = "/services"
_MAX_BODY = 64 << 20  # a services list this large is not a Docker daemon talking
_DEFAULT_TCP_PORT = {"tcp": 2375, "http": 80}

Port = tuple[str, int]  # (protocol, published port), e.g. ("tcp", 30000)


@dataclass(frozen=True)
class SwarmService:
    """A swarm service: its ID and its name (Spec.Name)."""

    id: str
    name: str


class DockerError(OSError):
    """Docker could not say which service publishes which port; one line naming the host and the fix.

    kind groups messages by cause ("unreachable", "timeout", "http", "answer") so a cache can
    warn once per cause rather than once per refresh.
    """

    def __init__(self, message: str, kind: str = "error") -> None:
        super().__init__(message)
        self.kind = kind


def parse_docker_host(value: str) -> tuple[str, str]:
    """'unix:///path' -> ('unix', '/path'); 'tcp://h:p' or 'http://h:p' -> ('tcp', 'h:p'); else ValueError."""
    text = value.strip()
    bad = f"--docker-host {value!r}"
    want = "use unix:///var/run/docker.sock, tcp://HOST:PORT or http://HOST:PORT"
    scheme, sep, rest = text.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in ("unix", "tcp", "http"):
        if scheme in ("https", "ssh", "npipe", "fd"):
            raise ValueError(f"{bad}: {scheme}:// is not supported; {want}")
        raise ValueError(f"{bad} is not a docker host address; {want}")
    if scheme == "unix":
        if not rest.startswith("/") or rest.rstrip("/") == "" or "\0" in rest:
            raise ValueError(f"{bad}: the socket path must be absolute, e.g. unix:///var/run/docker.sock")
        return "unix", rest
    try:
        parts = urlsplit(f"http://{rest}")
        hostname, port = parts.hostname, parts.port
    except ValueError as exc:
        raise ValueError(f"{bad}: {exc}; {want}") from None
    if (
        not hostname
        or port == 0
        or parts.username
        or parts.password
        or parts.query
        or parts.fragment
        or parts.path not in ("", "/")
    ):
        raise ValueError(f"{bad} is not a HOST:PORT address; {want}")
    host = f"[{hostname}]" if ":" in hostname else hostname
    return "tcp", f"{host}:{port if port is not None else _DEFAULT_TCP_PORT[scheme]}"


class _UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over an AF_UNIX stream socket (the Docker daemon's usual endpoint)."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        """Connect to the socket file instead of host:port."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.unix_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def _one_line(text: str, limit: int = 200) -> str:
    """Text squeezed onto one line and cut to limit characters."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _http_error(where: str, status: int, reason: str, body: bytes) -> DockerError:
    """DockerError for a non-200 answer, using the daemon's {"message": ...} when it sent one."""
    try:
        message = json.loads(body).get("message") or ""
    except (ValueError, AttributeError):
        message = body.decode("utf-8", "replace")
    message = _one_line(message) or reason
    text = f"{where}: HTTP {status}: {message}"
    if status == 503 and "swarm manager" in message.lower():
        fix = (
            "service names need a swarm manager node: run the exporter on a manager "
            "or point --docker-host at one"
        )
    elif status in (401, 403):
        fix = "check that --docker-host allows reading services"
    elif status == 404:
        fix = "check that --docker-host points at a Docker Engine API"
    else:
        fix = "check the Docker daemon's log"
    return DockerError(f"{text}; {fix}", "http")


def _get(docker_host: str, path: str, timeout: float) -> bytes:
    """Body of GET path from the Docker API, all within timeout seconds; raises DockerError."""
    try:
        kind, address = parse_docker_host(docker_host)
    except ValueError as exc:
        raise DockerError(str(exc), "config") from None
    where = f"docker at {docker_host}"
    deadline = time.monotonic() + timeout
    conn: http.client.HTTPConnection
    if kind == "unix":
        conn = _UnixHTTPConnection(address, timeout)
    else:
        conn = http.client.HTTPConnection(address, timeout=timeout)
    try:
        conn.request(
            "GET",
            path,
            headers={
                "Host": "docker",
                "Accept": "application/json",
                "User-Agent": f"ingress_ipvs_exporter/{__version__}",
            },
        )
        resp = conn.getresponse()
        chunks, size = [], 0
        while True:  # the socket timeout bounds each read; this bounds the whole answer
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise socket.timeout
            if conn.sock is not None:
                conn.sock.settimeout(remaining)
            chunk = resp.read1(65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > _MAX_BODY:
                raise DockerError(
                    f"{where}: answer larger than {_MAX_BODY >> 20} MiB; "
                    "check that --docker-host points at a Docker Engine API",
                    "answer",
                )
        body = b"".join(chunks)
    except DockerError:
        raise
    except (socket.timeout, TimeoutError):
        raise DockerError(
            f"{where}: no answer within {timeout:g}s; check that the Docker daemon "
            "is healthy or raise its timeout",
            "timeout",
        ) from None
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        what = "socket does not exist" if isinstance(exc, FileNotFoundError) else "connection refused"
        raise DockerError(
            f"{where}: {what}; check that Docker is running and --docker-host points at it", "unreachable"
        ) from None
    except PermissionError:
        raise DockerError(
            f"{where}: permission denied; run the exporter as root or in the docker group", "unreachable"
        ) from None
    except (OSError, http.client.HTTPException) as exc:
        detail = _one_line(getattr(exc, "strerror", None) or str(exc) or type(exc).__name__)
        raise DockerError(
            f"{where}: {detail}; check that Docker is running and --docker-host points at it", "unreachable"
        ) from None
    finally:
        conn.close()
    if resp.status != 200:
        raise _http_error(where, resp.status, resp.reason, body)
    return body


def _services_map(services: Any) -> dict[Port, SwarmService]:
    """(protocol, published port) -> service for each ingress-mode port of a GET /services answer."""
    if not isinstance(services, list):
        raise TypeError("not a JSON list")
    found: dict[Port, SwarmService] = {}
    for item in services:
        if not isinstance(item, dict):
            continue
        spec, endpoint = item.get("Spec"), item.get("Endpoint")
        sid = item.get("ID")
        name = spec.get("Name") if isinstance(spec, dict) else None
        ports = endpoint.get("Ports") if isinstance(endpoint, dict) else None
        if not isinstance(sid, str) or not isinstance(name, str) or not isinstance(ports, list):
            continue
        for port in ports:
            if not isinstance(port, dict) or (port.get("PublishMode") or "ingress") != "ingress":
                continue  # "host" mode bypasses IPVS
            number, protocol = port.get("PublishedPort"), port.get("Protocol") or "tcp"
            if isinstance(number, int) and 0 < number <= 65535 and isinstance(protocol, str):
                found.setdefault((protocol.lower(), number), SwarmService(sid, name))
    return found


def fetch_services(docker_host: str, timeout: float = 2.0) -> dict[Port, SwarmService]:
    """(protocol, published port) -> service, for ingress-mode published ports. Raises DockerError."""
    body = _get(docker_host, _SERVICES_PATH, timeout)
    try:
        return _services_map(json.loads(body))
    except (ValueError, TypeError) as exc:  # UnicodeDecodeError is a ValueError
        raise DockerError(
            f"docker at {docker_host}: GET {_SERVICES_PATH} did not return a JSON "
            f"list of services ({_one_line(str(exc), 80)}); check that --docker-host "
            "points at a Docker Engine API",
            "answer",
        ) from None


def _port_key(port: Any) -> Port:
    """(protocol, port) of a tuple or of anything with .protocol and .port (portmap.PublishedPort)."""
    if hasattr(port, "protocol") and hasattr(port, "port"):
        return str(port.protocol), int(port.port)
    protocol, number = port
    return str(protocol), int(number)


class DockerServices:
    """Cached (protocol, port) -> SwarmService for one docker host, refreshed in a background thread.

    lookup() only reads the cache, so a scrape never waits on Docker. It requests a refresh
    when the set of ports asked about changes (the IPVS fwmark set changed), when the cache
    is older than max_age, or when the last refresh failed; at most one refresh runs at a
    time, and a change of ports asked about during one runs another right after it. A failed
    refresh keeps the last good map, sets up False and last_error; each cause is logged once
    until Docker answers again. The policy is refresh.Refreshing's.
    """

    def __init__(
        self,
        docker_host: str,
        timeout: float = 2.0,
        max_age: float = 60.0,
        fetch: Callable[[str, float], dict[Port, SwarmService]] = fetch_services,
        clock: Callable[[], float] = time.monotonic,
        spawn: Spawn | None = None,
    ) -> None:
        self.docker_host = docker_host
        self.timeout = timeout
        self._fetch = fetch
        self._said = LogOnce(log)
        self._cache: Refreshing[Port, dict[Port, SwarmService]] = Refreshing(
            self._fetch_once,
            {},
            max_age=max_age,
            wait_for_new_keys=False,
            retry_failed=True,
            clock=clock,
            spawn=spawn,
            name="docker-services",
        )

    def lookup(self, ports: Iterable[Any]) -> dict[Port, SwarmService]:
        """Service of each asked (protocol, port) that has one, from the cache; never blocks on Docker."""
        wanted = frozenset(_port_key(port) for port in ports)
        found = self._cache.get(wanted)
        return {port: found[port] for port in sorted(wanted) if port in found}

    @property
    def up(self) -> bool:
        """True when the last refresh worked (False before the first one finished)."""
        return self._cache.ok

    @property
    def last_error(self) -> str | None:
        """Why the last refresh failed, in one line; None after one that worked."""
        error = self._cache.error
        return None if error is None else _one_line(str(error) or type(error).__name__, 400)

    def _fetch_once(self) -> dict[Port, SwarmService]:
        """One fetch; a failure is logged once per cause (DockerError.kind) until one works, and raised."""
        try:
            fresh = self._fetch(self.docker_host, self.timeout)
        except Exception as exc:
            kind = getattr(exc, "kind", type(exc).__name__)
            message = _one_line(str(exc) or type(exc).__name__, 400)
            self._said.log(kind, logging.WARNING, "swarm service names unavailable: %s", message)
            raise
        if self._said.reset():
            log.info("swarm service names available again from docker at %s", self.docker_host)
        return dict(fresh)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no refresh is running (for tests); False if one still runs after timeout."""
        return self._cache.wait_idle(timeout)

    def close(self) -> None:
        """Start no more refreshes; a running one finishes on its own (it is a daemon thread)."""
        self._cache.close()
