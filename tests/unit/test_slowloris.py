"""A slowloris run next to a scraping client, over loopback: up to 200 connections that send
their request a byte at a time, or go silent until the server drops them, or give up half
way, reopened as they close; meanwhile a client scrapes once a second. Every scrape must be
answered, and the exporter's stderr (at debug level, where every dropped client is a line)
must hold no traceback and only logfmt lines.

`make test` runs it for SLOWLORIS_SECONDS (default 20); `make slowloris` for 10 minutes
(docs/reliability.md has the last run). Every loop is bounded by the duration."""

from __future__ import annotations

import os
import random
import socket
import time
import urllib.request

from ipvs_testlib import exporter_log, running_exporter
from test_http_hardening import LOGFMT

SECONDS = float(os.environ.get("SLOWLORIS_SECONDS", "20"))
CONNECTIONS = 200
REQUEST = b"GET /metrics HTTP/1.1\r\nHost: x\r\nUser-Agent: slow\r\nX-Pad: " + b"a" * 64 + b"\r\n\r\n"


def test_slowloris_next_to_a_scraper(monkeypatch):
    monkeypatch.setenv("INGRESS_IPVS_EXPORTER_HTTP_TIMEOUT", "3")  # idle ones dropped often
    rnd = random.Random(1)
    with running_exporter("--namespace-path", "/nonexistent/ns", "--log-level", "debug") as (url, _):
        port = int(url.split(":")[2].split("/")[0])
        slow: list[tuple[socket.socket, int, str]] = []  # (socket, bytes sent, behaviour)
        opened = scrapes = 0
        latencies = []
        end = time.monotonic() + SECONDS
        next_scrape = time.monotonic()
        while time.monotonic() < end:
            while len(slow) < CONNECTIONS:
                s = socket.socket()
                s.settimeout(2)
                try:
                    s.connect(("127.0.0.1", port))
                except OSError:
                    s.close()
                    break
                s.setblocking(False)
                slow.append((s, 0, rnd.choice(("trickle", "trickle", "silent", "quit"))))
                opened += 1
            kept = []
            for s, sent, how in slow:
                try:
                    if how == "silent":
                        if s.recv(1) == b"":  # the server dropped it (timeout): open another
                            raise ConnectionError
                        kept.append((s, sent, how))
                        continue
                    if how == "quit" and sent > 20:
                        raise ConnectionError  # give up half way
                    s.send(REQUEST[sent : sent + 1])
                    sent += 1
                    if sent >= len(REQUEST):
                        raise ConnectionError  # a whole request trickled in: start over
                    kept.append((s, sent, how))
                except BlockingIOError:
                    kept.append((s, sent, how))
                except OSError:
                    s.close()
            slow = kept
            if time.monotonic() >= next_scrape:
                t0 = time.monotonic()
                body = urllib.request.urlopen(url, timeout=30).read().decode()
                latencies.append(time.monotonic() - t0)
                assert "ipvs_up" in body
                scrapes += 1
                next_scrape = t0 + 1
            time.sleep(0.05)
        for s, _, _ in slow:
            s.close()
    text = open(exporter_log(url), encoding="utf-8", errors="replace").read()
    assert "Traceback" not in text, text[-5000:]
    bad = [line for line in text.splitlines() if not LOGFMT.fullmatch(line)]
    assert not bad, bad[:5]
    assert scrapes >= SECONDS * 0.5, (scrapes, SECONDS)
    print(
        f"slowloris: {SECONDS:g} s, {opened} connections opened (at most {CONNECTIONS} at once), "
        f"{scrapes} scrapes all answered, slowest {max(latencies):.3f} s, "
        f"{len(text.splitlines())} log lines, 0 tracebacks"
    )
