"""No leak, no invalid access over many dumps of a real IPVS table.

A namespace gets 20 services of every kind with 45 destinations. fuzz/dumploop.c (the shim
linked directly, built here with -g) dumps it LEAK_DUMPS times (200; `make test-leaks`:
1,000) on one handle and opens, dumps and closes LEAK_DUMPS / 10 more handles, under
valgrind memcheck: any invalid read or write, any use of uninitialised memory, any
definitely lost block fails the test, and so does a file descriptor left open. Valgrind
reports a block lost once as surely as one lost every dump: more dumps repeat the same
paths, they do not make a leak easier to see. The same loop through the Python binding
(Handle.snapshot), 1,000 snapshots and 100 handles, must not grow the process's descriptors
or memory (its measure is growth, so it needs the count).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest
from ipvs_testlib import sh

pytestmark = pytest.mark.kernel

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DUMPS, REOPENS = 1000, 100  # through Python
LEAK_DUMPS = int(os.environ.get("LEAK_DUMPS", "200"))  # under valgrind


def _rules() -> tuple[str, int, int]:
    """ipvsadm -R input for 20 services / 45 destinations of every kind."""
    lines, n_dst = [], 0

    def svc(spec: str, sched: str, dests: list[str], extra: str = "", dest_opts: str = "-m") -> None:
        nonlocal n_dst
        lines.append(f"-A {spec} -s {sched} {extra}".strip())
        for i, d in enumerate(dests):
            lines.append(f"-a {spec} -r {d} {dest_opts} -w {i % 5}")
        n_dst += len(dests)

    for m in range(8):  # swarm-like fwmark services
        svc(f"-f {256 + m}", "rr", [f"10.255.{m}.{i}" for i in range(2, 2 + m % 4 + 1)])
    for p in range(4):
        svc(
            f"-t 192.0.2.10:{80 + p}",
            "wlc",
            [f"198.51.100.{i}:8080" for i in range(1, 4)],
            extra="-p 60" if p % 2 else "",
        )
        svc(f"-u 192.0.2.10:{53 + p}", "wrr", [f"198.51.100.{i}:53" for i in range(1, 3)], dest_opts="-g")
    svc("--sctp-service 192.0.2.11:5060", "rr", ["198.51.100.20:5060"])
    svc("-t [2001:db8::1]:443", "rr", ["[2001:db8:1::1]:443", "[2001:db8:1::2]:443"])
    svc("-f 256 -6", "rr", ["2001:db8:2::1"])
    svc("-u [2001:db8::2]:53", "rr", ["198.51.100.50:53"], dest_opts="-i")
    return "\n".join(lines) + "\n", 20, n_dst


@pytest.fixture
def table(netns):
    name, path = netns
    rules, n_svc, n_dst = _rules()
    sh("ipvsadm", "-R", ns=name, input=rules)
    listed = sh("ipvsadm", "-Ln", ns=name)
    assert sum(1 for ln in listed.splitlines() if re.match(r"^(TCP|UDP|SCTP|FWM)\s", ln)) == n_svc
    return path, n_svc, n_dst


@pytest.fixture(scope="module")
def dumploop(tmp_path_factory):
    exe = str(tmp_path_factory.mktemp("dumploop") / "dumploop")
    flags = subprocess.run(
        ["pkg-config", "--cflags", "--libs", "libnl-genl-3.0"], check=True, capture_output=True, text=True
    ).stdout.split()
    subprocess.run(
        [
            "gcc",
            "-g",
            "-O1",
            "-Wall",
            "-I",
            os.path.join(REPO, "csrc"),
            os.path.join(REPO, "fuzz", "dumploop.c"),
            os.path.join(REPO, "csrc", "ipvs.c"),
            *flags,
            "-o",
            exe,
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return exe


def test_dumps_under_valgrind_leak_nothing(table, dumploop):
    path, n_svc, n_dst = table
    valgrind = shutil.which("valgrind")
    assert valgrind, "valgrind is not installed (scripts/install-deps test)"
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS")}
    res = subprocess.run(
        [
            valgrind,
            "--leak-check=full",
            "--show-leak-kinds=definite,possible",
            "--errors-for-leak-kinds=definite",
            "--error-exitcode=1",
            "--track-fds=yes",
            dumploop,
            path,
            str(LEAK_DUMPS),
            str(LEAK_DUMPS // 10),
        ],
        capture_output=True,
        text=True,
        timeout=1800,
        env=env,
    )
    log = res.stderr
    os.makedirs(os.path.join(REPO, "build", "vm"), exist_ok=True)
    try:  # the VM's only writable place in the repo: keep the summary for docs/reliability.md
        with open(os.path.join(REPO, "build", "vm", "valgrind-dumploop.log"), "w") as f:
            f.write(res.stdout + log)
    except OSError:
        pass
    assert res.returncode == 0, (
        f"valgrind or dumploop failed ({res.returncode}):\n{res.stdout}\n{log[-6000:]}"
    )
    assert (
        f"dumps={LEAK_DUMPS} reopens={LEAK_DUMPS // 10} services={n_svc} destinations={n_dst}" in res.stdout
    )
    assert re.search(r"ERROR SUMMARY: 0 errors", log), log[-4000:]
    m = re.search(r"definitely lost: ([\d,]+) bytes", log)
    assert m is None or m.group(1) == "0", log[-4000:]
    assert "All heap blocks were freed" in log or m is not None, log[-4000:]
    # only stdin/stdout/stderr are open at exit: every socket and namespace fd was closed
    m = re.search(r"FILE DESCRIPTORS: (\d+) open \((\d+) std\)", log)
    assert m and m.group(1) == m.group(2), log[-4000:]


SNAPSHOT_LOOP = r"""
import os, resource, sys
from ingress_ipvs_exporter import testing
from ingress_ipvs_exporter.ipvs import Handle
path, dumps, reopens = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fds0 = len(os.listdir("/proc/self/fd"))
h = Handle(path)
first = h.snapshot()
want = (first.n_svc, first.n_dst, len(testing.as_services(first)))
for _ in range(50):   # warm up allocator pools before measuring
    testing.as_services(h.snapshot())
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for i in range(dumps):
    s = h.snapshot()
    assert (s.n_svc, s.n_dst, len(testing.as_services(s))) == want, i
h.close()
for i in range(reopens):
    with Handle(path) as h2:
        assert h2.snapshot().n_svc == want[0]
rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(want[0], want[1], len(os.listdir("/proc/self/fd")) - fds0, rss1 - rss0)
"""


def test_python_snapshots_keep_fds_and_memory_flat(table):
    path, n_svc, n_dst = table
    res = subprocess.run(
        [sys.executable, "-c", SNAPSHOT_LOOP, path, str(DUMPS), str(REOPENS)],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert res.returncode == 0, res.stderr[-4000:]
    svc, dst, fd_growth, rss_growth_kib = map(int, res.stdout.split())
    assert (svc, dst) == (n_svc, n_dst)
    assert fd_growth == 0, f"{fd_growth} file descriptors leaked"
    assert rss_growth_kib < 4096, f"peak RSS grew by {rss_growth_kib} KiB over {DUMPS} snapshots"
    print(f"python: {DUMPS} snapshots + {REOPENS} handles: fds +{fd_growth}, peak RSS +{rss_growth_kib} KiB")
