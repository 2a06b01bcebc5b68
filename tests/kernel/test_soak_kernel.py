"""Soak: many scrapes of the installed exporter while IPVS and its namespace churn.

The exporter watches a namespace this test made. A churner thread keeps adding and
removing fwmark and TCP services and their destinations with ipvsadm, and a few times the
namespace itself is deleted and recreated (what a Docker restart does to ingress_sbox).
Meanwhile one client (SOAK_CLIENTS=2: two at once) scrapes /metrics back to back.
Recorded in build/vm/soak.json
(`make soak`: SOAK_SCRAPES=10000, SOAK_RECREATES=5) or build/vm/soak-short.json (the
default, part of `make test`: 400 scrapes, one recreate), with the exporter's log beside it:

- failed scrapes: an HTTP failure, no ipvs_up, a series twice (Prometheus rejects it; a
  kernel dump repeats a service under churn, which the shim must drop), a torn exposition
  (a fwmark service's ipvs_destination_total differs from its destination series), or
  ipvs_up 0 outside the windows in which the namespace is being deleted and recreated.
  Must be 0.
- RSS (VmRSS) after warm-up and at the end: growth < 1 MiB for a run of 10,000 or more
  scrapes; shorter runs only guard against a gross leak (< 4 MiB).
- open descriptors, idle, after warm-up and at the end: equal.
- p50/p99 scrape time (recorded only; TCG is slow and the machine shared).
"""

from __future__ import annotations

import http.client
import json
import os
import random
import re
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from ipvs_testlib import ipvsadm, running_exporter, sh

pytestmark = pytest.mark.kernel

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FULL = "SOAK_SCRAPES" in os.environ
SCRAPES = int(os.environ.get("SOAK_SCRAPES", "400"))
RECREATES = int(os.environ.get("SOAK_RECREATES", "1"))
SEED = int(os.environ.get("SOAK_SEED", "7"))
CLIENTS = int(os.environ.get("SOAK_CLIENTS", "1"))  # scraping at once, back to back
WARMUP = max(100, SCRAPES // 10)
RSS_BOUND_KIB = 1024 if SCRAPES >= 10000 else 4096
BASE = {256: 30000, 257: 30001}  # fwmark -> published port: marked in mangle, never churned
MAX_CHURNED = 30  # services beside the base ones
MAX_DESTS = 6  # per service
CHURN_PAUSE = 0.05  # seconds between two changes
FWMARK_EVERY = 15.0  # seconds between two changes of the set of fwmark services
BASE_SPECS = {f"-f {mark}" for mark in BASE}

_FWMARK = re.compile(r'fwmark="(\d+)"')


class Churner(threading.Thread):
    """Changes IPVS in namespace `name` until stopped, through one long-lived `ipvsadm -R`
    (it applies each line as it reads it: no process per change); recreates the namespace
    when asked, recording the window in which it is away.

    Destinations (added, removed, re-weighted) and TCP services change every CHURN_PAUSE
    seconds. The set of fwmark services changes every FWMARK_EVERY seconds: each such change
    makes the exporter re-read the mangle rules (processes; seconds under TCG), as it
    would when a swarm service is created or removed.
    """

    def __init__(self, name: str):
        super().__init__(daemon=True)
        self.ns = name
        self.rng = random.Random(SEED)
        self.stop = threading.Event()
        self.recreate_asked = threading.Event()
        self.windows: list[tuple[float, float]] = []  # (start, end) monotonic
        self.services: dict[str, list[str]] = {}  # churned "-f N" / "-t VIP:PORT" -> destinations
        self.ops = self.steps = self.fwmark_changes = 0
        self.max_services = self.max_dests = 0
        self.error: BaseException | None = None
        self.complaints: list[str] = []  # what ipvsadm said on stderr (nothing, if the model is right)
        self.proc: subprocess.Popen | None = None
        self._next = 0
        self._fwmark_at = 0.0

    def setup(self) -> None:
        """Base services with their mangle rules, as in a fresh ingress_sbox."""
        sh("ip", "link", "set", "lo", "up", ns=self.ns)
        for mark, port in BASE.items():
            sh(
                "iptables-nft",
                "-t",
                "mangle",
                "-A",
                "PREROUTING",
                "-p",
                "tcp",
                "--dport",
                str(port),
                "-j",
                "MARK",
                "--set-mark",
                str(mark),
                ns=self.ns,
            )
        self.services = {spec: [f"10.0.{int(spec[3:]) % 256}.2:0"] for spec in sorted(BASE_SPECS)}
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, "ipvsadm", "-R"],
            stdin=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        threading.Thread(target=lambda p=self.proc: self.complaints.extend(p.stderr), daemon=True).start()
        for spec, dests in self.services.items():
            self.ipvsadm(f"-A {spec} -s rr", *(f"-a {spec} -r {d} -m" for d in dests))

    def finish(self) -> None:
        """Let ipvsadm apply what it has read and exit."""
        self.proc.stdin.close()
        assert self.proc.wait(120) == 0, f"ipvsadm -R exited with {self.proc.returncode}: {self.complaints}"

    def ipvsadm(self, *lines: str) -> None:
        self.proc.stdin.write("".join(f"{line}\n" for line in lines))
        self.ops += len(lines)

    def _new_dest(self, spec: str) -> str:
        self._next += 1
        ip = f"10.{100 + self._next // 60000 % 100}.{self._next // 250 % 240}.{self._next % 250 + 1}"
        return f"{ip}:0" if spec.startswith("-f") else f"{ip}:8080"

    def _add_service(self, spec: str) -> None:
        rng = self.rng
        dests = [self._new_dest(spec) for _ in range(rng.randint(0, 3))]
        self.ipvsadm(
            f"-A {spec} -s {rng.choice(['rr', 'wrr', 'lc', 'sh'])}",
            *(f"-a {spec} -r {d} -m -w {rng.randint(0, 5)}" for d in dests),
        )
        self.services[spec] = dests

    def step(self) -> None:
        rng, svcs = self.rng, self.services
        churned = sorted(k for k in svcs if k not in BASE_SPECS)
        marks = [k for k in churned if k.startswith("-f")]
        tcp = [k for k in churned if k.startswith("-t")]
        now = time.monotonic()
        self._next += 1
        if now - self._fwmark_at >= FWMARK_EVERY:  # the fwmark set changes
            self._fwmark_at = now
            self.fwmark_changes += 1
            if len(marks) < 3 or (len(marks) < MAX_CHURNED // 2 and rng.random() < 0.5):
                self._add_service(f"-f {1000 + self._next % 60000}")
            else:
                spec = rng.choice(marks)
                self.ipvsadm(f"-D {spec}")
                del svcs[spec]
            return
        r = rng.random()
        if r < 0.15 and len(tcp) < MAX_CHURNED // 2 or not churned:
            self._add_service(f"-t 10.20.{self._next // 250 % 250}.{self._next % 250 + 1}:80")
        elif r < 0.25 and tcp:
            spec = rng.choice(tcp)
            self.ipvsadm(f"-D {spec}")
            del svcs[spec]
        else:
            spec = rng.choice(churned)
            dests = svcs[spec]
            if dests and (r < 0.55 or len(dests) >= MAX_DESTS):
                d = dests.pop(rng.randrange(len(dests)))
                self.ipvsadm(f"-d {spec} -r {d}")
            elif dests and r < 0.7:
                self.ipvsadm(f"-e {spec} -r {rng.choice(dests)} -m -w {rng.randint(0, 9)}")
            else:
                d = self._new_dest(spec)
                self.ipvsadm(f"-a {spec} -r {d} -m -w {rng.randint(0, 5)}")
                dests.append(d)
        self.max_services = max(self.max_services, len(svcs))
        self.max_dests = max(self.max_dests, sum(map(len, svcs.values())))

    def recreate(self) -> None:
        start = time.monotonic()
        self.finish()
        sh("ip", "netns", "del", self.ns)
        sh("ip", "netns", "add", self.ns)
        self.setup()
        self.windows.append((start, time.monotonic()))

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                if self.recreate_asked.is_set():
                    self.recreate_asked.clear()
                    self.recreate()
                self.step()
                self.steps += 1
                self.stop.wait(CHURN_PAUSE)
            self.finish()
        except BaseException as e:  # reported by the test
            self.error = e


def fetch(url: str) -> tuple[int, str]:
    """One GET over a fresh loopback connection (the server closes it after each reply)."""
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    try:
        conn.request("GET", u.path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def check_exposition(body: str) -> tuple[float | None, str]:
    """(ipvs_up, "" or why the exposition is torn)."""
    up, totals, series, seen = None, {}, {}, set()
    for line in body.splitlines():
        if not line or line[0] == "#":
            continue
        name_labels, _, value = line.rpartition(" ")
        if name_labels in seen:
            return up, f"{name_labels} twice"
        seen.add(name_labels)
        name = name_labels.partition("{")[0]
        if name == "ipvs_up":
            up = float(value)
        elif name == "ipvs_destination_total":
            totals[_FWMARK.search(name_labels).group(1)] = float(value)
        elif name == "ipvs_destination_connections_total":
            mark = _FWMARK.search(name_labels).group(1)
            series[mark] = series.get(mark, 0) + 1
    for mark, n in totals.items():
        if series.get(mark, 0) != n:
            return (
                up,
                f"fwmark {mark}: ipvs_destination_total {n:g}, {series.get(mark, 0)} destination series",
            )
    return up, ""


def vm_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"^VmRSS:\s+(\d+) kB", f.read(), re.M).group(1))


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def test_scrapes_survive_churn_and_namespace_recreation(netns):
    name, path = netns
    churner = Churner(name)
    churner.setup()
    recreate_at = {WARMUP + (SCRAPES - WARMUP) * (k + 1) // (RECREATES + 1) for k in range(RECREATES)}
    times, failures, up0 = [], [], []
    rss, fds = {}, {}
    with running_exporter("--namespace-path", path) as (url, proc):
        pid = proc.pid

        def one(i: int) -> None:
            if i in recreate_at:
                churner.recreate_asked.set()  # the churner does it between two of its steps
            t0 = time.monotonic()
            torn = ""
            try:
                status, body = fetch(url)
                up, torn = check_exposition(body) if status == 200 else (None, "")
                why = (
                    f"HTTP {status}"
                    if status != 200
                    else "no ipvs_up"
                    if up is None
                    else torn or ("ipvs_up 0" if up == 0 else "")
                )
            except OSError as e:
                why = f"{type(e).__name__}: {e}"
            t1 = time.monotonic()
            times.append(t1 - t0)
            if why == "ipvs_up 0":
                up0.append((i, t0, t1))  # judged against the recreate windows at the end
            elif why:
                failures.append((i, why))
                if torn and len(failures) <= 3:  # the body, for whoever looks into it
                    Path(f"build/vm/soak-torn-{i}.txt").write_text(body)
            if i % 50 == 0:
                rss[i], fds[i] = vm_rss_kib(pid), open_fds(pid)

        def scrapes(first: int, end: int) -> None:
            """Scrapes first..end-1 from CLIENTS threads at once, back to back."""
            indices, lock = iter(range(first, end)), threading.Lock()

            def client() -> None:
                while churner.error is None and proc.poll() is None:
                    with lock:
                        i = next(indices, None)
                    if i is None:
                        return
                    one(i)

            threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert churner.error is None, f"the churner failed: {churner.error}"
            assert proc.poll() is None, "the exporter died"

        churner.start()
        t_start = time.monotonic()
        try:
            scrapes(0, WARMUP)
            time.sleep(1)  # idle: no connection of ours is open
            rss["warm"], fds["warm"] = vm_rss_kib(pid), open_fds(pid)
            scrapes(WARMUP, SCRAPES)
        finally:
            elapsed = time.monotonic() - t_start
            churner.stop.set()
            churner.join(120)
            if churner.proc.poll() is None:  # the churner failed before closing it
                churner.proc.kill()
        time.sleep(1)
        rss["end"], fds["end"] = vm_rss_kib(pid), open_fds(pid)
        with open(f"/tmp/exporter-{urlsplit(url).port}.log") as f:
            log = f.read()
    out = os.path.join(REPO, "build", "vm", "soak" if FULL else "soak-short")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out + "-exporter.log", "w") as f:
        f.write(log)
    # ipvs_up 0 is right only while the namespace is away: the scrape overlaps a window
    in_window = [(i, t0, t1) for i, t0, t1 in up0 if any(w0 <= t1 and t0 <= w1 for w0, w1 in churner.windows)]
    failures += [
        (i, "ipvs_up 0 outside a recreate window") for i, t0, t1 in up0 if (i, t0, t1) not in in_window
    ]
    failures.sort()
    # the churner's model is what the kernel has: every change was applied
    kernel = {key: {f"{a}:{p}" for a, p in svc.dests} for key, svc in ipvsadm(path).items()}
    model = {
        ("FWM " if spec.startswith("-f") else "TCP ") + spec[3:]: set(dests)
        for spec, dests in churner.services.items()
    }
    figures = {
        "scrapes": SCRAPES,
        "clients": CLIENTS,
        "recreates": len(churner.windows),
        "warmup_scrapes": WARMUP,
        "elapsed_s": round(elapsed, 1),
        "scrapes_per_s": round(SCRAPES / elapsed, 1),
        "failed_scrapes": len(failures),
        "first_failures": failures[:10],
        "up0_scrapes_in_recreate_windows": len(in_window),
        "recreate_windows_s": [round(w1 - w0, 2) for w0, w1 in churner.windows],
        "churn_steps": churner.steps,
        "ipvsadm_commands": churner.ops,
        "fwmark_set_changes": churner.fwmark_changes,
        "max_services": churner.max_services,
        "max_destinations": churner.max_dests,
        "scrape_ms": {
            "p50": round(percentile(times, 50) * 1000, 1),
            "p99": round(percentile(times, 99) * 1000, 1),
            "max": round(max(times) * 1000, 1),
        },
        "rss_kib": {
            "warm": rss["warm"],
            "end": rss["end"],
            "growth": rss["end"] - rss["warm"],
            "max": max(rss.values()),
        },
        "fds": {"warm": fds["warm"], "end": fds["end"], "min": min(fds.values()), "max": max(fds.values())},
        "log_lines": {lvl: len(re.findall(rf"level={lvl}\b", log)) for lvl in ("info", "warn", "error")},
    }
    with open(out + ".json", "w") as f:
        json.dump(figures, f, indent=1)
    print(f"\nsoak: {json.dumps(figures)}")

    assert churner.error is None, f"the churner failed: {churner.error}"
    assert not churner.complaints, f"ipvsadm -R said: {churner.complaints[:10]}"
    assert kernel == model, f"kernel {kernel}\nmodel {model}"
    assert len(churner.windows) == RECREATES
    assert churner.steps > 0
    assert not failures, f"{len(failures)} failed scrapes, first: {failures[:10]}"
    assert fds["end"] == fds["warm"], f"open descriptors went from {fds['warm']} to {fds['end']}"
    growth = rss["end"] - rss["warm"]
    assert growth < RSS_BOUND_KIB, f"RSS grew by {growth} KiB after warm-up over {SCRAPES - WARMUP} scrapes"
    # a lost thread (ipvs.ThreadLost) would have ended the process (exit 70): scrapes() checks it lives
    assert "Traceback" not in log, log[-4000:]
