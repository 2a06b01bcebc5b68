"""Hostile HTTP clients over loopback: the installed exporter answers malformed requests and
very long URLs with an HTTP error (or just closes), and clients that stall mid-request,
trickle bytes, never send or never read do not hold up anyone else's scrape.

No kernel needed: on a host without IPVS (or with a namespace that does not exist) the
exporter serves ipvs_up 0, which is all an HTTP client sees of it here. Every socket has a
timeout and every loop a bound.
"""

from __future__ import annotations

import re
import socket
import threading
import time
import urllib.request
from contextlib import ExitStack
from urllib.parse import urlsplit

import pytest
from ipvs_testlib import running_exporter, scrape
from test_webconfig import cert, write_config  # noqa: F401 - cert is a fixture

NS = "/nonexistent/ns"
UP = ("ipvs_up", frozenset({("namespace", NS)}))


@pytest.fixture(scope="module")
def exporter():
    with running_exporter("--namespace-path", NS) as (url, proc):
        yield url, proc


def raw(url: str, data: bytes, timeout: float = 10.0) -> bytes:
    """Send bytes on a fresh connection and return everything until the server closes."""
    u = urlsplit(url)
    with socket.create_connection((u.hostname, u.port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def status_of(reply: bytes) -> int | None:
    """The status of a reply; None when the server closed without one. A request the
    server cannot parse is answered HTTP/0.9-style: the error page alone, no status line."""
    if m := re.match(rb"HTTP/1\.[01] (\d{3}) ", reply):
        return int(m.group(1))
    if m := re.search(rb"<p>Error code: (\d{3})</p>", reply):
        return int(m.group(1))
    assert reply == b"", reply[:300]
    return None


MALFORMED = {
    "binary garbage": (b"\x00\xff\xfe\x01 junk\r\n\r\n", 400),
    "method alone": (b"GET\r\n\r\n", 400),
    "empty request line": (b"\r\n\r\n", None),
    "unknown HTTP version": (b"GET /metrics HTTP/9.9\r\n\r\n", 505),
    "malformed version": (b"GET /metrics HTTP/1.x\r\n\r\n", 400),
    "four words": (b"GET /metrics HTTP/1.0 extra\r\n\r\n", 400),
    "101 headers": (
        b"GET /metrics HTTP/1.0\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(101)) + b"\r\n",
        431,
    ),
    "70 KB header line": (b"GET /metrics HTTP/1.0\r\nX: " + b"a" * 70_000 + b"\r\n\r\n", 431),
    "70 KB URL": (b"GET /" + b"a" * 70_000 + b" HTTP/1.0\r\n\r\n", 414),
    "1 MiB URL": (b"GET /metrics?" + b"a" * (1 << 20) + b" HTTP/1.0\r\n\r\n", 414),
    "60 KB path": (b"GET /" + b"a" * 60_000 + b" HTTP/1.0\r\n\r\n", 404),
    "60 KB query on the metrics path": (b"GET /metrics?" + b"a" * 60_000 + b" HTTP/1.0\r\n\r\n", 200),
    "escapes and dot-dot in the path": (b"GET /%00%ff/../../etc/passwd HTTP/1.0\r\n\r\n", 404),
    "absolute URI": (b"GET http://elsewhere/metrics HTTP/1.0\r\n\r\n", 404),
    "header without colon": (b"GET /metrics HTTP/1.0\r\nno colon here\r\n\r\n", 200),
    "non-ASCII header bytes": (b"GET /metrics HTTP/1.0\r\nX: \xff\xfe\x00\r\n\r\n", 200),
    "negative Content-Length": (b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n", 200),
    "GET, body shorter than its Content-Length": (
        b"GET /metrics HTTP/1.1\r\nContent-Length: 100000000\r\n\r\nabc",
        200,
    ),
    # only GET and HEAD are served (issue #13); the body is never read either way
    "POST, body shorter than its Content-Length": (
        b"POST /metrics HTTP/1.1\r\nContent-Length: 100000000\r\n\r\nabc",
        405,
    ),
}


@pytest.mark.parametrize("what", list(MALFORMED))
def test_malformed_request_gets_an_error_and_the_exporter_keeps_serving(exporter, what):
    url, proc = exporter
    data, want = MALFORMED[what]
    reply = raw(url, data)
    assert status_of(reply) == want, reply[:300]
    if want == 200:
        assert f'ipvs_up{{namespace="{NS}"}} 0.0'.encode() in reply
    assert scrape(url)[UP] == 0
    assert proc.poll() is None


def test_the_log_stays_quiet_about_bad_clients(exporter):
    url, proc = exporter
    for data, _ in MALFORMED.values():
        raw(url, data)
    time.sleep(0.2)
    with open(f"/tmp/exporter-{urlsplit(url).port}.log") as f:
        lines = f.read().splitlines()
    # the start line and the missing namespace, said once; nothing per request
    assert "Traceback" not in "\n".join(lines)
    assert len(lines) == 2, lines


def _hold(stack: ExitStack, url: str, first: bytes = b"") -> socket.socket:
    u = urlsplit(url)
    s = stack.enter_context(socket.create_connection((u.hostname, u.port), timeout=10))
    if first:
        s.sendall(first)
    return s


def test_stalled_trickling_and_non_reading_clients_do_not_block_scrapes(exporter):
    url, proc = exporter
    stop = threading.Event()
    with ExitStack() as stack:
        for _ in range(20):
            _hold(stack, url, b"GET /metr")  # half a request line, then nothing
        for _ in range(10):
            _hold(stack, url)  # connect, send nothing
        for _ in range(5):
            _hold(stack, url, b"GET /metrics HTTP/1.0\r\n\r\n")  # ask and never read
        trickle = [_hold(stack, url, b"GET /metrics HTTP/1.0\r\n") for _ in range(5)]

        def slowloris():  # one header byte per client every 0.2 s, at most 300 rounds
            for _ in range(300):
                if stop.wait(0.2):
                    return
                for s in trickle:
                    s.sendall(b"X")

        t = threading.Thread(target=slowloris, daemon=True)
        t.start()
        try:
            # 40 connections held open: each of these scrapes must still be served
            for _ in range(20):
                with urllib.request.urlopen(url, timeout=10) as r:
                    assert r.status == 200 and f'ipvs_up{{namespace="{NS}"}} 0.0' in r.read().decode()
        finally:
            stop.set()
            t.join(10)
    assert scrape(url)[UP] == 0
    assert proc.poll() is None


def test_a_stalled_tls_handshake_does_not_block_tls_scrapes(cert):  # noqa: F811 - the fixture
    import ssl

    config = write_config(cert, tls=True)
    ctx = ssl.create_default_context(cafile=str(cert / "cert.pem"))
    with running_exporter("--namespace-path", NS, "--web.config.file", config, probe=False) as (url, proc):
        https = url.replace("http://", "https://")
        with ExitStack() as stack:
            for _ in range(10):
                _hold(stack, url)  # TCP open, no ClientHello
            for _ in range(5):
                _hold(stack, url, b"\x16\x03\x01\x00")  # the first bytes of a TLS record, then nothing
            for _ in range(5):
                with urllib.request.urlopen(https, timeout=10, context=ctx) as r:
                    assert r.status == 200 and "ipvs_up" in r.read().decode()
        assert proc.poll() is None
