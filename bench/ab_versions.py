#!/usr/bin/env python3
"""Two versions of the exporter side by side in the IPVS VM: OLD_SRC (another version
installed with its own compiled shim into a directory of its own: `git worktree add /tmp/old
REV && .venv/bin/pip install --no-deps --target /tmp/oldpkg /tmp/old`) and this checkout's
installed one, each with the cache of
compressed text off and on, scraped in turn (gzip) on one namespace of N x 10; with --live
PCT, one round of the live rows' traffic (bench/run.py: one SYN to each of PCT% of the
services, then the estimator's wait) before every turn, and the cache on only. Each row:
median and minimum seconds of a scrape, and the exporter's CPU seconds per scrape:

    tests/vm/vm-run --memory 3G -- python bench/ab_versions.py 1000 /tmp/oldpkg [--live 10]
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as bench

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("services", type=int)
ap.add_argument("old_src")
ap.add_argument("--live", type=int, help="percent of the services whose counters move before every turn")
ap.add_argument("--turns", type=int, default=6, help="scrapes of each exporter (the first one untimed)")
args = ap.parse_args()
ns = "abversions"
bench.delete_namespace(ns)
bench.delete_namespace(f"{ns}c")
bench.run(["ip", "netns", "add", ns])
bench.run(["ip", "-n", ns, "link", "set", "lo", "up"])
bench.fill_namespace(ns, args.services)
traffic = bench.Traffic(bench.add_client(ns, args.services), args.services, args.live) if args.live else None
procs = []


def start(port, old, cache):
    env = dict(os.environ, INGRESS_IPVS_EXPORTER_CACHE_MB=cache)
    if old:
        env["PYTHONPATH"] = args.old_src
        cmd = [sys.executable, "-m", "ingress_ipvs_exporter.cli"]
    else:
        cmd = [os.path.join(os.path.dirname(sys.executable), "ingress_ipvs_exporter")]
    p = subprocess.Popen(
        cmd + ["--listen-address", f"127.0.0.1:{port}", "--namespace-path", f"/run/netns/{ns}"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    procs.append(p)
    bench.wait_http("127.0.0.1", port, 300, p)


ports = {("old", "0"): 19401, ("new", "0"): 19402, ("old", "8"): 19403, ("new", "8"): 19404}
if traffic:
    ports = {k: p for k, p in ports.items() if k[1] != "0"}
for (v, c), port in ports.items():
    start(port, v == "old", c)
if traffic:
    print(f"live: {bench.check_moving(ns, traffic)} services' counters move before every turn", flush=True)
times = {k: [] for k in ports}
pids = dict(zip(ports, (p.pid for p in procs)))
cpu0 = {}
for r in range(args.turns):
    for k, port in ports.items():
        if traffic:
            traffic()
        t = time.perf_counter()
        bench.scrape("127.0.0.1", port, True)
        times[k].append(time.perf_counter() - t)
    if r == 0:  # CPU from after the untimed first turn
        cpu0 = {k: bench.cpu_seconds(pid) for k, pid in pids.items()}
cpu = {k: (bench.cpu_seconds(pid) - cpu0[k]) / (args.turns - 1) for k, pid in pids.items()}
dump = bench.bench_shim(ns, args.services, argparse.Namespace(runs=3, reduced_runs=3, budget_s=1e9), traffic)
for k, ts in times.items():
    print(
        k, f"median {statistics.median(ts[1:]):.3f} min {min(ts[1:]):.3f} cpu/scrape {cpu[k]:.3f}", flush=True
    )
print(
    f"bare dump: median {dump.get('median_s', 0):.3f} min {dump.get('min_s', 0):.3f} {dump['status']}",
    flush=True,
)
for p in procs:
    p.terminate()
bench.delete_namespace(ns)
bench.delete_namespace(f"{ns}c")
