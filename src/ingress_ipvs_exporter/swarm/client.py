"""The Docker Engine API client: GET a path over a unix socket, TCP or TLS, all of it within one
deadline, every failure a DockerError of one line naming the fix."""

from __future__ import annotations

import http.client
import io
import json
import os
import socket
import ssl
import time
from typing import Any, Callable

from .. import __version__
from ..logs import one_line
from ..web.deadline import reader
from .endpoint import TLSConfigError, endpoint, ssl_reason

# An answer this large is not a Docker daemon talking (GET /services of a few thousand
# services is a few MiB); parsed, JSON takes about 25 times its size in memory.
_MAX_BODY = 16 << 20


class DockerError(OSError):
    """Docker could not say which service publishes which port; one line naming the host and the fix.

    kind groups messages by cause ("unreachable", "timeout", "tls", "http", "answer") so a
    cache can warn once per cause rather than once per refresh.
    """

    def __init__(self, message: str, kind: str = "error", status: int = 0) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status  # the HTTP status of a non-200 answer, else 0


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


def _http_error(where: str, status: int, reason: str, body: bytes | bytearray) -> DockerError:
    """DockerError for a non-200 answer, using the daemon's {"message": ...} when it sent one."""
    try:
        message = json.loads(body).get("message") or ""
    except (ValueError, AttributeError):
        message = body.decode("utf-8", "replace")
    message = one_line(message) or reason
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


def get(docker_host: str, path: str, timeout: float) -> bytearray:
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
            f"{where}: TLS: the daemon's certificate was rejected ({ssl_reason(exc)}); check that "
            f"{os.path.join(end.cert_dir, 'ca.pem')} signed it and that it names the host of --docker-host",
            "tls",
        ) from None
    except ssl.SSLError as exc:
        raise DockerError(
            f"{where}: TLS failed ({ssl_reason(exc)}); check that it is the daemon's TLS port and "
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
        detail = one_line(exc.strerror or str(exc) or type(exc).__name__)
        raise DockerError(
            f"{where}: {detail}; check that Docker is running and --docker-host points at it", "unreachable"
        ) from None
    finally:
        conn.close()
    if resp.status != 200:
        raise _http_error(where, resp.status, resp.reason, body)
    return body


def get_json(docker_host: str, path: str, timeout: float, want: str) -> Any:
    """GET path decoded as JSON; raises DockerError ('answer' when it is not JSON)."""
    body = get(docker_host, path, timeout)
    try:
        return json.loads(body)
    except ValueError as exc:  # UnicodeDecodeError is a ValueError
        raise DockerError(
            f"docker at {docker_host}: GET {path} did not return {want} ({one_line(str(exc), 80)}); "
            "check that --docker-host points at a Docker Engine API",
            "answer",
        ) from None
