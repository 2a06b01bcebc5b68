"""The threaded HTTP server under the apps: listen backlog, TLS per connection, the open
connection bound, the request deadline, back-off when out of descriptors, client trouble
logged at debug, and the listening sockets (bound here or passed by systemd).

A misbehaving client (a reset, a stall, a failed handshake, plain HTTP to the TLS port) costs
at most one DEBUG line in the configured log format, never a traceback on stderr.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import ssl
import sys
import threading
import time
from socketserver import ThreadingMixIn
from typing import IO, TYPE_CHECKING, Any, Callable, Optional, Sequence, cast
from wsgiref.simple_server import ServerHandler, WSGIRequestHandler, WSGIServer

from .. import __version__
from ..logs import PROG
from .deadline import reader
from .tls import RotatingTLS

if TYPE_CHECKING:
    from types import TracebackType
    from wsgiref.types import WSGIApplication

    ExcInfo = tuple[type[BaseException], BaseException, TracebackType]

log = logging.getLogger(__name__)

# the Server header: this program and its version, not the Python that runs it
SOFTWARE = f"{PROG}/{__version__}"


def somaxconn() -> int:
    """The kernel's cap on a listen backlog (socketserver's default of 5 drops SYNs of a
    burst of scrapes, which then wait for a retransmit)."""
    try:
        with open("/proc/sys/net/core/somaxconn") as f:
            return max(128, int(f.read().strip()))
    except (OSError, ValueError):
        return 4096


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:300]


class _ServerHandler(ServerHandler):
    """wsgiref's handler, minus the traceback on stderr, and with HEAD sending no body."""

    environ: dict[str, Any]
    headers_sent: bool
    server_software = SOFTWARE

    def log_exception(self, exc_info: ExcInfo) -> None:  # type: ignore[override]
        exc = exc_info[1]
        level = logging.DEBUG if isinstance(exc, OSError) else logging.ERROR
        log.log(
            level,
            "%s %s failed: %s",
            self.environ.get("REQUEST_METHOD"),
            self.environ.get("PATH_INFO"),
            _describe(exc),
        )

    def handle_error(self) -> None:
        # wsgiref answers any failure, BaseExceptions too, with a 500; one that is no Exception
        # ends the process, not the request (the CLI says how), so it goes on up the thread
        exc = sys.exc_info()[1]
        if exc is not None and not isinstance(exc, Exception):
            self.result = None  # closed by finish_response already, or never made: run() closes it again
            raise exc
        super().handle_error()

    def _head(self) -> bool:
        return bool(self.environ.get("REQUEST_METHOD") == "HEAD")

    def write(self, data: bytes) -> None:
        if not self._head():
            return super().write(data)
        if not self.headers_sent:
            self.bytes_sent = len(data)  # as wsgiref does: Content-Length of a one-chunk body
            self.send_headers()

    def finish_content(self) -> None:
        if self._head() and not self.headers_sent:
            self.send_headers()  # no "Content-Length: 0": GET's length is unknown here
            return
        super().finish_content()


# Seconds a client has for its request line and headers, and for each send or receive: the
# CLI passes $INGRESS_IPVS_EXPORTER_HTTP_TIMEOUT (tests set it short to see the drop happen).
CLIENT_TIMEOUT = 60.0
CLIENT_TIMEOUT_ENV = "INGRESS_IPVS_EXPORTER_HTTP_TIMEOUT"


DESCRIPTOR_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def descriptor_limit() -> Optional[int]:
    """The soft limit on open descriptors (RLIMIT_NOFILE, systemd's LimitNOFILE); None
    when unlimited or unknown (a seccomp filter may refuse even reading it)."""
    import resource

    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return None
    return None if soft == resource.RLIM_INFINITY else soft


class Connections:
    """The connections every listener holds open, oldest first, with whether each is still
    sending its request (or TLS handshake). At most `limit` (--web.max-connections; 0: no
    bound): beyond it the oldest one still sending its request is shut down to make room -
    a slow or stalled client, never a response in progress - and when every one is being
    answered the new one is closed instead. The same happens when accept() finds the process
    out of descriptors (EMFILE), and the accept loop then waits (10 ms, doubling up to 1 s)
    instead of spinning. Each condition logs one warning per WARN_EVERY seconds at most.
    A lock guards the table: the accept threads add, the connections' threads update."""

    WARN_EVERY = 60.0

    def __init__(
        self,
        limit: int,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.limit = limit
        self._clock, self._sleep = clock, sleep
        self._lock = threading.Lock()
        self._open: dict[socket.socket, bool] = {}  # insertion order is age; True: still reading
        self._warned: dict[str, float] = {}
        self._backoff = 0.0

    def __len__(self) -> int:
        return len(self._open)

    def _warn(self, key: str, msg: str, *args: Any) -> None:
        now = self._clock()
        with self._lock:
            last = self._warned.get(key)
            if last is not None and now - last < self.WARN_EVERY:
                return
            self._warned[key] = now
        log.warning(msg, *args)

    def _evict(self) -> bool:
        """Shut down the oldest connection still sending its request (its thread then closes
        it); False when there is none. Call with the lock held."""
        for sock, reading in self._open.items():
            if reading:
                del self._open[sock]
                with contextlib.suppress(OSError):  # the plain socket's shutdown, TLS or not
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)
                return True
        return False

    def add(self, sock: socket.socket) -> bool:
        """Track a new connection, making room if the bound is reached; False: refuse it."""
        with self._lock:
            full = 0 < self.limit <= len(self._open)
            room = not full or self._evict()
            if room:
                self._open[sock] = True
        if full:
            self._warn(
                "full",
                "%d connections open (--web.max-connections): closing the oldest still sending a request%s",
                self.limit,
                "" if room else "; all are being answered, so refusing new ones",
            )
        return room

    def answering(self, sock: socket.socket) -> None:
        """The connection's request has been read: it is no longer a candidate to close."""
        with self._lock:
            if sock in self._open:
                self._open[sock] = False

    def remove(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.pop(sock, None)

    def out_of_descriptors(self, err: OSError) -> None:
        """accept() failed for want of descriptors or memory: close the oldest connection
        still sending its request, and wait before the next accept."""
        with self._lock:
            self._evict()
            self._backoff = min(1.0, max(0.01, self._backoff * 2))
            wait = self._backoff
        self._warn(
            "descriptors",
            "cannot accept connections: %s; closing the oldest still sending a request and "
            "accepting more slowly (raise LimitNOFILE or lower --web.max-connections)",
            err.strerror or err,
        )
        self._sleep(wait)

    def accepted(self) -> None:
        self._backoff = 0.0


def connection_bound(flag: int, descriptors: Optional[int]) -> int:
    """--web.max-connections as it applies here: at most half the descriptors the process
    may open (the other half for namespaces, netlink, subprocesses, logs); 0 stays 0."""
    if flag <= 0 or descriptors is None:
        return flag
    return max(1, min(flag, descriptors // 2))


class _RequestHandler(WSGIRequestHandler):
    timeout = CLIENT_TIMEOUT  # each server's own subclass (_handler) has its client timeout

    def version_string(self) -> str:  # errors sent before the app runs (414, 400)
        return SOFTWARE

    def setup(self) -> None:
        # the whole request line and headers within `timeout`, however slowly they trickle
        deadline = time.monotonic() + self.timeout
        super().setup()
        if isinstance(self.request, ssl.SSLSocket):
            # here, in the connection's thread; CPython's do_handshake counts its timeout for
            # the whole handshake, not per read, so a trickled ClientHello is cut off too
            self.request.do_handshake()
            tls: Optional[RotatingTLS] = getattr(self.server, "tls", None)
            if tls is not None and not tls.peer_allowed(self.request):
                raise ssl.SSLError("client certificate has none of client_allowed_sans")
        self.rfile.close()
        self.rfile = reader(self.connection, deadline)

    def handle(self) -> None:
        # wsgiref's handle(), with the quiet _ServerHandler
        self.raw_requestline = self.rfile.readline(65537)
        if len(self.raw_requestline) > 65536:
            self.requestline = ""
            self.request_version = ""
            self.command = ""
            self.send_error(414)
            return
        if not self.parse_request():
            return
        self.connection.settimeout(self.timeout)  # the answer: `timeout` per send, as before
        connections: Optional[Connections] = getattr(self.server, "connections", None)
        if connections is not None:
            connections.answering(self.request)
        wfile = cast(IO[bytes], self.wfile)
        handler = _ServerHandler(self.rfile, wfile, self.get_stderr(), self.get_environ(), multithread=True)
        handler.request_handler = self  # type: ignore[attr-defined]  # wsgiref's back-reference
        app = self.server.get_app()  # type: ignore[attr-defined]
        handler.run(app)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class Server(ThreadingMixIn, WSGIServer):
    """One thread per connection; TLS wrapped per connection from the current context."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = somaxconn()
    tls: Optional[RotatingTLS] = None
    connections: Optional[Connections] = None

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()

    def get_request(self) -> tuple[socket.socket, Any]:
        try:
            conn, addr = super().get_request()
        except OSError as e:
            # the listening socket stays readable: without a pause the loop would spin
            if self.connections is not None and e.errno in DESCRIPTOR_ERRORS:
                self.connections.out_of_descriptors(e)
            raise
        if self.connections is not None:
            self.connections.accepted()
        if self.tls is not None:
            # the handshake happens in the connection's own thread (_RequestHandler.setup), so
            # a slow or plain-HTTP client cannot hold up the accept loop
            conn = self.tls.context().wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        return conn, addr

    def process_request(self, request: Any, client_address: Any) -> None:
        if self.connections is not None and not self.connections.add(request):
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        if self.connections is not None:
            self.connections.remove(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        level = logging.DEBUG if exc is None or isinstance(exc, OSError) else logging.ERROR
        log.log(level, "connection from %s ended: %s", client_address[0], _describe(exc or Exception()))


def _family(host: str) -> socket.AddressFamily:
    if host == "":
        return socket.AF_INET6 if socket.has_ipv6 else socket.AF_INET
    try:
        return socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as e:
        raise OSError(f"cannot resolve listen host '{host}': {e.strerror}") from None


def _handler(client_timeout: float) -> type[_RequestHandler]:
    """The request handler class with this client timeout (socketserver reads it from the class)."""
    return type("RequestHandler", (_RequestHandler,), {"timeout": client_timeout})


class ListenError(OSError):
    """No listening socket could be had; the message is one line naming the address."""


def _adopt(
    sock: socket.socket,
    app: WSGIApplication,
    tls: Optional[RotatingTLS],
    connections: Optional[Connections],
    client_timeout: float,
) -> Server:
    """A server on a socket that is already bound and listening (from systemd)."""
    cls = type("Server", (Server,), {"address_family": sock.family, "tls": tls, "connections": connections})
    server: Server = cls(sock.getsockname()[:2], _handler(client_timeout), bind_and_activate=False)
    server.socket.close()
    server.socket = sock
    server.server_address = sock.getsockname()
    host, port = server.server_address[:2]
    server.server_name, server.server_port = socket.getfqdn(str(host)), port
    server.setup_environ()
    server.set_app(app)
    return server


def systemd_sockets() -> list[socket.socket]:
    """The listening stream sockets systemd passed to this process (socket activation:
    LISTEN_PID, LISTEN_FDS, from fd 3 on); the variables are cleared so no child takes them."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        raise ListenError(
            "--web.systemd-socket: systemd passed no socket (start the exporter through its .socket unit)"
        )
    try:
        count = int(os.environ.get("LISTEN_FDS", ""))
    except ValueError:
        raise ListenError(
            f"--web.systemd-socket: LISTEN_FDS={os.environ.get('LISTEN_FDS')!r} is not a number"
        ) from None
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    socks = []
    for fd in range(3, 3 + count):
        try:
            socks.append(socket.socket(fileno=fd))
        except OSError as e:
            what = "not open" if e.errno == errno.EBADF else "not a socket"
            raise ListenError(
                f"--web.systemd-socket: LISTEN_FDS={count} but descriptor {fd} is {what}"
            ) from None
    streams = [
        s for s in socks if s.type == socket.SOCK_STREAM and s.family in (socket.AF_INET, socket.AF_INET6)
    ]
    if not streams:
        raise ListenError(
            "--web.systemd-socket: systemd passed no TCP listening socket (ListenStream= in the .socket unit)"
        )
    return streams


def listen(
    addresses: Sequence[tuple[str, int]],
    systemd: bool,
    app: WSGIApplication,
    tls: Optional[RotatingTLS] = None,
    connections: Optional[Connections] = None,
    client_timeout: float = CLIENT_TIMEOUT,
) -> list[Server]:
    """A server per address (or per socket systemd passed), all under one Connections
    bound; all or nothing: ListenError."""
    if systemd:
        return [_adopt(sock, app, tls, connections, client_timeout) for sock in systemd_sockets()]
    servers: list[Server] = []
    for host, port in addresses:
        try:
            servers.append(serve(host, port, app, tls, connections, client_timeout))
        except OSError as e:
            for s in servers:
                s.server_close()
            shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            why = _LISTEN_HINTS.get(e.errno or 0, "")
            if e.errno == errno.EACCES and port >= 1024:
                why = ""
            hint = f" ({why})" if why else ""
            raise ListenError(f"cannot listen on {shown}: {e.strerror or e}{hint}") from None
    return servers


# what a listen failure most likely means, by errno (the message alone says what failed)
_LISTEN_HINTS = {
    errno.EADDRINUSE: "is another exporter on that port? set --listen-address",
    errno.EACCES: "a port below 1024 needs root or CAP_NET_BIND_SERVICE",
    errno.EADDRNOTAVAIL: "no interface of this host has that address",
}


def serve_all(servers: Sequence[Server]) -> None:
    """Serve every server until interrupted (each in its own thread but the first)."""
    threads = [threading.Thread(target=s.serve_forever, name="listener", daemon=True) for s in servers[1:]]
    for t in threads:
        t.start()
    try:
        servers[0].serve_forever()
    finally:
        for s in servers[1:]:
            s.shutdown()
        for s in servers:
            s.server_close()


def serve(
    host: str,
    port: int,
    app: WSGIApplication,
    tls: Optional[RotatingTLS] = None,
    connections: Optional[Connections] = None,
    client_timeout: float = CLIENT_TIMEOUT,
) -> Server:
    """A bound, listening server; '' serves IPv4 and IPv6 on one socket, IPv4 alone only
    when this host has no IPv6. Errors are OSError."""

    def make(bind_host: str, family: socket.AddressFamily) -> Server:
        cls = type("Server", (Server,), {"address_family": family, "tls": tls, "connections": connections})
        server: Server = cls((bind_host, port), _handler(client_timeout))
        server.set_app(app)
        return server

    family = _family(host)
    if host != "" or family != socket.AF_INET6:
        return make(host or "0.0.0.0", family)
    try:
        return make("::", family)
    except OSError as e:
        if e.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
            raise
    return make("0.0.0.0", socket.AF_INET)
