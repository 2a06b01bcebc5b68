"""A slowloris run next to a scraping client, over loopback: up to 200 connections that send
a never-ending header a byte at a time, or a whole request a byte at a time and leave without
reading the answer, or go silent until the server drops them, or give up half way, reopened
as they close; meanwhile a client scrapes once a second. Every scrape must be
answered, and the exporter's stderr (at debug level, where every dropped client is a line)
must hold no traceback and only logfmt lines.

`make test` runs it for SLOWLORIS_SECONDS (default 20); `make slowloris` for 10 minutes
(docs/history/2026-12-04-reliability-log.md has recorded runs). SLOWLORIS_CONNECTIONS (default 200) sets how many
are held at once, SLOWLORIS_NOFILE (default: none) runs the exporter under that descriptor
limit, SLOWLORIS_HTTP_TIMEOUT (default 3) is its client timeout: 1100 connections against a
limit of 1024 and the default 60 s is the descriptor-exhaustion attack, which the connection
bound turns into closed slow connections. Every loop is bounded by the duration."""

from __future__ import annotations

import os
import random
import re
import resource
import socket
import time
import urllib.request

from ipvs_testlib import LOGFMT, exporter_log, running_exporter

SECONDS = float(os.environ.get("SLOWLORIS_SECONDS", "20"))
CONNECTIONS = int(os.environ.get("SLOWLORIS_CONNECTIONS", "200"))
NOFILE = os.environ.get("SLOWLORIS_NOFILE", "")
HTTP_TIMEOUT = os.environ.get("SLOWLORIS_HTTP_TIMEOUT", "3")
ERRORS = re.compile(r'^ipvs_scrape_errors_total\{[^}]*reason="([^"]+)"', re.M)
HEAD = b"GET /metrics HTTP/1.1\r\nHost: x\r\nUser-Agent: slow\r\nX-Pad: "
ENDLESS = HEAD + b"a" * 60000  # under the 64 KiB line limit; more than a 10-minute run sends


def request(rnd: random.Random, how: str) -> bytes:
    """What a connection trickles in. Whole requests get a pad of random length so that they
    complete spread out: the ones opened together would otherwise all arrive in the same
    instant, a burst of complete requests beyond --web.max-requests (40) that is answered 503
    by design and is not what this test is about."""
    if how == "whole":
        return HEAD + b"a" * rnd.randrange(200) + b"\r\n\r\n"
    return ENDLESS


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def test_slowloris_next_to_a_scraper(monkeypatch):
    monkeypatch.setenv("INGRESS_IPVS_EXPORTER_HTTP_TIMEOUT", HTTP_TIMEOUT)  # 3: idle ones dropped often
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < CONNECTIONS + 100:  # this process holds them all (raised within its hard limit)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, CONNECTIONS + 1000), hard))
    prefix = ("prlimit", f"--nofile={NOFILE}") if NOFILE else ()
    rnd = random.Random(1)
    with running_exporter("--namespace-path", "/nonexistent/ns", "--log-level", "debug", prefix=prefix) as (
        url,
        proc,
    ):
        port = int(url.split(":")[2].split("/")[0])
        cpu_start, most_fds, reasons = _cpu_seconds(proc.pid), 0, set()
        slow: list[tuple[socket.socket, int, str, bytes]] = []  # (socket, bytes sent, behaviour, request)
        opened = scrapes = wholes = 0
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
                how = rnd.choice(("trickle", "whole", "silent", "quit"))
                slow.append((s, 0, how, request(rnd, how)))
                opened += 1
            kept = []
            for s, sent, how, data in slow:
                try:
                    if how == "silent":
                        if s.recv(1) == b"":  # the server dropped it (timeout): open another
                            raise ConnectionError
                        kept.append((s, sent, how, data))
                        continue
                    if how == "quit" and sent > 20:
                        raise ConnectionError  # give up half way
                    # a whole request 8 bytes a tick: within the client timeout, which bounds
                    # the whole request line and headers (the never-ending one is cut by it)
                    step = 8 if how == "whole" else 1
                    sent += s.send(data[sent : sent + step])
                    if sent >= len(data):
                        wholes += 1
                        raise ConnectionError  # a whole request trickled in: leave, start over
                    kept.append((s, sent, how, data))
                except BlockingIOError:
                    kept.append((s, sent, how, data))
                except OSError:
                    s.close()
            slow = kept
            if time.monotonic() >= next_scrape:
                t0 = time.monotonic()
                body = urllib.request.urlopen(url, timeout=30).read().decode()
                latencies.append(time.monotonic() - t0)
                assert "ipvs_up" in body
                reasons.update(ERRORS.findall(body))
                most_fds = max(most_fds, len(os.listdir(f"/proc/{proc.pid}/fd")))
                scrapes += 1
                next_scrape = t0 + 1
            time.sleep(0.05)
        for s, *_ in slow:
            s.close()
        cpu = _cpu_seconds(proc.pid) - cpu_start
    text = open(exporter_log(url), encoding="utf-8", errors="replace").read()
    assert "Traceback" not in text, text[-5000:]
    bad = [line for line in text.splitlines() if not LOGFMT.fullmatch(line)]
    assert not bad, bad[:5]
    assert scrapes >= SECONDS * 0.5, (scrapes, SECONDS)
    assert wholes > 0, "no whole request was trickled in"
    assert reasons <= {"namespace_missing"}, reasons  # no false error (e.g. out of descriptors)
    print(
        f"slowloris: {SECONDS:g} s, {opened} connections opened (at most {CONNECTIONS} at once), "
        f"{wholes} whole requests trickled in, {scrapes} scrapes all answered, slowest {max(latencies):.3f} s, "
        f"{len(text.splitlines())} log lines, 0 tracebacks; exporter: descriptor limit {NOFILE or 'unchanged'}, "
        f"at most {most_fds} open, {cpu:.1f} s of CPU, scrape error reasons {sorted(reasons)}"
    )
