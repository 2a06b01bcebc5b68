"""Where a scrape's time goes, in the IPVS VM: each step of one scrape timed on its own,
then cProfile over whole scrapes (the MetricsApp body, gzip as Prometheus asks for it).
With --live P, before every timed step and profiled scrape (untimed) a round of the bench's
traffic moves the counters of P% of the services, as the bench's live rows do.

    tests/vm/vm-run --memory 4G -- python bench/profile_scrape.py [--services 10000] [--live 10]

Writes build/vm/bench/profile-N.txt. The figures in docs/performance.md came from it.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as bench


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--services", type=int, default=10000)
    ap.add_argument("--live", type=int, default=0, help="percent of services moving before each step")
    ap.add_argument("--out", default="build/vm/bench")
    args = ap.parse_args()
    from ingress_ipvs_exporter import memory, testing
    from ingress_ipvs_exporter.collector import NamespaceReader
    from ingress_ipvs_exporter.ipvs import Handle
    from ingress_ipvs_exporter.render import exposition
    from ingress_ipvs_exporter.render.metrics import Options
    from ingress_ipvs_exporter.swarm.marks import SwarmMarks

    memory.tune()
    n, ns = args.services, f"ipvsprof{args.services}"
    out = io.StringIO()

    def say(line: str) -> None:
        print(line, flush=True)
        out.write(line + "\n")

    bench.delete_namespace(ns)
    bench.run(["ip", "netns", "add", ns])
    bench.run(["ip", "-n", ns, "link", "set", "lo", "up"])
    say(f"set-up: {bench.fill_namespace(ns, n)}")
    try:
        traffic = bench.Traffic(bench.add_client(ns, n), n, args.live) if args.live else lambda: None
        if args.live:
            say(f"live: {bench.check_moving(ns, traffic)} services' counters move before each step")
        path = f"/run/netns/{ns}"
        handle, ports = Handle(path), SwarmMarks(path)
        collector = NamespaceReader(path, handle.snapshot, ports.lookup, Options(), info=handle.info)
        app = exposition.MetricsApp(collector, after_scrape=memory.release)

        def timed(label, fn, repeat=3):
            times = []
            for _ in range(repeat):
                traffic()
                t = time.perf_counter()
                result = fn()
                times.append(time.perf_counter() - t)
            say(f"{label}: min {min(times):.3f} s, all {' '.join(f'{x:.3f}' for x in times)}")
            return result

        snap = timed("shim dump (Handle.snapshot)", handle.snapshot)
        marks = snap.fwmarks()
        timed(
            "port map re-read (iptables-*-save in the namespace)",
            ports._cache._attempt,
            repeat=2,
        )
        timed("port map lookup (cached)", lambda: ports.lookup(marks))
        timed("collector.read (dump + cached ports + health)", collector.read)
        timed("body, first scrape (new shape)", lambda: testing.body(app, "")[0], repeat=1)
        timed("body, plain", lambda: testing.body(app, "")[0])
        timed("body, gzip", lambda: b"".join(app.stream("", gzip=True)[0]))
        prof = cProfile.Profile()
        for _ in range(2):
            traffic()
            prof.enable()
            b"".join(app.stream("", gzip=True)[0])
            prof.disable()
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(15)
        say("cProfile, 2 gzip scrapes, by own time:\n" + s.getvalue())
    finally:
        bench.delete_namespace(ns)
        bench.delete_namespace(f"{ns}c")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"profile-{n}{f'-live{args.live}' if args.live else ''}.txt").write_text(out.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
