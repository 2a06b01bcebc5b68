"""Host-side memory and render profile of the exposition path, no VM needed.

Builds a synthetic N x 10 fwmark snapshot (the shape `make bench` creates in the kernel),
serves it through the exporter's real HTTP server and MetricsApp on loopback, scrapes it
with curl (a separate process, so the client's memory is not counted), and prints VmRSS
after every scrape; with --trace, tracemalloc's current/peak and the top allocation sites;
with --render, prometheus_client's reference rendering next to the fast renderer.

    .venv/bin/python bench/memprofile.py [--services 10000] [--scrapes 6] [--trace] [--render] [--live PCT]

With --live PCT, every scrape reads a snapshot in which PCT% of the services and one real
server of each saw a new connection since the last (what the live rows of `make bench` do).

The figures in docs/performance.md ("Optimisations") came from this script.
"""

from __future__ import annotations

import argparse
import gc
import random
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
from array import array
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from reference import render as reference_render

from ingress_ipvs_exporter import memory, testing
from ingress_ipvs_exporter.collector import NamespaceReader
from ingress_ipvs_exporter.ipvs import Snapshot
from ingress_ipvs_exporter.render.exposition import MetricsApp, Renderer, View
from ingress_ipvs_exporter.render.metrics import Options
from ingress_ipvs_exporter.swarm.marks import PublishedPort
from ingress_ipvs_exporter.testing import Destination, Service, Stats
from ingress_ipvs_exporter.web import apps, server

DESTS = 10
# what one SYN moves: connections, packets and bytes in, and the estimator's rates of those
MOVED = {0: 1, 1: 1, 3: 60, 5: 1, 6: 1, 8: 30}  # stats column: increment
NSTATS = 10


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def synthetic(n: int) -> tuple[Snapshot, dict]:
    """n fwmark services x DESTS destinations, columns as memoryviews like the shim's."""
    services = []
    for i in range(n):
        dests = tuple(
            Destination(
                socket.AF_INET,
                f"198.18.{i >> 8 & 255}.{(i & 255) * DESTS % 250 + j}",
                0,
                0,
                1,
                0,
                0,
                j,
                j,
                0,
                Stats(*(i * 7 + j * k for k in range(10))),
            )
            for j in range(DESTS)
        )
        services.append(
            Service(
                socket.AF_INET,
                0,
                "",
                0,
                256 + i,
                "rr",
                0,
                0,
                0xFFFFFFFF,
                Stats(*(i * 13 + k for k in range(10))),
                dests,
            )
        )
    snap = testing.build_snapshot(services)
    return snap, {256 + i: [PublishedPort("tcp", 30000 + i)] for i in range(n)}


def moved(snap: Snapshot, services: list[int], rnd: random.Random) -> Snapshot:
    """snap with one more connection on each of `services` and on one real server of each."""
    s, d = snap.services, snap.dests
    (s_u32, s_stats), (d_u32, d_stats) = testing.blocks(s), testing.blocks(d)
    sst, dst = array("Q", s_stats), array("Q", d_stats)
    for i in services:
        j = i * DESTS + rnd.randrange(DESTS)
        for stats, row in ((sst, i), (dst, j)):
            for col, add in MOVED.items():
                stats[row * NSTATS + col] += add
    return Snapshot(
        type(s)(s.count, s_u32, sst.tobytes(), s._addr, s._sched),
        type(d)(d.count, d_u32, dst.tobytes(), d._addr),
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--services", type=int, default=10000)
    ap.add_argument("--scrapes", type=int, default=6)
    ap.add_argument("--trace", action="store_true", help="tracemalloc figures (slows everything down)")
    ap.add_argument("--render", action="store_true", help="time the reference and the fast renderer")
    ap.add_argument("--no-tune", action="store_true", help="leave glibc malloc at its defaults")
    ap.add_argument(
        "--live", type=int, metavar="PCT", help="percent of the services moving before every scrape"
    )
    args = ap.parse_args()

    print(f"malloc tuned: {False if args.no_tune else memory.tune()}")
    print(f"start: {rss_mb():.1f} MB")
    snap, ports = synthetic(args.services)
    gc.collect()
    print(f"snapshot built ({snap.n_svc} services, {snap.n_dst} destinations): {rss_mb():.1f} MB")
    if args.render:
        t = time.perf_counter()
        ref = reference_render(snap, "ns", ports, Options()).encode()
        t_ref = time.perf_counter() - t
        r = Renderer()
        t = time.perf_counter()
        first = b"".join(r.chunks([View("ns", snap, ports)], Options()))
        t_first = time.perf_counter() - t
        t = time.perf_counter()
        b"".join(r.chunks([View("ns", snap, ports)], Options()))
        t_steady = time.perf_counter() - t
        print(
            f"render: {ref.count(bytes([10]))} lines; prometheus_client "
            f"{t_ref:.3f} s, fast {t_first:.3f} s (new shape), {t_steady:.3f} s (same shape); "
            f"identical: {first == ref}"
        )
        del ref, first, r

    read = lambda: snap  # noqa: E731
    if args.live:
        rnd = random.Random(args.live)
        chosen = sorted(rnd.sample(range(args.services), args.services * args.live // 100))
        last = [snap]

        def read() -> Snapshot:
            last[0] = moved(last[0], chosen, rnd)
            return last[0]

    collector = NamespaceReader("ingress_sbox", read, lambda marks: ports, Options())
    httpd = server.serve(
        "127.0.0.1",
        0,
        apps.build_app(MetricsApp(collector, after_scrape=memory.release), "/metrics", {}, [], 0),
    )
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/metrics"
    if args.trace:
        tracemalloc.start(5)
    for k in range(args.scrapes):
        gz = k % 2 == 0
        if args.trace:
            tracemalloc.reset_peak()
        t = time.perf_counter()
        size = subprocess.run(
            ["curl", "-sS", "-o", "/dev/null", "-w", "%{size_download}"]
            + (["-H", "Accept-Encoding: gzip"] if gz else [])
            + [url],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        line = (
            f"scrape {k} ({'gzip' if gz else 'plain'}): {int(size)} bytes, {time.perf_counter() - t:.2f} s, "
            f"RSS {rss_mb():.1f} MB"
        )
        if args.trace:
            cur, peak = tracemalloc.get_traced_memory()
            line += f", traced {cur / 1e6:.1f} MB live, {peak / 1e6:.1f} MB peak"
        print(line)
    if args.trace:
        for stat in tracemalloc.take_snapshot().statistics("lineno")[:12]:
            print(f"  {stat}")
    httpd.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
