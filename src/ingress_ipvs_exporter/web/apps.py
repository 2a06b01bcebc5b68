"""The WSGI apps in front of the telemetry: the router (landing page, the telemetry
path, methods, HEAD), content negotiation, basic auth, response headers and the in-flight
request bound. server.py serves them."""

from __future__ import annotations

import base64
import binascii
import hashlib
import html
import logging
import os
import re
import threading
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Optional, Protocol

import bcrypt

from .. import __version__
from ..logs import PROG

if TYPE_CHECKING:
    from types import TracebackType
    from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

    ExcInfo = tuple[type[BaseException], BaseException, TracebackType]

log = logging.getLogger(__name__)

TEXT = "text/plain; charset=utf-8"
ALLOWED_METHODS = ("GET", "HEAD")


class Telemetry(Protocol):
    def stream(
        self, accept: str, gzip: bool, scrape_timeout: Optional[float] = None
    ) -> tuple[Iterator[bytes], str]: ...


def _reply(start_response: StartResponse, status: str, body: str, *headers: tuple[str, str]) -> list[bytes]:
    start_response(status, [("Content-Type", TEXT), *headers])
    return [body.encode()]


# ---- content negotiation ---------------------------------------------------------------

_QVALUE = re.compile(r"(?:0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?)")


def gzip_acceptable(header: str) -> bool:
    """Accept-Encoding (RFC 9110 12.5.3): a comma list of codings, case-insensitive, each
    with an optional q; q=0 refuses. An explicit gzip (or x-gzip) wins over '*'."""
    explicit: Optional[float] = None
    wildcard: Optional[float] = None
    for item in header.split(","):
        coding, *params = (part.strip() for part in item.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                value = value.strip()
                q = float(value) if _QVALUE.fullmatch(value) else 0.0  # a malformed q refuses
        coding = coding.lower()
        if coding in ("gzip", "x-gzip"):
            explicit = q if explicit is None else max(explicit, q)
        elif coding == "*":
            wildcard = q
    chosen = explicit if explicit is not None else wildcard
    return chosen is not None and chosen > 0


# ---- the apps --------------------------------------------------------------------------


SCRAPE_TIMEOUT_HEADER = "X-Prometheus-Scrape-Timeout-Seconds"
_SCRAPE_TIMEOUT_ENVIRON = "HTTP_" + SCRAPE_TIMEOUT_HEADER.upper().replace("-", "_")  # as WSGI names it
# a plain decimal number: no sign, exponent, inf or nan (flags.env_number reads these too)
DECIMAL = re.compile(r"[0-9]{1,9}(?:\.[0-9]{1,9})?")


def scrape_timeout(value: Optional[str]) -> Optional[float]:
    """The seconds of an X-Prometheus-Scrape-Timeout-Seconds header (Prometheus sends its
    scrape_timeout, e.g. "10" or "2.5"); None without one. ValueError unless it is a plain
    decimal number above 0 (no sign, exponent, inf or nan)."""
    if value is None:
        return None
    value = value.strip()
    if not DECIMAL.fullmatch(value) or float(value) <= 0:
        raise ValueError(f"{SCRAPE_TIMEOUT_HEADER} {value[:40]!r} is not a number of seconds above 0")
    return float(value)


def landing_page(telemetry_path: str) -> bytes:
    """What exporter-toolkit's landing page shows: the name, what it is, the version, a link
    to the metrics (no documentation link: the README's relative links would break here)."""

    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>'
        f"{PROG}</title></head><body><h1>{PROG}</h1>"
        "<p>Prometheus exporter for IPVS, read over generic netlink inside a network namespace</p>"
        f'<ul><li><a href="{html.escape(telemetry_path)}">Metrics</a></li></ul>'
        f"<p>Flags: <code>{PROG} --help</code></p>"
        f"<p>Version {html.escape(__version__)}</p></body></html>\n"
    ).encode()


def make_router(metrics: Telemetry, telemetry_path: str) -> WSGIApplication:
    """The telemetry at telemetry_path, a small landing page at /, 404 elsewhere; GET and HEAD
    only (405 with Allow otherwise). HEAD answers GET's status and headers without running
    the scrape (so no Content-Length: the GET body is streamed without one)."""
    landing = landing_page(telemetry_path)

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        if method not in ALLOWED_METHODS:
            allow = ("Allow", ", ".join(ALLOWED_METHODS))
            return _reply(start_response, "405 Method Not Allowed", "405: use GET or HEAD\n", allow)
        path = environ.get("PATH_INFO") or "/"
        if path == telemetry_path:
            try:
                timeout = scrape_timeout(environ.get(_SCRAPE_TIMEOUT_ENVIRON))
            except ValueError as e:
                log.debug("%s %s: %s", method, path, e)
                return _reply(start_response, "400 Bad Request", f"400: {e}\n")
            gzip = gzip_acceptable(environ.get("HTTP_ACCEPT_ENCODING", ""))
            chunks, content_type = metrics.stream(environ.get("HTTP_ACCEPT", ""), gzip, timeout)
            headers = [("Content-Type", content_type)]
            if gzip:
                headers.append(("Content-Encoding", "gzip"))
            start_response("200 OK", headers)
            if method == "HEAD":
                getattr(chunks, "close", lambda: None)()  # not started: nothing was read
                return []
            return chunks
        if path == "/":
            start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
            return [landing]
        return _reply(start_response, "404 Not Found", f"404: try {telemetry_path}\n")

    return app


class _Closing:
    """A response body that runs `release` when the server closes it (after the last byte
    or on a failure); it keeps the body's length visible so wsgiref still sets Content-Length."""

    def __init__(self, body: Iterable[bytes], release: Any):
        self.body, self.release = body, release

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.body)

    def __len__(self) -> int:
        return len(self.body)  # type: ignore[arg-type]  # TypeError for a stream: wsgiref expects it

    def close(self) -> None:
        try:
            getattr(self.body, "close", lambda: None)()
        finally:
            self.release()


def limit_requests(app: WSGIApplication, max_requests: int) -> WSGIApplication:
    """At most max_requests responses in progress (node_exporter's --web.max-requests);
    beyond that 503 at once rather than a queue that grows with every retry."""
    if max_requests <= 0:
        return app
    slots = threading.BoundedSemaphore(max_requests)

    def limited(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if not slots.acquire(blocking=False):
            return _reply(start_response, "503 Service Unavailable", "503: too many concurrent requests\n")
        try:
            return _Closing(app(environ, start_response), slots.release)
        except BaseException:
            slots.release()
            raise

    return limited


def add_headers(app: WSGIApplication, headers: list[tuple[str, str]]) -> WSGIApplication:
    """http_server_config.headers on every response the apps make."""
    if not headers:
        return app

    def with_headers(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        def start(status: str, response_headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            return start_response(status, response_headers + headers, exc_info)

        return app(environ, start)

    return with_headers


class BasicAuth:
    """WSGI middleware: 401 unless the request carries a user and password from the file.

    bcrypt is slow by design. A verified pair is remembered (as a salted digest) and checked
    without bcrypt, so a scraper with good credentials never waits behind the bcrypt queue;
    at most BCRYPT_PARALLEL checks run at once, so a wrong-password flood cannot take every
    CPU. An unknown user is checked against a dummy hash of the same cost, so the answer
    takes as long as for a known one (no user enumeration by timing)."""

    BCRYPT_PARALLEL = 1
    QUEUE_TIMEOUT = 30.0  # seconds a check may wait for bcrypt before the answer is 503

    def __init__(self, app: WSGIApplication, users: dict[str, bytes]):
        self.app = app
        self.users = users
        self._ok: set[bytes] = set()
        self._salt = os.urandom(16)
        self._lock = threading.Lock()
        self._bcrypt = threading.BoundedSemaphore(self.BCRYPT_PARALLEL)
        cost = max(int(h[4:6]) for h in users.values())
        # a salt of that cost and a hash part nothing can match: checkpw costs the same
        self._dummy = bcrypt.gensalt(rounds=cost) + b"." * 31

    def _credentials(self, header: str) -> Optional[tuple[str, bytes]]:
        if header[:6].lower() != "basic ":  # the scheme is case-insensitive (RFC 7617, as in Go)
            return None
        try:
            user, sep, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return (user, password.encode()) if sep else None

    def _allowed(self, user: str, password: bytes) -> Optional[bool]:
        """True/False, or None when bcrypt stayed busy past QUEUE_TIMEOUT."""
        hashed = self.users.get(user)
        token = hashlib.sha256(
            self._salt + user.encode() + b"\0" + password + b"\0" + (hashed or b"")
        ).digest()
        if hashed is not None:
            with self._lock:
                if token in self._ok:
                    return True
        if not self._bcrypt.acquire(timeout=self.QUEUE_TIMEOUT):
            return None
        try:
            # bcrypt reads at most 72 bytes and refuses more: such a password cannot match
            ok = bcrypt.checkpw(password[:72], hashed or self._dummy)
        except ValueError:
            ok = False
        finally:
            self._bcrypt.release()
        if not ok or hashed is None or len(password) > 72:
            return False
        with self._lock:
            self._ok.add(token)
        return True

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        creds = self._credentials(environ.get("HTTP_AUTHORIZATION", ""))
        allowed = self._allowed(*creds) if creds else False
        if allowed:
            return self.app(environ, start_response)
        if allowed is None:
            return _reply(start_response, "503 Service Unavailable", "503: busy checking passwords\n")
        challenge = ("WWW-Authenticate", f'Basic realm="{PROG}"')
        return _reply(start_response, "401 Unauthorized", "401 Unauthorized\n", challenge)


def build_app(
    metrics: Telemetry,
    telemetry_path: str,
    users: dict[str, bytes],
    headers: list[tuple[str, str]],
    max_requests: int,
) -> WSGIApplication:
    """headers( auth( limit( router ))): unauthenticated requests take no request slot."""
    app = limit_requests(make_router(metrics, telemetry_path), max_requests)
    if users:
        app = BasicAuth(app, users)
    return add_headers(app, headers)
