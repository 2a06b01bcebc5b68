#!/usr/bin/env python3
"""Several pytest sessions side by side in one boot of the IPVS VM, so that both cores work.

Most VM tests wait (on dockerd, systemd, apt, a scrape under emulation) more than they
compute, and one session after another left a core idle most of the time. Each stream is
one pytest session with its own output file; a stream's output is printed whole when it
ends, and the exit status is the first failing stream's (0 when all pass).

    tests/vm/streams.py --logs build/vm/streams [--first 'NAME: PYTEST ARGS'] 'NAME: PYTEST ARGS' ...

A --first session runs before all the others, alone, on the freshly booted VM: for tests
that change what every session shares, such as the kernel's modules (after the swarm labs,
namespaces they leave behind can keep ip_vs in use).

Streams must not share state a test changes: the swarm lab (iptables alternatives, a
dockerd), fixed ports and /opt install paths belong to one stream each (Makefile, test-vm).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--logs", required=True, help="directory for each stream's output, NAME.log")
    ap.add_argument("--first", action="append", default=[], metavar="'NAME: PYTEST ARGS'")
    ap.add_argument("streams", nargs="+", metavar="'NAME: PYTEST ARGS'")
    args = ap.parse_args()
    os.makedirs(args.logs, exist_ok=True)
    specs = []
    for spec in args.first + args.streams:
        name, sep, rest = spec.partition(":")
        if not sep or not name.strip() or name.strip() in (n for n, _ in specs):
            ap.error(f"a stream is 'NAME: PYTEST ARGS' with a unique NAME, not {spec!r}")
        specs.append((name.strip(), rest))
    status = 0
    for spec in specs[: len(args.first)]:
        status = _run([spec], args.logs) or status
    return _run(specs[len(args.first) :], args.logs) or status


def _run(specs: list[tuple[str, str]], logs: str) -> int:
    """Run these sessions at once; each one's output when it ends; the first failure's status."""
    running: dict[str, tuple[subprocess.Popen[bytes], str, float]] = {}
    for name, rest in specs:
        log = os.path.join(logs, f"{name}.log")
        cmd = [sys.executable, "-m", "pytest", *shlex.split(rest)]
        print(f"stream {name}: {shlex.join(cmd)} > {log}", flush=True)
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        running[name] = (proc, log, time.monotonic())
    status = 0
    while running:
        pid, code = os.wait()
        name = next((n for n, (p, _, _) in running.items() if p.pid == pid), None)
        if name is None:
            continue
        proc, log, started = running.pop(name)
        proc.returncode = os.waitstatus_to_exitcode(code)
        print(
            f"\n===== stream {name}: exit {proc.returncode} in {time.monotonic() - started:.0f} s", flush=True
        )
        with open(log, encoding="utf-8", errors="replace") as f:
            sys.stdout.write(f.read())
        sys.stdout.flush()
        if proc.returncode and not status:
            status = proc.returncode
    return status


if __name__ == "__main__":
    sys.exit(main())
