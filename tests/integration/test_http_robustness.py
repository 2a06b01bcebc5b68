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
from ipvs_testlib import running_exporter, scrape, write_config

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


def test_a_stalled_tls_handshake_does_not_block_tls_scrapes(cert):
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


# ---- the whole-request deadline and the connection bound -------------------------------------


def _closed_yet(s: socket.socket) -> bool:
    """Send one more byte; True when the server has closed the connection."""
    try:
        s.sendall(b"a")
        s.setblocking(False)
        try:
            return s.recv(1) == b""
        finally:
            s.setblocking(True)
    except BlockingIOError:
        return False
    except OSError:
        return True  # a reset after its close


def test_a_request_trickled_a_byte_at_a_time_is_dropped_at_the_client_timeout(monkeypatch):
    """The client timeout (1 s here) bounds the whole request line and headers, not each
    read: a header byte every 0.2 s for up to 20 s is cut off well before the end."""
    monkeypatch.setenv("INGRESS_IPVS_EXPORTER_HTTP_TIMEOUT", "1")
    with running_exporter("--namespace-path", NS) as (url, proc):
        u = urlsplit(url)
        with socket.create_connection((u.hostname, u.port), timeout=10) as s:
            s.sendall(b"GET /metrics HTTP/1.0\r\nX-Slow: ")
            sent = 0
            while sent < 100 and not _closed_yet(s):
                time.sleep(0.2)
                sent += 1
        assert sent < 100, "the server waited for the whole trickle"
        assert scrape(url)[UP] == 0 and proc.poll() is None


def _open_fds(pid: int) -> int:
    import os

    return len(os.listdir(f"/proc/{pid}/fd"))


def test_more_slow_connections_than_descriptors_while_a_scraper_is_answered():
    """RLIMIT_NOFILE 128 for the exporter, 300 connections trickling a never-ending header
    (reopened when the exporter closes them): the connection bound (the default 512,
    lowered to half of 128) keeps the exporter from running out of descriptors, the oldest
    slow ones make room, and every scrape is answered within a 3 s client timeout."""
    held = 300
    prefix = ("prlimit", "--nofile=128")
    with running_exporter("--namespace-path", NS, prefix=prefix) as (url, proc):
        u = urlsplit(url)
        slow: list[socket.socket] = []

        def fill() -> None:  # back up to `held` open slow connections, each a byte further
            for s in list(slow):
                try:
                    s.sendall(b"a")
                except OSError:
                    slow.remove(s)
                    s.close()
            while len(slow) < held:
                s = socket.create_connection((u.hostname, u.port), timeout=10)
                s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                slow.append(s)

        try:
            most = 0
            for _ in range(10):
                fill()
                with urllib.request.urlopen(url, timeout=3) as r:
                    assert r.status == 200 and f'ipvs_up{{namespace="{NS}"}} 0.0' in r.read().decode()
                most = max(most, _open_fds(proc.pid))
            assert most < 128, most
            assert proc.poll() is None
        finally:
            for s in slow:
                s.close()
    with open(f"/tmp/exporter-{u.port}.log") as f:
        log = f.read()
    assert "Traceback" not in log and "level=error" not in log, log
    assert "--web.max-connections 512 lowered to 64" in log, log
    assert log.count("connections open (--web.max-connections)") == 1, log  # rate-limited


class _Clock:
    def __init__(self) -> None:
        self.now, self.slept = 0.0, []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def _closed_by_server(peer: socket.socket) -> bool:
    peer.settimeout(5)
    try:
        return peer.recv(1) == b""
    except OSError:
        return True


def test_the_bound_closes_the_oldest_connection_still_sending_its_request(caplog):
    from ingress_ipvs_exporter.web.server import Connections

    clock = _Clock()
    conns = Connections(3, clock=clock, sleep=clock.sleep)
    pairs = [socket.socketpair() for _ in range(6)]
    try:
        ours = [a for a, _ in pairs]
        assert all(conns.add(s) for s in ours[:3])
        conns.answering(ours[0])  # a response in progress: never closed to make room
        assert conns.add(ours[3]) and _closed_by_server(pairs[1][1])  # the oldest still reading
        clock.now += 30
        assert conns.add(ours[4]) and _closed_by_server(pairs[2][1])
        assert len(conns) == 3
        for s in ours[3:5]:
            conns.answering(s)
        clock.now += 30
        assert not conns.add(ours[5])  # every one is being answered: the new one is refused
        conns.remove(ours[0])
        assert conns.add(ours[5])
    finally:
        for a, b in pairs:
            a.close()
            b.close()
    said = [r for r in caplog.records if "--web.max-connections" in r.getMessage()]
    assert len(said) == 2, [r.getMessage() for r in said]  # at t=0 and t=60, not at t=30
    assert "refusing new ones" in said[1].getMessage()


def test_out_of_descriptors_makes_room_backs_off_and_warns_once_a_minute(caplog):
    import errno

    from ingress_ipvs_exporter.web.server import Connections

    clock = _Clock()
    conns = Connections(0, clock=clock, sleep=clock.sleep)  # no bound: only EMFILE limits
    pairs = [socket.socketpair() for _ in range(2)]
    emfile = OSError(errno.EMFILE, "Too many open files")
    try:
        for a, _ in pairs:
            assert conns.add(a)
        conns.out_of_descriptors(emfile)
        assert _closed_by_server(pairs[0][1]) and len(conns) == 1
        for _ in range(10):
            conns.out_of_descriptors(emfile)
        assert clock.slept[:4] == [0.01, 0.02, 0.04, 0.08] and clock.slept[-1] == 1.0
        conns.accepted()
        clock.now += 60
        conns.out_of_descriptors(emfile)
        assert clock.slept[-1] == 0.01
    finally:
        for a, b in pairs:
            a.close()
            b.close()
    said = [r for r in caplog.records if "cannot accept connections" in r.getMessage()]
    assert len(said) == 2, [r.getMessage() for r in said]  # the first, then a minute later
    assert "Too many open files" in said[0].getMessage()
