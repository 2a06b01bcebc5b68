"""Which Docker Swarm service is behind each fwmark of a load-balancer namespace, from the Docker Engine API.

Optional (--docker-host): names IPVS fwmark services after the swarm services behind them, on
every node (verbose network inspect: LocalLBIndex is the fwmark), with IDs from a manager.
HTTP/1.1 over a unix socket or TCP, or over TLS configured as the docker CLI reads it
(DOCKER_TLS_VERIFY, DOCKER_CERT_PATH), with the standard library, so no new dependency.
Docker is asked from a background thread only; a scrape reads a cache and never waits on it.
"""

from __future__ import annotations

import http.client
import io
import json
import logging
import os
import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, TypeVar
from urllib.parse import urlsplit

from .. import __version__
from ..logonce import LogOnce
from ..web.deadline import reader
from ..web.webconfig import EncryptedKey, no_password
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
# An answer this large is not a Docker daemon talking (GET /services of a few thousand
# services is a few MiB); parsed, JSON takes about 25 times its size in memory.
_MAX_BODY = 16 << 20
_DEFAULT_TCP_PORT = {"tcp": 2375, "http": 80}
_DEFAULT_TLS_PORT = 2376  # the docker CLI's default for tcp:// with TLS
_TLS_FILES = ("ca.pem", "cert.pem", "key.pem")  # in DOCKER_CERT_PATH, as the docker CLI names them

Port = tuple[str, int]  # (protocol, published port), e.g. ("tcp", 30000)
_T = TypeVar("_T")


@dataclass(frozen=True)
class SwarmService:
    """A swarm service: its ID ("" when only a worker's route answered), its name (Spec.Name)
    and the name of the network whose load balancer it is found in ("ingress" for published ports)."""

    id: str
    name: str
    network: str = ""


class DockerError(OSError):
    """Docker could not say which service publishes which port; one line naming the host and the fix.

    kind groups messages by cause ("unreachable", "timeout", "tls", "http", "answer") so a
    cache can warn once per cause rather than once per refresh.
    """

    def __init__(self, message: str, kind: str = "error", status: int = 0) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status  # the HTTP status of a non-200 answer, else 0


def _scheme(value: str) -> str:
    """The lower-cased scheme of a --docker-host value ('' when it has none)."""
    scheme, sep, _ = value.strip().partition("://")
    return scheme.lower() if sep else ""


def parse_docker_host(value: str, tls: bool = False) -> tuple[str, str]:
    """'unix:///path' -> ('unix', '/path'); 'tcp://h:p' or 'http://h:p' -> ('tcp', 'h:p'); else ValueError.

    tcp://HOST without a port means 2376 with tls (as the docker CLI has it), else 2375.
    """
    text = value.strip()
    bad = f"--docker-host {value!r}"
    want = "use unix:///var/run/docker.sock, tcp://HOST:PORT or http://HOST:PORT"
    scheme, sep, rest = text.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in ("unix", "tcp", "http"):
        if scheme == "https":  # the docker CLI rejects it too; TLS comes from DOCKER_TLS_VERIFY
            raise ValueError(
                f"{bad}: https:// is not a docker host address; for TLS use tcp://HOST:2376 "
                "with DOCKER_TLS_VERIFY=1 and DOCKER_CERT_PATH (see docs/prometheus.md)"
            )
        if scheme in ("ssh", "npipe", "fd"):
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
    default = _DEFAULT_TLS_PORT if tls and scheme == "tcp" else _DEFAULT_TCP_PORT[scheme]
    return "tcp", f"{host}:{port if port is not None else default}"


class TLSConfigError(ValueError):
    """The docker CLI's TLS variables or files are unusable (one line naming the file and variable)."""


@dataclass(frozen=True)
class Endpoint:
    """Where and how to reach Docker: ('unix', path) or ('tcp', 'host:port'), TLS or not."""

    kind: str
    address: str
    tls: ssl.SSLContext | None = None
    cert_dir: str = ""  # where ca.pem, cert.pem and key.pem came from, with tls


def _cert_dir(environ: Mapping[str, str]) -> str:
    """DOCKER_CERT_PATH, else the docker CLI's config folder ($DOCKER_CONFIG, else ~/.docker)."""
    folder = environ.get("DOCKER_CERT_PATH") or environ.get("DOCKER_CONFIG") or "~/.docker"
    if folder.startswith("~"):
        home = environ.get("HOME") or os.path.expanduser("~")
        folder = home + folder[1:]
    return folder


def tls_context(cert_dir: str) -> ssl.SSLContext:
    """A client context that trusts only cert_dir/ca.pem (host name checked) and presents
    cert_dir/cert.pem with key.pem. ValueError naming the file and DOCKER_CERT_PATH when one
    is missing, unreadable, not PEM, encrypted, or the key does not match the certificate."""
    ca, cert, key = (os.path.join(cert_dir, name) for name in _TLS_FILES)
    where = f"(DOCKER_CERT_PATH={cert_dir})"
    fix = "set DOCKER_CERT_PATH to the folder holding the docker client's ca.pem, cert.pem and key.pem"
    for path in (ca, cert, key):
        try:
            with open(path, "rb"):
                pass
        except FileNotFoundError:
            raise ValueError(f"{path} does not exist {where}; {fix}") from None
        except IsADirectoryError:
            raise ValueError(f"{path} is a directory, not a PEM file {where}; {fix}") from None
        except OSError as exc:
            raise ValueError(f"{path} cannot be read {where}: {exc.strerror or exc}; {fix}") from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the certificate and the host name
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_verify_locations(cafile=ca)
    except (ssl.SSLError, ValueError) as exc:
        raise ValueError(f"{ca} holds no PEM CA certificate {where}: {_ssl_reason(exc)}; {fix}") from None
    try:
        context.load_cert_chain(cert, key, password=no_password)
    except EncryptedKey:
        raise ValueError(f"{key} is encrypted {where}; give the docker client's unencrypted key") from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ValueError(f"{key} is not the key of {cert} {where}; {fix}") from None
        raise ValueError(
            f"{cert} and {key} are not a PEM certificate and its key {where}: {_ssl_reason(exc)}; {fix}"
        ) from None
    return context


def endpoint(docker_host: str, environ: Mapping[str, str] | None = None) -> Endpoint:
    """The Endpoint for a --docker-host value and the docker CLI's TLS variables; ValueError in one line.

    DOCKER_TLS_VERIFY (any non-empty value, as for the docker CLI) makes a tcp:// host TLS with
    the daemon's certificate and host name verified against $DOCKER_CERT_PATH/ca.pem and the
    client certificate cert.pem/key.pem presented. It is refused, never ignored, with unix://
    or http://. DOCKER_TLS (TLS without verification) is refused: nothing here skips verifying.
    """
    env = os.environ if environ is None else environ
    verify, insecure = bool(env.get("DOCKER_TLS_VERIFY")), bool(env.get("DOCKER_TLS"))
    bad = f"--docker-host {docker_host!r}"
    if not verify and not insecure:
        return Endpoint(*parse_docker_host(docker_host))
    scheme = _scheme(docker_host)
    if not verify:
        parse_docker_host(docker_host)
        raise TLSConfigError(
            f"{bad}: DOCKER_TLS (TLS without verifying the daemon) is not supported; "
            "set DOCKER_TLS_VERIFY=1 with DOCKER_CERT_PATH, or unset DOCKER_TLS for plain HTTP"
        )
    kind, address = parse_docker_host(docker_host, tls=True)
    if scheme != "tcp":
        raise TLSConfigError(
            f"{bad}: DOCKER_TLS_VERIFY is set but {scheme}:// is not TLS; use tcp://HOST:2376, "
            "or unset DOCKER_TLS_VERIFY to talk plain HTTP"
        )
    cert_dir = _cert_dir(env)
    try:
        context = tls_context(cert_dir)
    except ValueError as exc:
        raise TLSConfigError(f"{bad} with DOCKER_TLS_VERIFY set: {exc}") from None
    return Endpoint(kind, address, context, cert_dir)


def _ssl_reason(exc: BaseException) -> str:
    """The short reason of an ssl error (its verify message for a rejected certificate), one line."""
    text = getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or str(exc)
    text = re.sub(r"\s*\(_ssl\.c:\d+\)", "", str(text))  # where in CPython, not why
    return _one_line(text or type(exc).__name__, 120)


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


def _http_error(where: str, status: int, reason: str, body: bytes | bytearray) -> DockerError:
    """DockerError for a non-200 answer, using the daemon's {"message": ...} when it sent one."""
    try:
        message = json.loads(body).get("message") or ""
    except (ValueError, AttributeError):
        message = body.decode("utf-8", "replace")
    message = _one_line(message) or reason
    text = f"{where}: HTTP {status}: {message}"
    if status == 503 and "swarm manager" in message.lower():
        fix = "a worker node: service names come from its network inspect, without service IDs"
    elif status in (401, 403):
        fix = "check that --docker-host allows reading services and networks"
    elif status == 404:
        fix = "check that --docker-host points at a Docker Engine API"
    else:
        fix = "check the Docker daemon's log"
    return DockerError(f"{text}; {fix}", "http", status)


class _DeadlineSocket:
    """What http.client reads a response from (it only calls makefile): every read of the
    status line, headers and body bounded by the query's deadline (see deadline.py)."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock, self.deadline = sock, deadline

    def makefile(self, mode: str) -> io.BufferedReader:
        return reader(self.sock, self.deadline)


def _response_by(deadline: float) -> Callable[..., http.client.HTTPResponse]:
    def response(sock: socket.socket, *args: Any, **kwargs: Any) -> http.client.HTTPResponse:
        return http.client.HTTPResponse(_DeadlineSocket(sock, deadline), *args, **kwargs)  # type: ignore[arg-type]

    return response


def _get(docker_host: str, path: str, timeout: float) -> bytearray:
    """Body of GET path from the Docker API, all within timeout seconds; raises DockerError."""
    try:  # TLS files are read again each time: a renewed certificate needs no restart
        end = endpoint(docker_host)
    except ValueError as exc:
        raise DockerError(str(exc), "tls" if isinstance(exc, TLSConfigError) else "config") from None
    where = f"docker at {docker_host}"
    deadline = time.monotonic() + timeout
    conn: http.client.HTTPConnection
    if end.kind == "unix":
        conn = _UnixHTTPConnection(end.address, timeout)
    elif end.tls is not None:
        conn = http.client.HTTPSConnection(end.address, timeout=timeout, context=end.tls)
    else:
        conn = http.client.HTTPConnection(end.address, timeout=timeout)
    conn.response_class = _response_by(deadline)  # type: ignore[assignment]
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
        body = bytearray()  # grown in place: no list of chunks joined into a second copy
        while chunk := resp.read1(65536):
            body += chunk
            if len(body) > _MAX_BODY:
                raise DockerError(
                    f"{where}: answer larger than {_MAX_BODY >> 20} MiB; "
                    "check that --docker-host points at a Docker Engine API",
                    "answer",
                )
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
    except ssl.SSLCertVerificationError as exc:
        raise DockerError(
            f"{where}: TLS: the daemon's certificate was rejected ({_ssl_reason(exc)}); check that "
            f"{os.path.join(end.cert_dir, 'ca.pem')} signed it and that it names the host of --docker-host",
            "tls",
        ) from None
    except ssl.SSLError as exc:
        raise DockerError(
            f"{where}: TLS failed ({_ssl_reason(exc)}); check that it is the daemon's TLS port and "
            f"that the daemon accepts {os.path.join(end.cert_dir, 'cert.pem')}",
            "tls",
        ) from None
    except http.client.HTTPException as exc:  # its text is the peer's bytes: not for the log
        raise DockerError(
            f"{where}: not an HTTP answer ({type(exc).__name__}); check that --docker-host points at "
            "a Docker Engine API",
            "answer",
        ) from None
    except OSError as exc:
        detail = _one_line(exc.strerror or str(exc) or type(exc).__name__)
        raise DockerError(
            f"{where}: {detail}; check that Docker is running and --docker-host points at it", "unreachable"
        ) from None
    finally:
        conn.close()
    if resp.status != 200:
        raise _http_error(where, resp.status, resp.reason, body)
    return body


def _get_json(docker_host: str, path: str, timeout: float, want: str) -> Any:
    """GET path decoded as JSON; raises DockerError ('answer' when it is not JSON)."""
    body = _get(docker_host, path, timeout)
    try:
        return json.loads(body)
    except ValueError as exc:  # UnicodeDecodeError is a ValueError
        raise DockerError(
            f"docker at {docker_host}: GET {path} did not return {want} ({_one_line(str(exc), 80)}); "
            "check that --docker-host points at a Docker Engine API",
            "answer",
        ) from None


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
    services = _get_json(docker_host, _SERVICES_PATH, timeout, "a JSON list of services")
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
    listed = _get_json(docker_host, _NETWORKS_PATH, timeout, "a JSON list of networks")
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
            detail = _get_json(docker_host, f"{_NETWORKS_PATH}/{nid}?verbose=true", timeout, "a JSON network")
        except DockerError as exc:
            if exc.status == 404:  # removed since it was listed
                continue
            raise
        for mark, service in _network_services(detail, name).items():
            found[(sandbox, mark)] = service
    return found


def _port_key(port: Any) -> Port:
    """(protocol, port) of a tuple or of anything with .protocol and .port (portmap.PublishedPort)."""
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

    @property
    def last_error(self) -> str | None:
        """Why the last refresh failed, in one line; None after one that worked."""
        error = self._cache.error
        return None if error is None else _one_line(str(error) or type(error).__name__, 400)

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
            message = _one_line(str(exc) or type(exc).__name__, 400)
            level = logging.INFO if getattr(exc, "status", 0) == 503 else logging.WARNING
            said.log(kind, level, "%s unavailable: %s", _ROUTES[route], message)
            return None, exc
        if said.reset():
            log.info("%s available again from docker at %s", _ROUTES[route], self.docker_host)
        return answer, None

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no refresh is running (for tests); False if one still runs after timeout."""
        return self._cache.wait_idle(timeout)

    def close(self) -> None:
        """Start no more refreshes; a running one finishes on its own (it is a daemon thread)."""
        self._cache.close()
