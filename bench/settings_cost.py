"""What reading a namespace's IPVS settings costs a scrape: Handle.settings() (GET_CONFIG,
GET_DAEMON and the sysctl files read inside the namespace, one shim call) timed in fresh
namespaces, as root in the IPVS VM. Prints one line per namespace count and writes build/vm/bench/settings-cost.json.

    tests/vm/vm-run -- python bench/settings_cost.py [ROUNDS]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

from ingress_ipvs_exporter.ipvs import Handle

OUT = "build/vm/bench/settings-cost.json"


def ns(*cmd: str, name: str) -> None:
    subprocess.run(["ip", "netns", "exec", name, *cmd], check=True, capture_output=True)


def main(rounds: int) -> None:
    names = [f"settings{i}" for i in range(10)]
    results = []
    try:
        for name in names:
            subprocess.run(["ip", "netns", "add", name], check=True)
            ns("ipvsadm", "-A", "-f", "256", "-s", "rr", name=name)
            ns("ipvsadm", "--set", "100", "20", "30", name=name)
        for count in (1, 10):
            handles = [Handle(f"/run/netns/{n}") for n in names[:count]]
            for h in handles:
                h.settings()  # the handle opened (setns, socket) outside the timing
            per_ns = []
            for _ in range(rounds):
                start = time.perf_counter()
                for h in handles:
                    h.settings()
                per_ns.append((time.perf_counter() - start) / count)
            for h in handles:
                h.close()
            row = {
                "namespaces": count,
                "rounds": rounds,
                "median_ms_per_namespace": statistics.median(per_ns) * 1e3,
                "p99_ms_per_namespace": sorted(per_ns)[int(0.99 * (rounds - 1))] * 1e3,
                "max_ms_per_namespace": max(per_ns) * 1e3,
            }
            results.append(row)
            print(
                f"settings read, {count} namespace(s) x {rounds} rounds: median "
                f"{row['median_ms_per_namespace']:.3f} ms, p99 {row['p99_ms_per_namespace']:.3f} ms, "
                f"max {row['max_ms_per_namespace']:.3f} ms per namespace",
                flush=True,
            )
    finally:
        for name in names:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump({"kernel": os.uname().release, "results": results}, f, indent=1)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 500)
