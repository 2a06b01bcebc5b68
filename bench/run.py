#!/usr/bin/env python3
"""Side-by-side scrape benchmark for ingress_ipvs_exporter; runs as root inside the IPVS VM.

    tests/vm/vm-run --memory 4G -- python bench/run.py --out build/vm/bench

For each size N it makes a fresh network namespace holding N fwmark services x 10
destinations (one `ipvsadm -R`) and the matching swarm-style mangle rules (one
`iptables-nft-restore --noflush`, or `iptables-legacy-restore` with --mangle legacy), then
times, one contender after the other in the same boot (1 warm-up, then --runs timed runs each):

  exporter_gzip, exporter_plain  the installed exporter: GET /metrics over loopback, with and
                                 without `Accept-Encoding: gzip`, whole body read
  exporter_gzip_nocache          the same (gzip) with its cache of compressed families off: every
                                 family rendered and compressed on every scrape, as under traffic
  cdump                          the floor: bench/cdump.c, a bare libnl dump (one GET_SERVICE dump,
                                 one GET_DEST dump per service, nothing stored), timed in its process
  shim_dump                      Handle(path).snapshot() in this process: the shim's own dump
  ipvsadm                        `ipvsadm -Ln --stats --exact` run inside the namespace, to a pipe
  node_exporter_gzip             Debian's prometheus-node-exporter, only its ipvs collector,
                                 running inside the namespace, scraped there with gzip
  pyroute2                       pyroute2's IPVS API: one service dump, one dest dump per service

and then, live (contender group `live`, --live-shares): before every run of each contender,
a round of traffic from a client namespace through a veth and IPVS to a random share of the
services (1%, 10%, 100%): one TCP SYN each, or with --traffic udp one datagram each (packets
and bytes move too); the same share every round, or with --live-vary a new one every round;
then a wait for the kernel's 2 s estimator, so that those services' and their real servers'
counters differ between any two scrapes, as on a node carrying traffic. The live rows time
the exporter (gzip, its default cache on), the C floor, the shim's dump, ipvsadm and
node_exporter, --live-runs (5) rounds each, medians; the targets are ratios to the C floor.
The exporters' rows also carry their CPU seconds per scrape. --mangle legacy loads the mark
rules with iptables-legacy-restore, as swarm writes them on many nodes.

Last, the namespaces row (group `namespaces`, --namespaces KxN, default 50x200): K
namespaces of N services x 10 each, read by one exporter through one glob, scraped in one
request (gzip, cache on and off) beside the bare dumps of all K in turn; compare it with the
size row of K*N services in one namespace.

What must happen inside the namespace (ipvsadm, the HTTP client of node_exporter, pyroute2's
socket) is done by this process after setns(2) into it - what `ip netns exec` does - so no
interpreter start-up ends up in a figure. Writes bench.json and bench.md into --out
(bench.png with --plot, or later with bench/report.py). Exits 0 unless the set-up failed or
a contender crashed.
"""

from __future__ import annotations

import argparse
import ctypes
import gzip
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

DESTS_PER_SERVICE = 10
MARK_BASE = 0x100  # swarm hands out fwmarks from 256 up
PORT_BASE = 30000  # published ports 30000+i
ADDR_BASE = (198 << 24) | (18 << 16)  # 198.18.0.0/15 (benchmarking range): 131072 addresses
ADDR_SPACE = 1 << 17
HTTP_TIMEOUT = 600.0  # one scrape, even at 10000x10 under emulation
START_TIMEOUT = 300.0  # an exporter must answer within this after it was started
CMD_TIMEOUT = 900.0  # one set-up command or one ipvsadm run
NODE_EXPORTER_PORT = 9100  # inside the bench namespace: its own loopback
CLONE_NEWNET = 0x40000000


LOG_FILE: Path | None = None  # --out/bench.log: the VM console can drop lines under load


def log(msg: str) -> None:
    line = f"[bench {time.strftime('%H:%M:%S')}] {msg}"
    print(line, flush=True)  # stdout: the VM runner passes the guest's stdout, not always its stderr
    if LOG_FILE is not None:
        with open(LOG_FILE, "a") as f:
            f.write(line + "\n")


# ---- network namespaces ----------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


class InNetns:
    """`with InNetns(name):` this thread (and the processes and sockets it makes) is inside
    /run/netns/NAME, as under `ip netns exec`; on exit it is back where it was."""

    def __init__(self, name: str):
        self.path = f"/run/netns/{name}"
        self.home = -1

    def __enter__(self):
        self.home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            _setns(fd)
        except BaseException:
            os.close(self.home)
            raise
        finally:
            os.close(fd)
        return self

    def __exit__(self, *exc):
        try:
            _setns(self.home)
        except OSError as e:  # carrying on in the wrong namespace would measure nonsense
            log(f"cannot return to the original network namespace: {e}")
            os._exit(70)
        finally:
            os.close(self.home)


# ---- measuring -------------------------------------------------------------------------


def measure(
    fn,
    runs: int,
    reduced_runs: int,
    budget_s: float,
    warmup: int = 1,
    prior_warm: list[float] | None = None,
    before=None,
    self_timed: bool = False,
    cpu_pid: int | None = None,
) -> dict:
    """Warm up, then time fn() `runs` times; fewer when they would not fit in budget_s:
    `reduced_runs` when warm-up x runs exceeds it, 1 when even warm-up x reduced_runs does.

    fn's last return value is kept under "last" (bodies, snapshots: for counting).
    prior_warm: warm-up times the caller already spent (its own probing run).
    before: called, untimed, before every run (the live rows' traffic).
    self_timed: fn returns (seconds it measured itself, value): the C floor times its dump
    inside its own process, so the pipe round trip to it is not in its figure.
    cpu_pid: that process's CPU seconds over the timed runs, per run, go in "cpu_s_per_run".
    """

    def timed():
        t0 = time.perf_counter()
        got = fn()
        wall = time.perf_counter() - t0
        return got if self_timed else (wall, got)

    warm = list(prior_warm or [])
    last = None
    for _ in range(warmup):
        if before is not None:
            before()
        t, last = timed()
        warm.append(t)
    n = runs
    w = max(warm) if warm else 0.0
    note = None
    if w * runs > budget_s:
        n = min(runs, reduced_runs if w * reduced_runs <= budget_s else 1)
        if n < runs:
            note = (
                f"{n} run{'s' if n > 1 else ''} instead of {runs}: the warm-up took {w:.1f} s and "
                f"{runs} runs would exceed the {budget_s:g} s budget"
            )
    times = []
    cpu0 = cpu_seconds(cpu_pid) if cpu_pid is not None else None
    for _ in range(n):
        if before is not None:
            before()
        t, last = timed()
        times.append(t)
    cpu1 = cpu_seconds(cpu_pid) if cpu_pid is not None else None
    out = {
        "status": "ok",
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "runs": n,
        "warmup_s": warm,
        "times_s": times,
        "last": last,
    }
    if cpu0 is not None and cpu1 is not None:
        out["cpu_s_per_run"] = (cpu1 - cpu0) / n
    if note:
        out["runs_note"] = note
    return out


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of the process, all its threads: what its
    process_cpu_seconds_total reports (prometheus_client reads the same /proc/PID/stat),
    read here without a scrape of its own."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def plan(label: str, n: int, args, prev: tuple[int, float] | None) -> dict:
    """How a slow contender runs at size n, judged from its median at the previous size scaled
    linearly (optimistic: nothing here is better than linear). Returns measure() keywords, or
    {"skip": status}. Within --budget-s: as usual (measure() itself may still cut runs);
    over it for warm-up + --reduced-runs: one timed run, no warm-up; over it for one run: skipped."""
    kw = {"runs": args.runs, "reduced_runs": args.reduced_runs, "budget_s": args.budget_s, "warmup": 1}
    if prev is None:
        return kw
    est = prev[1] * n / prev[0]
    if est * (1 + args.reduced_runs) <= args.budget_s:
        return kw
    why = f"{est:.0f} s per run estimated from {prev[1]:.2f} s at N={prev[0]} (linear)"
    if est > args.budget_s:
        log(f"N={n}: {label} skipped: {why}")
        return {"skip": f"skipped: {why} exceeds --budget-s {args.budget_s:g}"}
    return {
        **kw,
        "runs": 1,
        "reduced_runs": 1,
        "warmup": 0,
        "note": f"1 run, no warm-up: {why}; warm-up + {args.reduced_runs} runs would exceed "
        f"--budget-s {args.budget_s:g}",
    }


def run_planned(fn, kw: dict) -> dict:
    kw = dict(kw)
    note = kw.pop("note", None)
    m = measure(fn, **kw)
    if note:
        m["runs_note"] = note
    return m


def http_get(host: str, port: int, path: str, gzip_ok: bool) -> tuple[int, dict, bytes]:
    """One GET on a fresh connection, the whole body read: (status, headers, raw body).
    Sends its timeout as Prometheus does, which the exporter follows when it reads several
    namespaces (the 50-namespace rows: under emulation their reads exceed the fixed 10 s)."""
    from ingress_ipvs_exporter.web.apps import SCRAPE_TIMEOUT_HEADER

    conn = http.client.HTTPConnection(host, port, timeout=HTTP_TIMEOUT)
    try:
        headers = {
            "Accept": "text/plain;version=0.0.4;q=1,*/*;q=0.1",
            SCRAPE_TIMEOUT_HEADER: f"{HTTP_TIMEOUT:g}",
        }
        if gzip_ok:
            headers["Accept-Encoding"] = "gzip"
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


def scrape(host: str, port: int, gzip_ok: bool):
    status, headers, body = http_get(host, port, "/metrics", gzip_ok)
    if status != 200:
        raise RuntimeError(f"GET /metrics answered {status}")
    return headers, body


def scrape_stats(m: dict, prefix: bytes = b"") -> bytes:
    """Replace measure()'s last (headers, body) by body size and sample counts; the decoded text."""
    headers, body = m.pop("last")
    text = gzip.decompress(body) if headers.get("content-encoding") == "gzip" else body
    m["body_bytes"] = len(body)
    m["content_encoding"] = headers.get("content-encoding", "identity")
    m["samples"] = count_samples(text)
    if prefix:
        m["samples_ipvs"] = count_samples(text, prefix)
    return text


def count_samples(text: bytes, prefix: bytes = b"") -> int:
    """Non-comment, non-empty lines (only those starting with prefix, when given)."""
    return sum(
        1 for line in text.split(b"\n") if line and not line.startswith(b"#") and line.startswith(prefix)
    )


def wait_http(host: str, port: int, deadline_s: float, proc: subprocess.Popen | None = None) -> float:
    """Poll GET / until it answers; seconds waited. Raises on timeout or when proc exits."""
    t0 = time.monotonic()
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"exited with status {proc.returncode} before answering")
        try:
            if http_get(host, port, "/", False)[0] < 500:
                return time.monotonic() - t0
        except OSError:
            pass
        if time.monotonic() - t0 > deadline_s:
            raise RuntimeError(f"did not answer on {host}:{port} within {deadline_s:g} s")
        time.sleep(0.2)


def rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


# ---- namespace set-up -----------------------------------------------------------------


def run(cmd: list[str], input_text: str | None = None, timeout: float = CMD_TIMEOUT) -> str:
    p = subprocess.run(
        cmd,
        input=input_text.encode() if input_text is not None else None,
        capture_output=True,
        timeout=timeout,
    )
    if p.returncode:
        raise RuntimeError(
            f"{' '.join(cmd[:6])} exited {p.returncode}: {p.stderr.decode(errors='replace').strip()[:500]}"
        )
    return p.stdout.decode(errors="replace")


def addr(k: int) -> str:
    return socket.inet_ntoa((ADDR_BASE + k).to_bytes(4, "big"))


def real_server(k: int) -> str:
    """The k-th real server: a unique address of 198.18.0.0/15, then (past 131072 of them,
    the 50000 x 10 size) the same addresses again on port 1, 2, ...: unique as address:port."""
    return f"{addr(k % ADDR_SPACE)}:{k // ADDR_SPACE}"


def frontend(i: int) -> tuple[str, int]:
    """Where the client sends service i's traffic: BALANCER_ADDR on port 30000+i, and past
    the last port (more than 35536 services) the next balancer address, ports again from 30000."""
    span = 65536 - PORT_BASE
    host = BALANCER_ADDR.rsplit(".", 1)
    return f"{host[0]}.{int(host[1]) + 2 * (i // span)}", PORT_BASE + i % span


def ipvsadm_script(n: int) -> str:
    """`ipvsadm -R` input: N fwmark services, 10 masqueraded real servers each, every address unique."""
    lines = []
    for i in range(n):
        mark = MARK_BASE + i
        lines.append(f"-A -f {mark} -s rr")
        lines.extend(
            f"-a -f {mark} -r {real_server(1 + i * DESTS_PER_SERVICE + j)} -m"
            for j in range(DESTS_PER_SERVICE)
        )
    return "\n".join(lines) + "\n"


def mangle_script(n: int, proto: str = "tcp") -> str:
    """`iptables-restore` input: the mark rules swarm writes for published ports 30000+i
    (past port 65535 also matching the destination address: see frontend())."""
    lines = ["*mangle"]
    for i in range(n):
        host, port = frontend(i)
        match = f"-d {host}/32 " if i >= 65536 - PORT_BASE else ""
        lines.append(
            f"-A PREROUTING {match}-p {proto} -m {proto} --dport {port} "
            f"-j MARK --set-xmark {MARK_BASE + i:#x}/0xffffffff"
        )
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


IPTABLES_RESTORE = {"nft": "iptables-nft-restore", "legacy": "iptables-legacy-restore"}


def fill_namespace(name: str, n: int, mangle: str = "nft", proto: str = "tcp") -> dict:
    """N services (one `ipvsadm -R`) and their N mark rules, loaded with the iptables backend
    `mangle` (nft, or legacy as swarm writes them on many nodes) for protocol proto."""
    assert n * DESTS_PER_SERVICE < 16 * ADDR_SPACE and n < 8 * (65536 - PORT_BASE)
    t0 = time.perf_counter()
    run(["ip", "netns", "exec", name, "ipvsadm", "-R"], ipvsadm_script(n))
    t1 = time.perf_counter()
    run(["ip", "netns", "exec", name, IPTABLES_RESTORE[mangle], "--noflush"], mangle_script(n, proto))
    t2 = time.perf_counter()
    return {"ipvsadm_restore_s": t1 - t0, "iptables_restore_s": t2 - t1, "mangle": mangle, "proto": proto}


def delete_namespace(name: str) -> None:
    try:
        subprocess.run(
            ["ip", "netns", "del", name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300
        )
    except subprocess.TimeoutExpired:
        log(f"ip netns del {name} timed out")


# ---- processes ------------------------------------------------------------------------


class Procs:
    """Every long-running process this bench starts, so clean-up ends exactly those."""

    def __init__(self):
        self.procs: list[subprocess.Popen] = []

    def start(self, cmd: list[str], logfile: Path, env: dict | None = None) -> subprocess.Popen:
        with open(logfile, "wb") as f:
            p = subprocess.Popen(
                cmd,
                stdout=f,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=None if env is None else {**os.environ, **env},
            )
        self.procs.append(p)
        return p

    def stop(self, p: subprocess.Popen) -> int | None:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(20)
        if p in self.procs:
            self.procs.remove(p)
        return p.returncode

    def stop_all(self) -> None:
        for p in list(self.procs):
            try:
                self.stop(p)
            except Exception as e:
                log(f"could not stop pid {p.pid}: {e}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- the contenders -------------------------------------------------------------------


class StartedExporter:
    """The exporter process, and a thread that notes when it first answers GET /."""

    def __init__(self, p: subprocess.Popen, port: int):
        self.p, self.port, self.t_start = p, port, time.monotonic()
        self.answered_s: float | None = None
        self.error: str | None = None
        self.thread = threading.Thread(target=self._wait, name="exporter-start", daemon=True)
        self.thread.start()

    def _wait(self) -> None:
        try:
            self.answered_s = wait_http("127.0.0.1", self.port, START_TIMEOUT, self.p)
        except Exception as e:
            self.error = str(e)

    def wait(self) -> float:
        self.thread.join(START_TIMEOUT + 30)
        if self.answered_s is None:
            raise RuntimeError(self.error or f"did not answer within {START_TIMEOUT:g} s")
        return self.answered_s


def start_exporter(
    ns: str,
    n: int,
    procs: Procs,
    outdir: Path,
    suffix: str = "",
    env: dict | None = None,
    path: str | None = None,
) -> StartedExporter:
    """The exporter reading /run/netns/{ns}, or path (a glob: the namespaces row)."""
    exe = shutil.which("ingress_ipvs_exporter") or str(
        Path(sys.executable).with_name("ingress_ipvs_exporter")
    )
    port = free_port()
    p = procs.start(
        [exe, "--listen-address", f"127.0.0.1:{port}", "--namespace-path", path or f"/run/netns/{ns}"],
        outdir / f"exporter{suffix}-{n}.log",
        env,
    )
    return StartedExporter(p, port)


# The second exporter: its cache of compressed families off, so every scrape renders and
# compresses every family, as when every counter moves between scrapes (the bench's IPVS is
# idle, which the cache would otherwise make look cheap).
NOCACHE = "_nocache"
NOCACHE_ENV = {"INGRESS_IPVS_EXPORTER_CACHE_MB": "0"}


def bench_exporter(
    ns: str,
    n: int,
    args,
    procs: Procs,
    outdir: Path,
    started: StartedExporter,
    variants=(("plain", False), ("gzip", True)),
    suffix: str = "",
    extra_scrapes: int | None = None,
    namespaces: int = 1,
) -> dict:
    """Scrapes of the exporter started (by start_exporter) while the namespace was being filled;
    n services and `namespaces` namespaces up in all."""
    p, port, host = started.p, started.port, "127.0.0.1"
    extra = args.extra_scrapes if extra_scrapes is None else extra_scrapes
    try:
        start_s = started.wait()
        res = {}
        for variant, gz in variants:
            m = measure(
                lambda gz=gz: scrape(host, port, gz),
                args.runs,
                args.reduced_runs,
                args.budget_s,
                cpu_pid=p.pid,
            )
            text = scrape_stats(m)
            res[f"exporter_{variant}{suffix}"] = m
        (outdir / f"exporter{suffix}-{n}.head.txt").write_bytes(
            b"\n".join(text.split(b"\n", 120)[:120]) + b"\n"
        )
        up = len(re.findall(rb"^ipvs_up(\{[^}]*\})? 1(\.0)?$", text, re.M))
        if up != namespaces:
            raise RuntimeError(
                f"the exporter answered with 'ipvs_up 1' for {up} namespaces, expected {namespaces} "
                f"(see exporter{suffix}-{n}.head.txt)"
            )
        dest_series = count_samples(text, b"ipvs_destination_bytes_in_total")
        if dest_series != n * DESTS_PER_SERVICE:
            raise RuntimeError(
                f"ipvs_destination_bytes_in_total has {dest_series} series, expected {n * DESTS_PER_SERVICE}"
            )
        rss = rss_mb(p.pid)
        t0 = time.perf_counter()
        for _ in range(extra):
            scrape(host, port, True)
        extra_s = time.perf_counter() - t0
        rss2 = rss_mb(p.pid)
        if p.poll() is not None:
            raise RuntimeError(f"exited with status {p.returncode}")
        common = {
            "pid": p.pid,
            "start_to_answer_s": start_s,
            "rss_mb": rss,
            "rss_after_extra_mb": rss2,
            "extra_scrapes": extra,
            "extra_scrapes_s": extra_s,
            "rss_growth_mb": (rss2 - rss) if rss is not None and rss2 is not None else None,
        }
        return {k: {**v, **common} for k, v in res.items()}
    except Exception as e:
        status = f"failed: {type(e).__name__}: {e}"
        return {f"exporter_{variant}{suffix}": {"status": status} for variant, _ in variants}
    finally:
        procs.stop(p)


def bench_shim(ns: str | list[str], n: int, args, before=None) -> dict:
    """Bare dumps of the namespace (or of each namespace in turn), n services x 10 in each."""
    try:
        from ingress_ipvs_exporter.ipvs import Handle

        handles = [Handle(f"/run/netns/{x}") for x in ([ns] if isinstance(ns, str) else ns)]
        try:
            m = measure(
                lambda: [h.snapshot() for h in handles],
                args.runs,
                args.reduced_runs,
                args.budget_s,
                before=before,
            )
        finally:
            for h in handles:
                h.close()
        snaps = m.pop("last")
        for snap in snaps:
            if snap.n_svc != n or snap.n_dst != n * DESTS_PER_SERVICE:
                raise RuntimeError(f"a snapshot has {snap.n_svc} services / {snap.n_dst} destinations")
        return {**m, "services": sum(x.n_svc for x in snaps), "destinations": sum(x.n_dst for x in snaps)}
    except Exception as e:
        return {"status": f"failed: {type(e).__name__}: {e}"}


def bench_cdump(ns: str, n: int, args, before=None) -> dict:
    """The floor: bench/cdump.c (built by bench/make-bench) joined to the namespace, one bare
    libnl dump per run, timed inside that process; its CPU seconds per dump too."""
    exe = args.cdump
    if not exe or not os.access(exe, os.X_OK):
        return {"status": f"failed: no C floor binary at {exe!r} (bench/make-bench builds it)"}
    p = subprocess.Popen(
        [exe, f"/run/netns/{ns}"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def once():
        p.stdin.write("\n")
        p.stdin.flush()
        line = p.stdout.readline().split()
        if len(line) < 3:
            raise RuntimeError(f"cdump: {p.stderr.read().strip() or 'no answer'}")
        return float(line[0]), (int(line[1]), int(line[2]))

    try:
        m = measure(
            once, args.runs, args.reduced_runs, args.budget_s, before=before, self_timed=True, cpu_pid=p.pid
        )
        n_svc, n_dst = m.pop("last")
        if (n_svc, n_dst) != (n, n * DESTS_PER_SERVICE):
            raise RuntimeError(f"the C dump saw {n_svc} services / {n_dst} destinations")
        return {**m, "services": n_svc, "destinations": n_dst}
    except Exception as e:
        return {"status": f"failed: {type(e).__name__}: {e}"}
    finally:
        p.stdin.close()
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(30)


def bench_ipvsadm(ns: str, n: int, args, prev, before=None) -> dict:
    kw = plan("ipvsadm", n, args, prev)
    if "skip" in kw:
        return {"status": kw["skip"]}
    kw["before"] = before
    cmd = ["ipvsadm", "-Ln", "--stats", "--exact"]

    def once():
        p = subprocess.run(cmd, capture_output=True, timeout=CMD_TIMEOUT)
        if p.returncode:
            raise RuntimeError(f"ipvsadm exited {p.returncode}: {p.stderr.decode(errors='replace').strip()}")
        return p.stdout

    try:
        with InNetns(ns):
            m = run_planned(once, kw)
        out = m.pop("last")
        m["output_lines"] = out.count(b"\n")
        m["output_bytes"] = len(out)
        m["destination_lines"] = out.count(b"\n  -> ") - 1  # less the column header
        if m["destination_lines"] != n * DESTS_PER_SERVICE:
            raise RuntimeError(f"ipvsadm listed {m['destination_lines']} destinations")
        return m
    except Exception as e:
        return {"status": f"failed: {type(e).__name__}: {e}"}


def bench_node_exporter(ns: str, n: int, args, procs: Procs, outdir: Path, prev, before=None) -> dict:
    """Debian's node_exporter, only the ipvs collector, inside the namespace (it reads
    /proc/net/ip_vs*, which follow the reader's namespace); scraped with gzip like Prometheus."""
    exe = shutil.which("prometheus-node-exporter")
    if not exe:
        return {"status": "failed: prometheus-node-exporter is not installed (scripts/install-deps test)"}
    kw = plan("node_exporter", n, args, prev)
    if "skip" in kw:
        return {"status": kw["skip"]}
    kw["before"] = before
    host, port = "127.0.0.1", NODE_EXPORTER_PORT
    t_start = time.monotonic()
    # `ip netns exec` execs the command in place: the pid is node_exporter's own.
    p = procs.start(
        [
            "ip",
            "netns",
            "exec",
            ns,
            exe,
            "--collector.disable-defaults",
            "--collector.ipvs",
            "--web.listen-address",
            f"{host}:{port}",
        ],
        outdir / f"node_exporter-{n}.log",
    )
    try:
        with InNetns(ns):
            wait_http(host, port, START_TIMEOUT, p)
            start_s = time.monotonic() - t_start
            m = run_planned(lambda: scrape(host, port, True), kw)
        text = scrape_stats(m, b"node_ipvs_")
        if count_samples(text, b"node_ipvs_backend_weight") != n * DESTS_PER_SERVICE:
            raise RuntimeError(
                f"node_ipvs_backend_weight has {count_samples(text, b'node_ipvs_backend_weight')} "
                f"series, expected {n * DESTS_PER_SERVICE}"
            )
        if p.poll() is not None:
            raise RuntimeError(f"exited with status {p.returncode}")
        return {**m, "pid": p.pid, "start_to_answer_s": start_s, "rss_mb": rss_mb(p.pid)}
    except Exception as e:
        return {"status": f"failed: {type(e).__name__}: {e}"}
    finally:
        procs.stop(p)


def pyroute2_dump(ipvs, IPVSService) -> tuple[int, int, int]:
    """Every service and destination with its counters through pyroute2's IPVS API:
    (services, destinations, counters read)."""
    n_svc = n_dst = counters = 0
    for msg in ipvs.service("dump"):
        svc = msg.get_attr("IPVS_CMD_ATTR_SERVICE")
        stats = svc.get_attr("IPVS_SVC_ATTR_STATS64") or svc.get_attr("IPVS_SVC_ATTR_STATS")
        counters += len(stats["attrs"]) if stats is not None else 0
        n_svc += 1
        for dmsg in ipvs.dest("dump", service=IPVSService.from_message(msg)):
            d = dmsg.get_attr("IPVS_CMD_ATTR_DEST")
            # what an exporter needs of each destination: address, port, connections, counters
            for name in (
                "IPVS_DEST_ATTR_ADDR",
                "IPVS_DEST_ATTR_PORT",
                "IPVS_DEST_ATTR_ACTIVE_CONNS",
                "IPVS_DEST_ATTR_INACT_CONNS",
            ):
                d.get_attr(name)
            dstats = d.get_attr("IPVS_DEST_ATTR_STATS64") or d.get_attr("IPVS_DEST_ATTR_STATS")
            counters += len(dstats["attrs"]) if dstats is not None else 0
            n_dst += 1
    return n_svc, n_dst, counters


def bench_pyroute2(ns: str, n: int, args, prev) -> dict:
    """pyroute2 is pure Python: under emulation one dump at 10000x10 takes many minutes."""
    try:
        import pyroute2
        from pyroute2 import IPVS, IPVSService
    except ImportError as e:
        return {
            "status": f"unsupported: no pyroute2 IPVS API here ({e}); pip install -r bench/requirements.txt"
        }
    kw = plan("pyroute2", n, args, prev)
    if "skip" in kw:
        return {"status": kw["skip"]}
    try:
        with InNetns(ns):
            ipvs = IPVS()  # its netlink socket is made here, inside the namespace
            try:
                # the first dump is the warm-up and checks that the API reaches every destination
                t0 = time.perf_counter()
                probe = pyroute2_dump(ipvs, IPVSService)
                warm = time.perf_counter() - t0
                if probe[:2] != (n, n * DESTS_PER_SERVICE):
                    return {
                        "status": f"unsupported: pyroute2 {pyroute2.__version__} dumped {probe[0]} services / "
                        f"{probe[1]} destinations, expected {n} / {n * DESTS_PER_SERVICE}"
                    }
                if kw["warmup"] == 0:  # planned as a single run: the probe was it
                    m = {
                        "status": "ok",
                        "median_s": warm,
                        "min_s": warm,
                        "max_s": warm,
                        "runs": 1,
                        "warmup_s": [],
                        "times_s": [warm],
                        "last": probe,
                        "runs_note": kw["note"],
                    }
                else:
                    m = measure(
                        lambda: pyroute2_dump(ipvs, IPVSService),
                        kw["runs"],
                        kw["reduced_runs"],
                        kw["budget_s"],
                        warmup=0,
                        prior_warm=[warm],
                    )
            finally:
                ipvs.close()
        n_svc, n_dst, counters = m.pop("last")
        return {
            **m,
            "services": n_svc,
            "destinations": n_dst,
            "counters_read": counters,
            "version": pyroute2.__version__,
        }
    except Exception as e:
        return {"status": f"failed: {type(e).__name__}: {e}"}


# ---- machine --------------------------------------------------------------------------


def machine_info(args) -> dict:
    cpu, mem = "unknown", None
    try:
        cpu = next(
            line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")
        )
        mem = next(
            int(line.split()[1]) // 1024 for line in open("/proc/meminfo") if line.startswith("MemTotal:")
        )
    except (OSError, StopIteration):
        pass

    def version(cmd):
        try:
            p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
            return p.stdout.decode(errors="replace").strip().splitlines()[0]
        except Exception:
            return None

    try:
        import pyroute2

        pyroute2_version = pyroute2.__version__
    except Exception:
        pyroute2_version = None
    try:
        from ingress_ipvs_exporter import __version__ as exporter_version
    except Exception:
        exporter_version = None
    return {
        "cpu_model": cpu,
        "cpus": os.cpu_count(),
        "mem_total_mb": mem,
        "kernel": platform.release(),
        "emulation": (
            "qemu TCG software emulation"
            if os.environ.get("IN_IPVS_VM") == "1"
            else "none (run on this host's kernel)"
        ),
        "host_cpu_model": args.host_cpu or None,
        "host_loadavg_at_start": args.host_load or None,
        "note": args.note or None,
        "python": platform.python_version(),
        "exporter_version": exporter_version,
        "ipvsadm": version(["ipvsadm", "--version"]),
        "node_exporter": version(["prometheus-node-exporter", "--version"]),
        "pyroute2": pyroute2_version,
    }


# ---- live traffic -----------------------------------------------------------------------

BALANCER_ADDR, CLIENT_ADDR = "198.51.100.1", "198.51.100.2"  # TEST-NET-2, inside the VM only
ESTIMATOR_WAIT_S = 2.5  # the kernel refreshes the totals that netlink reports every 2 s


def add_client(ns: str, n: int) -> str:
    """A client namespace joined to the bench namespace by a veth pair: its packets to
    frontend(i) are marked by the swarm-style mangle rules and scheduled by IPVS
    (to real servers that do not exist: the counters move, nothing leaves the namespace)."""
    client = f"{ns}c"
    run(["ip", "netns", "add", client])
    run(["ip", "-n", ns, "link", "add", "lb0", "type", "veth", "peer", "name", "cl0", "netns", client])
    for host in sorted({frontend(i)[0] for i in range(0, n, 65536 - PORT_BASE)}):
        run(["ip", "-n", ns, "addr", "add", f"{host}/24", "dev", "lb0"])
    run(["ip", "-n", ns, "link", "set", "lb0", "up"])
    run(["ip", "-n", client, "addr", "add", f"{CLIENT_ADDR}/24", "dev", "cl0"])
    run(["ip", "-n", client, "link", "set", "cl0", "up"])
    run(["ip", "-n", client, "link", "set", "lo", "up"])
    return client


UDP_PAYLOAD = b"x" * 512  # a datagram's bytes: inbytes moves with inpkts and conns


class Traffic:
    """A round of traffic to a random share of the services, then a wait for the estimator;
    called untimed before every run. tcp: one SYN each. udp: one datagram each, so packets and
    bytes move as well as connections. vary: a new random share every round (the rates of the
    services keep changing, as on a node carrying traffic), else the same share every round
    (seeded)."""

    def __init__(self, client: str, n: int, percent: int, proto: str = "tcp", vary: bool = False):
        import random

        self.k = max(1, round(n * percent / 100))
        self.client, self.n, self.proto, self.vary = client, n, proto, vary
        self.rng = random.Random(percent)
        self.services = sorted(self.rng.sample(range(n), self.k))

    def __call__(self) -> None:
        if self.vary:
            self.services = sorted(self.rng.sample(range(self.n), self.k))
        kind = socket.SOCK_DGRAM if self.proto == "udp" else socket.SOCK_STREAM
        with InNetns(self.client):
            for i in self.services:  # bounded: one connection attempt or datagram per moving service
                with socket.socket(socket.AF_INET, kind) as s:
                    s.setblocking(False)
                    if self.proto == "udp":
                        s.sendto(UDP_PAYLOAD, frontend(i))
                    else:
                        s.connect_ex(frontend(i))  # the SYN leaves now
        time.sleep(ESTIMATOR_WAIT_S)


def check_moving(ns: str, traffic: Traffic) -> int:
    """How many services' connection counters one round of traffic moved (it must be all the
    chosen ones, else the live rows would time an idle IPVS)."""
    from ingress_ipvs_exporter.ipvs import Handle

    with Handle(f"/run/netns/{ns}") as h:
        s0 = h.snapshot().services
        before = list(zip(s0.conns, s0.inpkts))
        traffic()
        s1 = h.snapshot().services
        after = list(zip(s1.conns, s1.inpkts))
    moved = sum(1 for a, b in zip(before, after) if a[0] != b[0] and a[1] != b[1])
    if moved < len(traffic.services):
        raise RuntimeError(f"{len(traffic.services)} services sent traffic, but only {moved} counters moved")
    return moved


def bench_live(ns: str, client: str, n: int, percent: int, args, procs, outdir, started, prev) -> dict:
    """The live rows for one share: the exporter (gzip, default cache), the bare dump, ipvsadm
    and node_exporter, each run preceded by a round of traffic. --live-runs timed runs each
    (every one costs a round of traffic and the estimator's wait on top of the scrape)."""
    import argparse

    args = argparse.Namespace(**{**vars(args), "runs": args.live_runs})
    traffic = Traffic(client, n, percent, args.traffic, args.live_vary)
    tag = f"live{percent}_"
    try:
        moved = check_moving(ns, traffic)
    except Exception as e:
        status = f"failed: {type(e).__name__}: {e}"
        return {
            tag + k: {"status": status}
            for k in ("exporter_gzip", "cdump", "shim_dump", "ipvsadm", "node_exporter_gzip")
        }
    log(f"N={n}: live {percent}%: {moved} services' counters move between scrapes")
    out = {}
    try:
        started.wait()
        m = measure(
            lambda: scrape("127.0.0.1", started.port, True),
            args.runs,
            args.reduced_runs,
            args.budget_s,
            before=traffic,
            cpu_pid=started.p.pid,
        )
        scrape_stats(m)
        m["rss_mb"] = rss_mb(started.p.pid)
        out[tag + "exporter_gzip"] = m
    except Exception as e:
        out[tag + "exporter_gzip"] = {"status": f"failed: {type(e).__name__}: {e}"}
    out[tag + "cdump"] = bench_cdump(ns, n, args, before=traffic)
    out[tag + "shim_dump"] = bench_shim(ns, n, args, before=traffic)
    out[tag + "ipvsadm"] = bench_ipvsadm(ns, n, args, prev.get(tag + "ipvsadm"), before=traffic)
    if n < args.live_node_exporter_below:
        out[tag + "node_exporter_gzip"] = bench_node_exporter(
            ns, n, args, procs, outdir, prev.get(tag + "node_exporter_gzip"), before=traffic
        )
    for r in out.values():
        r["moving_services"] = moved
        r["moving_percent"] = percent
    return out


# ---- main -----------------------------------------------------------------------------


def bench_size(n: int, args, procs: Procs, outdir: Path, prev: dict) -> dict:
    ns = f"ipvsbench{n}-{os.getpid()}"
    entry: dict = {"n_services": n, "n_destinations": n * DESTS_PER_SERVICE, "namespace": ns}
    t0 = time.perf_counter()
    run(["ip", "netns", "add", ns])
    try:
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
        started = None
        if "exporter" in args.contenders:
            # Python start-up is slow under emulation: let it overlap the set-up. It serves
            # `ipvs_up` and reads IPVS only when scraped, which is after the set-up.
            started = start_exporter(ns, n, procs, outdir)
        nocache = (
            start_exporter(ns, n, procs, outdir, NOCACHE, NOCACHE_ENV)
            if "exporter_nocache" in args.contenders
            else None
        )
        live = start_exporter(ns, n, procs, outdir, "_live") if "live" in args.contenders else None
        log(f"N={n}: loading {n} services x {DESTS_PER_SERVICE} destinations and {n} mangle rules into {ns}")
        entry["setup"] = fill_namespace(ns, n, args.mangle, args.traffic)
        log(
            f"N={n}: set-up took {entry['setup']['ipvsadm_restore_s']:.1f} s (ipvsadm -R) + "
            f"{entry['setup']['iptables_restore_s']:.1f} s ({IPTABLES_RESTORE[args.mangle]})"
        )
        c: dict = {}
        entry["contender_wall_s"] = walls = {}
        steps = [
            ("exporter", lambda: bench_exporter(ns, n, args, procs, outdir, started)),
            (
                "exporter_nocache",
                lambda: bench_exporter(
                    ns, n, args, procs, outdir, nocache, (("gzip", True),), NOCACHE, extra_scrapes=0
                ),
            ),
            ("cdump", lambda: {"cdump": bench_cdump(ns, n, args)}),
            ("shim", lambda: {"shim_dump": bench_shim(ns, n, args)}),
            ("ipvsadm", lambda: {"ipvsadm": bench_ipvsadm(ns, n, args, prev.get("ipvsadm"))}),
            (
                "node_exporter",
                lambda: {
                    "node_exporter_gzip": bench_node_exporter(
                        ns, n, args, procs, outdir, prev.get("node_exporter_gzip")
                    )
                },
            ),
            ("pyroute2", lambda: {"pyroute2": bench_pyroute2(ns, n, args, prev.get("pyroute2"))}),
        ]
        clients: list[str] = []  # the client namespace of the live rows, made on first use

        def live_step(percent: int) -> dict:
            if not clients:
                clients.append(add_client(ns, n))
            return bench_live(ns, clients[0], n, percent, args, procs, outdir, live, prev)

        steps += [(f"live{p}", lambda p=p: live_step(p)) for p in args.live_shares]
        for group, step in steps:
            if group.rstrip("0123456789") not in args.contenders:  # live1, live10, ...: "live"
                continue
            t1 = time.perf_counter()
            got = step()
            c.update(got)
            walls[group] = round(time.perf_counter() - t1, 1)
            for name, r in got.items():
                figure = (
                    f"median {r['median_s']:.3f} s, min {r['min_s']:.3f} s, {r['runs']} runs"
                    if r.get("status") == "ok"
                    else r.get("status")
                )
                log(f"N={n}: {name}: {figure} ({walls[group]:.0f} s)")
        entry["contenders"] = c
    finally:
        procs.stop_all()
        delete_namespace(ns)
        delete_namespace(f"{ns}c")
        entry["wall_s"] = time.perf_counter() - t0
    return entry


def bench_namespaces(k: int, n: int, args, procs: Procs, outdir: Path) -> dict:
    """K namespaces of N services x 10 each, read by one exporter through one glob in one
    scrape: its gzip scrape (cache on, and off as under traffic) beside the bare dumps of all
    K namespaces in turn, and its RSS."""
    stem = f"ipvsbenchns{os.getpid()}-"
    names = [f"{stem}{i}" for i in range(k)]
    total = k * n
    entry: dict = {"namespaces": k, "n_services": n, "n_services_total": total}
    t0 = time.perf_counter()
    try:
        for name in names:
            run(["ip", "netns", "add", name])
            run(["ip", "-n", name, "link", "set", "lo", "up"])
        glob = f"/run/netns/{stem}*"
        tag = f"_{k}ns"  # its files apart from the size row of the same total
        started = start_exporter(stem, total, procs, outdir, tag, path=glob)
        nocache = start_exporter(stem, total, procs, outdir, NOCACHE + tag, NOCACHE_ENV, path=glob)
        log(f"{k} namespaces x {n} services: loading")
        setups = [fill_namespace(name, n, args.mangle, args.traffic) for name in names]
        entry["setup"] = {
            **setups[0],
            **{key: sum(x[key] for x in setups) for key in setups[0] if key.endswith("_s")},
        }
        c = bench_exporter(stem, total, args, procs, outdir, started, (("gzip", True),), tag, namespaces=k)
        c |= bench_exporter(
            stem, total, args, procs, outdir, nocache, (("gzip", True),), NOCACHE + tag, 0, namespaces=k
        )
        c = {key.replace(tag, ""): value for key, value in c.items()}
        c["shim_dump"] = bench_shim(names, n, args)
        for name, r in c.items():
            log(f"{k} namespaces x {n}: {name}: {r.get('median_s', r.get('status'))}")
        entry["contenders"] = c
    finally:
        procs.stop_all()
        for name in names:
            delete_namespace(name)
        entry["wall_s"] = time.perf_counter() - t0
    return entry


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    ap.add_argument("--out", default="build/vm/bench", help="output directory")
    ap.add_argument(
        "--sizes", default="100,1000,10000", help="comma list of service counts (x 10 destinations)"
    )
    ap.add_argument(
        "--contenders",
        default="exporter,exporter_nocache,cdump,shim,ipvsadm,node_exporter,pyroute2,live,namespaces",
        help="comma list of the contenders to run",
    )
    ap.add_argument(
        "--live-shares",
        default="1,10,100",
        help="comma list: percent of services whose counters move between scrapes (the live rows)",
    )
    ap.add_argument("--live-runs", type=int, default=5, help="timed runs of each live contender")
    ap.add_argument(
        "--traffic",
        choices=("tcp", "udp"),
        default="tcp",
        help="live rows: one TCP SYN, or one UDP datagram (packets and bytes move too), per moving "
        "service and round; the mark rules match this protocol",
    )
    ap.add_argument(
        "--live-vary",
        action="store_true",
        help="live rows: a new random share of the services moves every round, not the same one",
    )
    ap.add_argument(
        "--mangle",
        choices=sorted(IPTABLES_RESTORE),
        default="nft",
        help="iptables backend of the N mark rules (swarm writes legacy ones on many nodes)",
    )
    ap.add_argument(
        "--cdump",
        default=str(HERE.parent / "build" / "bench" / "cdump"),
        help="the C floor binary (bench/cdump.c; bench/make-bench builds it)",
    )
    ap.add_argument(
        "--namespaces",
        default="50x200",
        help="KxN: the namespaces row, K namespaces of N services x 10 read through one glob "
        "(contender group `namespaces`)",
    )
    ap.add_argument(
        "--live-node-exporter-below",
        type=int,
        default=10000,
        help="live rows time node_exporter only below this many services (at 10000 its connection "
        "timed out in every live run of 2026-11-29, 173 s each)",
    )
    ap.add_argument("--runs", type=int, default=5, help="timed runs per contender and size, after 1 warm-up")
    ap.add_argument(
        "--reduced-runs",
        type=int,
        default=3,
        help="runs used instead when warm-up x --runs would exceed --budget-s",
    )
    ap.add_argument(
        "--budget-s",
        type=float,
        default=150.0,
        help="about how long one contender (one scrape variant) may take at one size",
    )
    ap.add_argument(
        "--extra-scrapes", type=int, default=20, help="exporter scrapes between the two RSS readings"
    )
    ap.add_argument("--host-cpu", default="", help="the host's CPU model (the VM only sees an emulated one)")
    ap.add_argument("--host-load", default="", help="the host's load average when the bench started")
    ap.add_argument("--note", default="", help="a remark for the machine line")
    ap.add_argument("--plot", action="store_true", help="also draw bench.png here (needs matplotlib)")
    args = ap.parse_args(argv)

    if os.geteuid() != 0:
        print(
            "bench/run.py: needs root; run it in the VM: tests/vm/vm-run -- python bench/run.py",
            file=sys.stderr,
        )
        return 2
    if not os.path.exists("/proc/net/ip_vs"):
        subprocess.run(["modprobe", "ip_vs"], timeout=60)
    if not os.path.exists("/proc/net/ip_vs"):
        print("bench/run.py: this kernel has no IPVS; run it in the VM (tests/vm/vm-run)", file=sys.stderr)
        return 2
    args.contenders = {c.strip() for c in args.contenders.split(",") if c.strip()}
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    args.live_shares = [int(s) for s in args.live_shares.split(",") if s.strip()]
    outdir = Path(args.out)
    outdir.mkdir(parents=True, exist_ok=True)
    global LOG_FILE
    LOG_FILE = outdir / "bench.log"
    LOG_FILE.write_text("")
    procs = Procs()

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)

    started = time.time()
    doc = {
        "machine": machine_info(args),
        "config": {
            "sizes": sizes,
            "dests_per_service": DESTS_PER_SERVICE,
            "runs": args.runs,
            "reduced_runs": args.reduced_runs,
            "budget_s": args.budget_s,
            "warmup_runs": 1,
            "extra_scrapes": args.extra_scrapes,
            "contenders": sorted(args.contenders),
            "live_shares_percent": args.live_shares,
            "live_runs": args.live_runs,
            "traffic": args.traffic,
            "live_vary": args.live_vary,
            "mangle": args.mangle,
            "namespaces": args.namespaces,
            "runs_policy": "1 warm-up + runs; fewer runs when warm-up x runs exceeds budget_s, "
            "or when the previous size's median scaled linearly says so "
            "(then 1 run without warm-up, or skipped); see runs_note",
        },
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "results": [],
    }
    log(f"machine: {json.dumps(doc['machine'])}")
    rc = 0
    prev: dict = {}  # contender -> (size, median) at the last size it ran: plan()'s estimate
    try:
        for n in sizes:
            entry = bench_size(n, args, procs, outdir, prev)
            doc["results"].append(entry)
            # kept after every size: a run cut short (the VM's timeout) still leaves its results
            (outdir / "bench.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
            for name, c in entry.get("contenders", {}).items():
                if c.get("status") == "ok":
                    prev[name] = (n, c["median_s"])
        if "namespaces" in args.contenders and args.namespaces:
            k, n = (int(x) for x in args.namespaces.lower().split("x"))
            doc["namespaces"] = bench_namespaces(k, n, args, procs, outdir)
            (outdir / "bench.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    except KeyboardInterrupt as e:
        log(f"interrupted: {e}")
        doc["error"] = f"interrupted: {e}"
        rc = 130
    except Exception as e:
        log(f"set-up failed: {type(e).__name__}: {e}")
        doc["error"] = f"{type(e).__name__}: {e}"
        rc = 1
    finally:
        procs.stop_all()
    doc["duration_s"] = time.time() - started

    import report

    report.add_ratios(doc)
    doc["checks"] = report.checks(doc)
    doc["targets"] = report.floor_targets(doc)
    (outdir / "bench.json").write_text(json.dumps(doc, indent=2) + "\n")
    report.write_all(doc, outdir, plot_too=args.plot)
    print(report.markdown(doc), flush=True)
    for line in report.check_lines(doc):
        print(line)
    failed = [
        f"N={r['n_services']} {name}: {c['status']}"
        for r in [*doc["results"], *([doc["namespaces"]] if "namespaces" in doc else [])]
        for name, c in r.get("contenders", {}).items()
        if c.get("status", "").startswith("failed")
    ]
    for f in failed:
        print(f"CONTENDER FAILED {f}")
    if not args.plot:
        log(f"bench.png: run 'python bench/report.py {outdir}' (matplotlib is slow to start under emulation)")
    if failed and rc == 0:
        rc = 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
