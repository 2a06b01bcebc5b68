#!/usr/bin/env python3
"""Host-side A/B of the gzip rendering when counters move, no VM and no IPVS needed: a
synthetic N x 10 snapshot (bench/memprofile.py's), then scrapes in which a share of the
services and one real server of each see a new connection (connections, packets and bytes
in, and the rates of those), as the live rows of `make bench` do. Each contender renders
the same snapshots in turn (Renderer.segments laid into one gzip member); every body is
checked to be one gzip member whose text is the same for all contenders.

Contenders: "this" (this checkout's package) and, with --old DIR, another version of the
package copied into DIR under the name ingress_ipvs_exporter_old with this checkout's
compiled shim (its imports are relative, so the copy runs beside this one):

    git archive main src/ingress_ipvs_exporter | tar -x -C /tmp/old --strip-components=1
    mv /tmp/old/ingress_ipvs_exporter /tmp/old/ingress_ipvs_exporter_old
    cp src/ingress_ipvs_exporter/_ipvs_cffi*.so /tmp/old/ingress_ipvs_exporter_old/
    .venv/bin/python bench/render_live.py --old /tmp/old [--services 1000,10000] [--shares 1,10,100]

--only NAME renders with one contender alone and prints the process's peak RSS; --profile
prints a cProfile of this checkout's scrapes.
"""

from __future__ import annotations

import argparse
import cProfile
import gzip
import importlib
import io
import os
import platform
import pstats
import random
import resource
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from memprofile import DESTS, moved, synthetic

from ingress_ipvs_exporter import testing
from ingress_ipvs_exporter.ipvs import Snapshot
from ingress_ipvs_exporter.render.metrics import Options


def _render_module(package: str, name: str) -> ModuleType:
    """package.render.name, or package.name in a version from before the render/ subpackage."""
    try:
        return importlib.import_module(f"{package}.render.{name}")
    except ModuleNotFoundError:
        return importlib.import_module(f"{package}.{name}")


class Contender:
    """One version of the package: its Renderer, fed this checkout's snapshots rebuilt with
    its own row classes (the shim's layout is the same)."""

    def __init__(self, name: str, package: str) -> None:
        self.name = name
        self.ipvs: ModuleType = importlib.import_module(f"{package}.ipvs")
        self.expo: ModuleType = _render_module(package, "exposition")
        self.gz: ModuleType = _render_module(package, "gzipstream")
        self.options = _render_module(package, "metrics").Options()
        self.renderer = self.expo.Renderer()

    def snapshot(self, snap: Snapshot) -> Any:
        s, d, ipvs = snap.services, snap.dests, self.ipvs
        return ipvs.Snapshot(
            ipvs.ServiceRows(s.count, *testing.blocks(s), s._addr, s._sched),
            ipvs.DestinationRows(d.count, *testing.blocks(d), d._addr),
        )

    def body(self, snap: Any, ports: dict, keep: bool) -> tuple[int, bytes]:
        """The gzip body's size (and the body itself when keep)."""
        stream = self.gz.GzipStream()
        parts = [stream.HEADER]
        size = len(stream.HEADER)
        view = self.expo.View("ingress_sbox", snap, ports)
        for seg in self.renderer.segments([view], self.options):
            for b in stream.add(seg):
                size += len(b)
                if keep:
                    parts.append(b)
        parts.append(stream.trailer())
        return size + len(parts[-1]), b"".join(parts) if keep else b""


def one_member(body: bytes) -> bytes:
    """The text of a gzip body that must be exactly one member."""
    d = gzip.zlib.decompressobj(31)  # type: ignore[attr-defined]
    text = d.decompress(body)
    assert d.eof and not d.unused_data, "not exactly one gzip member"
    return text


def machine() -> str:
    model = next(
        (ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?"
    )
    return (
        f"{model}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}, Python {platform.python_version()}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--services", default="1000,10000")
    ap.add_argument("--shares", default="1,10,100", help="percent of the services that move per scrape")
    ap.add_argument("--scrapes", type=int, default=5, help="timed scrapes per share and contender")
    ap.add_argument("--old", help="a directory holding ingress_ipvs_exporter_old")
    ap.add_argument("--only", choices=("this", "old"), help="one contender alone; its peak RSS printed")
    ap.add_argument("--profile", action="store_true", help="cProfile of this checkout's scrapes")
    ap.add_argument("--chunk-series", type=int, help="this checkout's series per chunk (CHUNK_SERIES)")
    ap.add_argument("--level", type=int, help="this checkout's zlib level (GZIP_LEVEL)")
    args = ap.parse_args()
    if args.level is not None:
        importlib.import_module("ingress_ipvs_exporter.render.gzipstream").GZIP_LEVEL = args.level
    if args.chunk_series:
        importlib.import_module("ingress_ipvs_exporter.render.exposition").CHUNK_SERIES = args.chunk_series
    contenders = []
    if args.only != "old":
        contenders.append(Contender("this", "ingress_ipvs_exporter"))
    if args.old and args.only != "this":
        sys.path.insert(0, args.old)
        contenders.append(Contender("old", "ingress_ipvs_exporter_old"))
    assert Options()  # this checkout's defaults; every contender renders its own defaults
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {machine()}", flush=True)
    prof = cProfile.Profile() if args.profile else None
    for n in (int(x) for x in args.services.split(",")):
        base, ports = synthetic(n)
        for c in contenders:
            c.renderer = c.expo.Renderer()
            c.body(c.snapshot(base), ports, False)  # the shape, and the cache filled
        snap = base
        for share in (int(x) for x in args.shares.split(",")):
            rnd = random.Random(share)
            chosen = sorted(rnd.sample(range(n), n * share // 100))
            times: dict[str, list[float]] = {c.name: [] for c in contenders}
            sizes: dict[str, int] = {}
            for k in range(args.scrapes + 1):
                snap = moved(snap, chosen, rnd)
                texts = set()
                for c in contenders:
                    s = c.snapshot(snap)
                    profiling = prof is not None and c.name == "this" and k
                    if profiling:
                        prof.enable()
                    t = time.perf_counter()
                    sizes[c.name], _ = c.body(s, ports, False)
                    dt = time.perf_counter() - t
                    if profiling:
                        prof.disable()
                    if k:  # the first scrape of a share is the cache's turn to catch up
                        times[c.name].append(dt)
                    else:
                        texts.add(one_member(c.body(s, ports, True)[1]))
                if k == 0:
                    assert len(texts) == 1, "the contenders' texts differ"
            row = f"{n}x{DESTS} {share:3d}% moving:"
            for c in contenders:
                ts = times[c.name]
                row += (
                    f"  {c.name} median {statistics.median(ts):.3f} s min {min(ts):.3f} s {sizes[c.name]} B;"
                )
            if len(contenders) == 2:
                old, this = (statistics.median(times[x]) for x in ("old", "this"))
                row += f"  this/old {this / old:.2f}"
            print(row, flush=True)
    if args.only:
        print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB", flush=True)
    if prof is not None:
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(15)
        print(out.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
