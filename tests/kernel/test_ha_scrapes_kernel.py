"""An HA pair under load: two exporters on the same namespaces, many scrapers at once, every
body whole and consistent, and counters exact end to end.

A balancer namespace holds HA_SERVICES (1,000; `make soak`: 2,000) fwmark services with ten
real servers each (NAT to addresses behind a dummy device, where the packets end). A client
namespace sends UDP through a veth into them: every second a changing share of the services
gets a packet, so counters and rates move between scrapes. A churner deletes and re-creates
services in a separate mark range (CHURN_LO and up). A second, small namespace is deleted and
re-created every 1.5 s (what a Docker restart does to ingress_sbox), so reads of it fail and
succeed in turn. Two exporters read both namespaces: one with the default cache of compressed
text, one with a budget so small (1 MB) that families go over it. Each has HA_SCRAPERS
scrapers (separate processes, as two Prometheus servers are), gzip and plain mixed, back to
back for HA_SECONDS seconds.

Every body must be HTTP 200, decompress with a correct gzip CRC and length, end with a
newline, hold no series twice; say ipvs_up 1 for the balancer; for each namespace it shows up,
have ipvs_services_total equal to its services' series and each ipvs_destination_total equal
to that service's destination series; show the small namespace's IPVS families exactly when
its ipvs_up is 1 (one scrape's read, not another's); and within each scraper no counter of a
balancer service outside the churned range may go backwards. HA_PARSE_SAMPLES bodies of
HA_PARSE_SCRAPERS scrapers of each exporter (by default a gzip body of the default exporter
and a plain one of the small-budget one; a scraper's first body, then spread over the run)
are kept and, after the run, parsed by prometheus_client's parser and checked by `promtool
check metrics` (both take a minute or more on a body of this size under emulation: during the
run they would leave the scrapers a body or two each).

Meanwhile, exactly K packets (from a new source port: one new connection) go to each of a few
services that get no other traffic; afterwards each exporter's ipvs_service_packets_in_total
and ipvs_service_connections_total for them rose by exactly what the kernel counted (ipvsadm
--stats --exact), in gzip and plain bodies alike.

Figures: build/vm/ha-scrapes.json (`make soak`: HA_SECONDS=600) or ha-scrapes-short.json.
"""

from __future__ import annotations

import gzip
import http.client
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from urllib.parse import urlsplit

import pytest
from ipvs_testlib import running_exporter, sh

pytestmark = pytest.mark.kernel

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FULL = "HA_SECONDS" in os.environ
SECONDS = float(os.environ.get("HA_SECONDS", "60"))
SERVICES = int(os.environ.get("HA_SERVICES", "1000"))
DESTS = 10
SCRAPERS = int(os.environ.get("HA_SCRAPERS", "4"))  # per exporter
PARSE_SAMPLES = int(os.environ.get("HA_PARSE_SAMPLES", "1"))  # bodies per scraper parsed afterwards
# of each exporter's, from its n-th scraper on (scrapers alternate gzip and plain): one is a
# gzip body of the default exporter and a plain one of the small-budget one
PARSE_SCRAPERS = int(os.environ.get("HA_PARSE_SCRAPERS", "1"))
SCRAPE_TIMEOUT = 120  # seconds, as a scraper under emulation would set it
FIRST_MARK = 1000
EXACT = {FIRST_MARK: 7, FIRST_MARK + 1: 13, FIRST_MARK + 2: 29}  # fwmark -> packets sent, once
CHURN_LO, CHURN_N = 60000, 40
FLAP_MARKS = (7, 8, 9)  # the services of the small namespace that comes and goes
FIRST_PORT = 20000  # UDP port FIRST_PORT + i is marked FIRST_MARK + i
SHARES = (0.1, 0.3, 1.0, 0.05, 0.5)  # of the services that get a packet, round after round
CLIENT_IP, BALANCER_IP = "198.18.10.2", "198.18.10.1"

_FWMARK = re.compile(r'fwmark="(\d+)"')
_NAMESPACE = re.compile(r'namespace="([^"]*)"')


def dests_of(i: int) -> list[str]:
    return [f"198.18.{20 + j}.{i % 250 + 2}:0" for j in range(DESTS)]


# A sender in the client namespace: each line "SPORT PORT:N ..." sends N packets to each PORT
# from source port SPORT, then answers "ok" (so the test knows they are out).
SENDER = rf"""
import socket, sys
for line in sys.stdin:
    sport, *pairs = line.split()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("{CLIENT_IP}", int(sport)))
    for pair in pairs:
        port, n = pair.split(":")
        for _ in range(int(n)):
            s.sendto(b"x" * 32, ("{BALANCER_IP}", int(port)))
    s.close()
    print("ok", flush=True)
"""


class Balancer:
    """The two namespaces, the services, the nft map marking UDP ports, the sender."""

    def __init__(self) -> None:
        tag = f"ha{os.getpid() % 10000}"
        self.lb, self.cl, self.fl = f"{tag}lb", f"{tag}cl", f"{tag}fl"
        self.path = f"/run/netns/{self.lb}"
        self.flap_path = f"/run/netns/{self.fl}"
        self.sender: subprocess.Popen | None = None
        self.lock = threading.Lock()

    def flap(self) -> None:
        """The small namespace away, then back with its FLAP_MARKS services (a Docker restart)."""
        sh("ip", "netns", "del", self.fl, check=False)
        sh("ip", "netns", "add", self.fl)
        # an address of its own first: IPVS refuses a real server (EINVAL) while the
        # namespace has no local routing table to look the address up in
        sh("ip", "link", "set", "lo", "up", ns=self.fl)
        lines = "".join(f"-A -f {m} -s rr\n-a -f {m} -r 198.18.40.{m}:0 -m\n" for m in FLAP_MARKS)
        sh("ipvsadm", "-R", ns=self.fl, input=lines)

    def build(self) -> None:
        for ns in (self.lb, self.cl):
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "set", "lo", "up", ns=ns)
        sh(
            "ip",
            "link",
            "add",
            "hac0",
            "netns",
            self.cl,
            "type",
            "veth",
            "peer",
            "name",
            "hab0",
            "netns",
            self.lb,
        )
        sh("ip", "addr", "add", f"{CLIENT_IP}/24", "dev", "hac0", ns=self.cl)
        sh("ip", "addr", "add", f"{BALANCER_IP}/24", "dev", "hab0", ns=self.lb)
        for ns, dev in ((self.cl, "hac0"), (self.lb, "hab0")):
            sh("ip", "link", "set", dev, "up", ns=ns)
        # the real servers' addresses lead into a dummy device, where NAT'ed packets end
        sh("ip", "link", "add", "rs0", "type", "dummy", ns=self.lb)
        sh("ip", "addr", "add", "198.18.16.1/20", "dev", "rs0", ns=self.lb)
        sh("ip", "link", "set", "rs0", "up", ns=self.lb)
        sh("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=self.lb)
        # no ARP resolution in the way of a burst: a permanent neighbour entry
        mac = sh("cat", "/sys/class/net/hab0/address", ns=self.lb).strip()
        sh(
            "ip",
            "neigh",
            "replace",
            BALANCER_IP,
            "lladdr",
            mac,
            "dev",
            "hac0",
            "nud",
            "permanent",
            ns=self.cl,
        )
        elements = ", ".join(f"{FIRST_PORT + i} : {FIRST_MARK + i}" for i in range(SERVICES))
        nft = (
            "table ip ha {\n"
            f"  map marks {{ type inet_service : mark; elements = {{ {elements} }} }}\n"
            "  chain pre { type filter hook prerouting priority mangle; meta l4proto udp meta mark set udp dport map @marks; }\n"
            "}\n"
        )
        sh("nft", "-f", "-", ns=self.lb, input=nft)
        lines = []
        for i in range(SERVICES):
            mark = FIRST_MARK + i
            lines.append(f"-A -f {mark} -s rr")
            lines += [f"-a -f {mark} -r {d} -m" for d in dests_of(i)]
        sh("ipvsadm", "-R", ns=self.lb, input="\n".join(lines) + "\n")
        self.flap()
        self.sender = subprocess.Popen(
            ["ip", "netns", "exec", self.cl, "python3", "-c", SENDER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )

    def send(self, sport: int, packets: dict[int, int]) -> None:
        """packets: fwmark -> how many, all from source port sport; returns once they are sent."""
        line = " ".join(f"{FIRST_PORT + mark - FIRST_MARK}:{n}" for mark, n in packets.items())
        with self.lock:
            self.sender.stdin.write(f"{sport} {line}\n")
            assert self.sender.stdout.readline().strip() == "ok", "the sender died"

    def stats(self, mark: int) -> tuple[int, int]:
        """(connections, incoming packets) of a fwmark service, as `ipvsadm --stats --exact` says."""
        out = sh("ipvsadm", "-Ln", "--stats", "--exact", "-f", str(mark), ns=self.lb)
        for line in out.splitlines():
            if line.startswith("FWM"):
                conns, inpkts = line.split()[2:4]
                return int(conns), int(inpkts)
        raise AssertionError(f"no FWM {mark} in {out}")

    def close(self) -> None:
        if self.sender is not None:
            self.sender.stdin.close()
            self.sender.wait(30)
        for ns in (self.lb, self.cl, self.fl):
            sh("ip", "netns", "del", ns, check=False)


def fetch(url: str, gz: bool) -> tuple[int, str, bytes]:
    """One GET as Prometheus makes it (with its scrape timeout, which sets how long the exporter
    waits for the namespaces it reads in parallel): (status, Content-Encoding, raw body)."""
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=300)
    headers = {"X-Prometheus-Scrape-Timeout-Seconds": str(SCRAPE_TIMEOUT)}
    if gz:
        headers["Accept-Encoding"] = "gzip"
    try:
        conn.request("GET", u.path, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Encoding") or "", resp.read()
    finally:
        conn.close()


def body_text(url: str, gz: bool) -> str:
    """A body, decompressed (gzip.decompress checks the CRC and the length)."""
    status, encoding, raw = fetch(url, gz)
    assert status == 200, f"HTTP {status}"
    assert encoding == ("gzip" if gz else ""), f"Content-Encoding {encoding!r}"
    return (gzip.decompress(raw) if gz else raw).decode()


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}\n]*\})? (\S+)$", re.M)
_COUNTER = re.compile(r"^# TYPE (\S+) counter$", re.M)


def check_body(text: str, last: dict[str, float], main: str, flap: str = "") -> str:
    """'' or why the body is bad; updates last (service-level counter series of the main
    namespace outside the churned range -> value) and says when one went backwards. The
    flapping namespace may be up or down, but its ipvs_up must agree with its IPVS families
    in the same body. Regular expressions over the whole text rather than a loop per line: a
    body has ~10^5 lines and this runs emulated."""
    if not text.endswith("\n"):
        return "no newline at the end"
    samples = _SAMPLE.findall(text)
    lines = text.count("\n") - text.count("\n#") - text.startswith("#")
    if len(samples) != lines:
        return f"{lines - len(samples)} lines are neither samples nor comments"
    series = [name + labels for name, labels, _ in samples]
    if len(set(series)) != len(series):
        seen: set[str] = set()
        return next(f"{k} twice" for k in series if k in seen or seen.add(k))  # type: ignore[func-returns-value]
    by_name: dict[tuple[str, str], list[tuple[str, str]]] = {}  # (name, namespace) -> (labels, value)
    for name, labels, value in samples:
        ns = _NAMESPACE.search(labels)
        by_name.setdefault((name, ns.group(1) if ns else ""), []).append((labels, value))
    for ns in (main, flap) if flap else (main,):
        up = [float(v) for _, v in by_name.get(("ipvs_up", ns), [])]
        total = [float(v) for _, v in by_name.get(("ipvs_services_total", ns), [])]
        services = len(by_name.get(("ipvs_service_connections_total", ns), []))
        if up == [0.0] and ns == flap:  # the namespace is away: nothing of it but its health
            if total or services:
                return f"{ns}: ipvs_up 0 beside {services} service series of it"
            continue
        if up != [1.0]:
            return f"{ns}: ipvs_up {up}"
        if total != [services]:
            return f"{ns}: ipvs_services_total {total}, {services} service series"
        per_mark: dict[str, int] = {}
        for labels, _ in by_name.get(("ipvs_destination_connections_total", ns), []):
            mark = _FWMARK.search(labels).group(1)
            per_mark[mark] = per_mark.get(mark, 0) + 1
        for labels, value in by_name.get(("ipvs_destination_total", ns), []):
            mark = _FWMARK.search(labels).group(1)
            if per_mark.get(mark, 0) != float(value):
                return f"{ns} fwmark {mark}: ipvs_destination_total {value}, {per_mark.get(mark, 0)} destination series"
    for name in set(_COUNTER.findall(text)):
        if not name.startswith("ipvs_"):
            continue
        for labels, value in by_name.get((name, main), []):
            m = _FWMARK.search(labels)
            if m is None or int(m.group(1)) >= CHURN_LO or "address=" in labels:
                continue
            key, v = name + labels, float(value)
            if v < last.get(key, 0.0):
                return f"{key} went back from {last[key]} to {v}"
            last[key] = v
    return ""


def parse_check(text: str) -> str:
    """'' or what prometheus_client's parser or promtool said."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        for _ in text_string_to_metric_families(text):
            pass
    except Exception as e:  # the finding itself
        return f"prometheus_client: {e}"
    res = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=900
    )
    # what it may say: the original exporter's gauges named *_total (kept for compatibility)
    said = [line for line in (res.stdout + res.stderr).splitlines() if line.strip()]
    other = [line for line in said if 'non-counter metrics should not have "_total" suffix' not in line]
    return f"promtool: {other[:3]}" if other else ""


def parse_file(path: str) -> str:
    with open(path) as f:
        return parse_check(f.read())


def scraper(url: str, gz: bool, start: float, stop, keep: str, namespaces: tuple[str, str], out) -> None:
    """One scraper (a process of its own): back to back until stop is set, every body checked; keeps
    PARSE_SAMPLES of its bodies (the first, then spread over the run) as files named keep-N
    for parse_check() after the run; puts its summary on out."""
    last: dict[str, float] = {}
    bodies = 0
    bad: list[str] = []
    kept: list[str] = []
    times: list[float] = []
    every = max(1.0, SECONDS / max(1, PARSE_SAMPLES))
    next_keep = start
    while time.monotonic() < start:
        time.sleep(0.05)
    while not stop.is_set():
        t0 = time.monotonic()
        try:
            text = body_text(url, gz)
            why = check_body(text, last, *namespaces)
            if not why and keep and t0 >= next_keep and len(kept) < PARSE_SAMPLES:
                kept.append(f"{keep}-{len(kept)}")
                with open(kept[-1], "w") as f:
                    f.write(text)
                next_keep = t0 + every
        except Exception as e:  # every failure is a finding
            why = f"{type(e).__name__}: {e}"
        times.append(time.monotonic() - t0)
        bodies += 1
        if why:
            bad.append(why)
    out.put({"url": url, "gzip": gz, "bodies": bodies, "bad": bad, "kept": kept, "times": times})


def exporter_values(url: str, gz: bool) -> dict[int, tuple[float, float]]:
    """fwmark -> (ipvs_service_connections_total, ipvs_service_packets_in_total) of the EXACT marks."""
    text = body_text(url, gz)
    got: dict[int, dict[str, float]] = {}
    for line in text.splitlines():
        name = line.partition("{")[0]
        if name in ("ipvs_service_connections_total", "ipvs_service_packets_in_total"):
            mark = int(_FWMARK.search(line).group(1))
            if mark in EXACT:
                got.setdefault(mark, {})[name] = float(line.rpartition(" ")[2])
    return {
        m: (v["ipvs_service_connections_total"], v["ipvs_service_packets_in_total"]) for m, v in got.items()
    }


def settled(
    lab: Balancer, before: dict[int, tuple[int, int]], timeout: float = 120.0
) -> dict[int, tuple[int, int]]:
    """The EXACT marks' kernel counters once they moved from `before` and the estimator has
    caught up (two reads 3 s apart agree)."""
    deadline = time.monotonic() + timeout
    prev = None
    while time.monotonic() < deadline:
        now = {m: lab.stats(m) for m in EXACT}
        if now == prev and now != before:
            return now
        prev = now
        time.sleep(3)
    raise AssertionError(f"the kernel's counters did not settle: {prev}")


def progress(message: str) -> None:
    """A line on the console while the test runs (it takes minutes under emulation)."""
    print(f"ha-scrapes: {time.strftime('%H:%M:%S')} {message}", flush=True)


def test_ha_pair_scraping_at_once_gets_whole_consistent_bodies_and_exact_counters():
    lab = Balancer()
    keep = tempfile.mkdtemp(prefix="ha-bodies-")
    stop_traffic = threading.Event()
    stop = None
    errors: list[BaseException] = []
    try:
        lab.build()
        progress(f"{SERVICES} services x {DESTS} real servers loaded")
        args = ("--namespace-path", lab.path, "--namespace-path", lab.flap_path)
        with (
            running_exporter(*args, timeout=600) as (url_default, _),
            running_exporter(*args, timeout=600, env={"INGRESS_IPVS_EXPORTER_CACHE_MB": "1"}) as (
                url_small,
                _,
            ),
        ):
            for url in (url_default, url_small):  # both have read the whole namespace once
                body_text(url, True)
            progress("both exporters answer; scraping")
            ctx = multiprocessing.get_context("fork")
            out = ctx.Queue()
            start = time.monotonic() + 2
            stop = ctx.Event()  # set once SECONDS have passed and the exact counts were checked
            procs = [
                ctx.Process(
                    target=scraper,
                    args=(
                        url,
                        i % 2 == 0,
                        start,
                        stop,
                        f"{keep}/{n}-{i}" if (i - n) % SCRAPERS < PARSE_SCRAPERS else "",
                        (lab.path, lab.flap_path),
                        out,
                    ),
                    daemon=True,
                )
                for n, url in enumerate((url_default, url_small))
                for i in range(SCRAPERS)
            ]
            for p in procs:
                p.start()

            def traffic() -> None:
                rounds = 0
                movable = [FIRST_MARK + i for i in range(len(EXACT), SERVICES)]
                while not stop_traffic.wait(1.0):
                    share = SHARES[rounds % len(SHARES)]
                    step = max(1, round(1 / share))
                    lab.send(41000 + rounds % 10, dict.fromkeys(movable[rounds % step :: step], 1))
                    rounds += 1

            def churn() -> None:
                k = 0
                proc = subprocess.Popen(
                    ["ip", "netns", "exec", lab.lb, "ipvsadm", "-R"], stdin=subprocess.PIPE, text=True
                )
                for i in range(CHURN_N):
                    proc.stdin.write(
                        f"-A -f {CHURN_LO + i} -s rr\n-a -f {CHURN_LO + i} -r 198.18.30.{i + 2}:0 -m\n"
                    )
                while not stop_traffic.wait(0.2):
                    mark = CHURN_LO + k % CHURN_N
                    proc.stdin.write(f"-D -f {mark}\n-A -f {mark} -s wrr\n")
                    proc.stdin.write(
                        "".join(f"-a -f {mark} -r 198.18.30.{d + 2}:0 -m\n" for d in range(k % 3 + 1))
                    )
                    proc.stdin.flush()
                    k += 1
                proc.stdin.close()
                proc.wait(120)

            def guarded(fn):
                def run() -> None:
                    try:
                        fn()
                    except BaseException as e:  # reported by the test
                        errors.append(e)

                return threading.Thread(target=run, daemon=True)

            def flapping() -> None:
                while not stop_traffic.wait(1.5):
                    lab.flap()

            workers = [guarded(traffic), guarded(churn), guarded(flapping)]
            for t in workers:
                t.start()
            # counters exact end to end, while the scrapers run
            time.sleep(max(0.0, start + SECONDS / 3 - time.monotonic()))
            before = {m: lab.stats(m) for m in EXACT}
            seen_before = {
                (u, gz): exporter_values(u, gz) for u in (url_default, url_small) for gz in (True, False)
            }
            for key, values in seen_before.items():
                assert values == {m: (float(c), float(p)) for m, (c, p) in before.items()}, (
                    key,
                    values,
                    before,
                )
            progress("exporters agree with ipvsadm; sending the exact packets")
            lab.send(39000, EXACT)
            after = settled(lab, before)
            for m, k in EXACT.items():
                assert after[m][1] - before[m][1] == k, (
                    f"the kernel counted {after[m][1] - before[m][1]} packets of {k} to {m}"
                )
                assert after[m][0] - before[m][0] == 1, (
                    f"fwmark {m}: {after[m][0] - before[m][0]} new connections"
                )
            seen_after = {
                (u, gz): exporter_values(u, gz) for u in (url_default, url_small) for gz in (True, False)
            }
            for key, values in seen_after.items():
                rose = {
                    m: (values[m][0] - seen_before[key][m][0], values[m][1] - seen_before[key][m][1])
                    for m in EXACT
                }
                assert rose == {m: (1.0, float(k)) for m, k in EXACT.items()}, (key, rose)
            progress("exact counts seen; waiting for the scrapers")
            time.sleep(max(0.0, start + SECONDS - time.monotonic()))
            stop.set()
            results = [out.get(timeout=SECONDS + 900) for _ in procs]
            for p in procs:
                p.join(60)
            stop_traffic.set()
            for t in workers:
                t.join(120)
        progress("parsing the kept bodies")
        kept = [path for r in results for path in r["kept"]]
        with multiprocessing.get_context("fork").Pool(2) as pool:  # the VM's two CPUs
            verdicts = dict(zip(kept, pool.map(parse_file, kept)))
        for r in results:
            r["parsed"] = len(r["kept"])
            r["bad"] += [verdicts[path] for path in r["kept"] if verdicts[path]]
    finally:
        stop_traffic.set()
        if stop is not None:
            stop.set()
        lab.close()
        shutil.rmtree(keep, ignore_errors=True)
    times = sorted(t for r in results for t in r["times"])
    figures = {
        "seconds": SECONDS,
        "services": SERVICES,
        "destinations": SERVICES * DESTS,
        "scrapers_per_exporter": SCRAPERS,
        "bodies": sum(r["bodies"] for r in results),
        "bodies_parsed_and_promtool_checked": sum(r["parsed"] for r in results),
        "bad_bodies": sum(len(r["bad"]) for r in results),
        "first_bad": [b for r in results for b in r["bad"]][:10],
        "per_scraper": [{k: r[k] for k in ("url", "gzip", "bodies", "parsed")} for r in results],
        "scrape_and_check_s": {"p50": round(times[len(times) // 2], 2), "max": round(times[-1], 2)}
        if times
        else {},
        "exact": {str(m): k for m, k in EXACT.items()},
    }
    out_path = os.path.join(REPO, "build", "vm", "ha-scrapes" + ("" if FULL else "-short") + ".json")
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    with open(out_path, "w") as f:
        json.dump(figures, f, indent=1)
    print(f"\nha-scrapes: {json.dumps({k: v for k, v in figures.items() if k != 'per_scraper'})}")
    assert not errors, f"traffic or churn failed: {errors[0]!r}"
    assert all(r["bodies"] >= 2 for r in results), figures["per_scraper"]
    assert figures["bodies_parsed_and_promtool_checked"] >= 2 * min(PARSE_SCRAPERS, SCRAPERS), figures[
        "per_scraper"
    ]
    assert figures["bad_bodies"] == 0, figures["first_bad"]
