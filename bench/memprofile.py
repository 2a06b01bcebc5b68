"""Host-side memory and render profile of the exposition path, no VM needed.

Builds a synthetic N x 10 fwmark snapshot (the shape `make bench` creates in the kernel),
serves it through the exporter's real HTTP server and MetricsApp on loopback, scrapes it
with curl (a separate process, so the client's memory is not counted), and prints VmRSS
after every scrape; with --trace, tracemalloc's current/peak and the top allocation sites;
with --render, prometheus_client's reference rendering next to the fast renderer.

    .venv/bin/python bench/memprofile.py [--services 10000] [--scrapes 6] [--trace] [--render]

The figures in docs/performance.md ("Optimisations") came from this script.
"""

from __future__ import annotations

import argparse
import array
import gc
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from ipvs_testlib import make_snapshot

from ingress_ipvs_exporter import cli, memory
from ingress_ipvs_exporter.collector import IPVSCollector, Options, ipvs_families
from ingress_ipvs_exporter.exposition import FastRenderer, MetricsApp
from ingress_ipvs_exporter.ipvs import Destination, Service, Snapshot, Stats
from ingress_ipvs_exporter.portmap import PublishedPort

DESTS = 10


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
    s = make_snapshot(services)

    def mv(values, code):
        return memoryview(array.array(code, values).tobytes()).cast(code)

    snap = Snapshot(
        s.n_svc,
        s.n_dst,
        mv(s.svc_u32, "I"),
        mv(s.svc_stats, "Q"),
        s.svc_addr,
        s.svc_sched,
        mv(s.dst_u32, "I"),
        mv(s.dst_stats, "Q"),
        s.dst_addr,
    )
    return snap, {256 + i: [PublishedPort("tcp", 30000 + i)] for i in range(n)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--services", type=int, default=10000)
    ap.add_argument("--scrapes", type=int, default=6)
    ap.add_argument("--trace", action="store_true", help="tracemalloc figures (slows everything down)")
    ap.add_argument("--render", action="store_true", help="time the reference and the fast renderer")
    ap.add_argument("--no-tune", action="store_true", help="leave glibc malloc at its defaults")
    args = ap.parse_args()

    print(f"malloc tuned: {False if args.no_tune else memory.tune()}")
    print(f"start: {rss_mb():.1f} MB")
    snap, ports = synthetic(args.services)
    gc.collect()
    print(f"snapshot built ({snap.n_svc} services, {snap.n_dst} destinations): {rss_mb():.1f} MB")
    if args.render:
        from prometheus_client import CollectorRegistry, generate_latest

        class Fixed:
            def collect(self):
                return ipvs_families(snap, "ns", ports, Options())

        reg = CollectorRegistry(auto_describe=False)
        reg.register(Fixed())
        t = time.perf_counter()
        ref = generate_latest(reg)
        t_ref = time.perf_counter() - t
        r = FastRenderer()
        t = time.perf_counter()
        first = b"".join(r.chunks(snap, "ns", ports, Options()))
        t_first = time.perf_counter() - t
        t = time.perf_counter()
        b"".join(r.chunks(snap, "ns", ports, Options()))
        t_steady = time.perf_counter() - t
        print(
            f"render: {ref.count(bytes([10]))} lines; prometheus_client "
            f"{t_ref:.3f} s, fast {t_first:.3f} s (new shape), {t_steady:.3f} s (same shape); "
            f"identical: {first == ref}"
        )
        del ref, first, r, reg

    collector = IPVSCollector("ingress_sbox", lambda: snap, lambda marks: ports, Options())
    server = cli.serve("127.0.0.1", 0, cli.make_app(MetricsApp(collector), "/metrics"))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
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
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
