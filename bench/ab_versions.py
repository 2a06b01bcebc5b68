#!/usr/bin/env python3
"""Two versions of the exporter side by side in the IPVS VM: OLD_SRC (the src/ of another
checkout, e.g. `git worktree add /tmp/old REV` with this checkout's compiled shim copied into
its package) and this checkout's installed one, each with the cache of compressed families
off and on, scraped in turn (gzip) on one namespace of N x 10:

    tests/vm/vm-run --memory 3G -- python bench/ab_versions.py 1000 /tmp/old/src
"""

import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as bench

ns = "abversions"
bench.delete_namespace(ns)
bench.run(["ip", "netns", "add", ns])
bench.run(["ip", "-n", ns, "link", "set", "lo", "up"])
bench.fill_namespace(ns, int(sys.argv[1]))
procs = []


def start(port, old, cache):
    env = dict(os.environ, INGRESS_IPVS_EXPORTER_CACHE_MB=cache)
    if old:
        env["PYTHONPATH"] = sys.argv[2]
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
for (v, c), port in ports.items():
    start(port, v == "old", c)
times = {k: [] for k in ports}
for _r in range(6):
    for k, port in ports.items():
        t = time.perf_counter()
        bench.scrape("127.0.0.1", port, True)
        times[k].append(time.perf_counter() - t)
for k, ts in times.items():
    print(k, f"median {statistics.median(ts[1:]):.3f} min {min(ts[1:]):.3f}", flush=True)
for p in procs:
    p.terminate()
bench.delete_namespace(ns)
