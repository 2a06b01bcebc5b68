"""An HA pair under load: two exporters on one namespace, many scrapers at once, every body
whole and consistent, and counters exact end to end.

A balancer namespace holds HA_SERVICES fwmark services with ten real servers each (NAT to
addresses behind a dummy device, where the packets end). A client namespace sends UDP through
a veth into them: every second a changing share of the services gets a packet, so counters
and rates move between scrapes. A churner deletes and re-creates services in a separate mark
range (CHURN_LO and up). Two exporters read the namespace: one with the default cache of
compressed text, one with a budget so small (1 MB) that families go over it. Each has
HA_SCRAPERS scrapers (separate processes, as two Prometheus servers are), gzip and plain
mixed, back to back for HA_SECONDS seconds.

Every body must be HTTP 200, decompress with a correct gzip CRC and length, end with a
newline, hold no series twice, say ipvs_up 1, have ipvs_services_total equal to its
services' series and each ipvs_destination_total equal to that service's destination series,
and (within each scraper) no counter of a service outside the churned range may go backwards.
Every HA_PARSE_EVERY-th body of each scraper, and its first, is also parsed by
prometheus_client's parser and checked by `promtool check metrics` (both are slow on bodies of
this size under emulation).

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
import subprocess
import threading
import time
from urllib.parse import urlsplit

import pytest
from ipvs_testlib import running_exporter, sh

pytestmark = pytest.mark.kernel

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FULL = "HA_SECONDS" in os.environ
SECONDS = float(os.environ.get("HA_SECONDS", "60"))
SERVICES = int(os.environ.get("HA_SERVICES", "2000"))
DESTS = 10
SCRAPERS = int(os.environ.get("HA_SCRAPERS", "4"))  # per exporter
PARSE_EVERY = int(os.environ.get("HA_PARSE_EVERY", "5"))
FIRST_MARK = 1000
EXACT = {FIRST_MARK: 7, FIRST_MARK + 1: 13, FIRST_MARK + 2: 29}  # fwmark -> packets sent, once
CHURN_LO, CHURN_N = 60000, 40
FIRST_PORT = 20000  # UDP port FIRST_PORT + i is marked FIRST_MARK + i
SHARES = (0.1, 0.3, 1.0, 0.05, 0.5)  # of the services that get a packet, round after round
CLIENT_IP, BALANCER_IP = "198.18.10.2", "198.18.10.1"

_FWMARK = re.compile(r'fwmark="(\d+)"')


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
        self.lb, self.cl = f"{tag}lb", f"{tag}cl"
        self.path = f"/run/netns/{self.lb}"
        self.sender: subprocess.Popen | None = None
        self.lock = threading.Lock()

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
        for ns in (self.lb, self.cl):
            sh("ip", "netns", "del", ns, check=False)


def fetch(url: str, gz: bool) -> tuple[int, str, bytes]:
    """One GET as Prometheus makes it: (status, Content-Encoding, raw body)."""
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=300)
    try:
        conn.request("GET", u.path, headers={"Accept-Encoding": "gzip"} if gz else {})
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


def check_body(text: str, last: dict[str, float]) -> str:
    """'' or why the body is bad; updates last (counter series outside the churned range ->
    value) and says when one went backwards."""
    if not text.endswith("\n"):
        return "no newline at the end"
    counters, seen, up = set(), set(), None
    services_total, service_series = None, 0
    totals: dict[str, float] = {}
    dest_series: dict[str, int] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            if kind == "counter":
                counters.add(name)
            continue
        if not line or line[0] == "#":
            continue
        name_labels, _, value = line.rpartition(" ")
        if name_labels in seen:
            return f"{name_labels} twice"
        seen.add(name_labels)
        name = name_labels.partition("{")[0]
        if name == "ipvs_up":
            up = float(value)
        elif name == "ipvs_services_total":
            services_total = float(value)
        elif name == "ipvs_service_connections_total":
            service_series += 1
        elif name == "ipvs_destination_total":
            totals[_FWMARK.search(name_labels).group(1)] = float(value)
        elif name == "ipvs_destination_connections_total":
            mark = _FWMARK.search(name_labels).group(1)
            dest_series[mark] = dest_series.get(mark, 0) + 1
        if name in counters and name.startswith("ipvs_"):
            m = _FWMARK.search(name_labels)
            if m and int(m.group(1)) < CHURN_LO:
                v = float(value)
                if v < last.get(name_labels, 0.0):
                    return f"{name_labels} went back from {last[name_labels]} to {v}"
                last[name_labels] = v
    if up != 1.0:
        return f"ipvs_up {up}"
    if services_total != service_series:
        return f"ipvs_services_total {services_total}, {service_series} service series"
    for mark, n in totals.items():
        if dest_series.get(mark, 0) != n:
            return (
                f"fwmark {mark}: ipvs_destination_total {n:g}, {dest_series.get(mark, 0)} destination series"
            )
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
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=600
    )
    # what it may say: the original exporter's gauges named *_total (kept for compatibility)
    said = [line for line in (res.stdout + res.stderr).splitlines() if line.strip()]
    other = [line for line in said if 'non-counter metrics should not have "_total" suffix' not in line]
    return f"promtool: {other[:3]}" if other else ""


def scraper(url: str, gz: bool, start: float, stop: float, out) -> None:
    """One scraper (a process of its own): back to back until stop; puts its summary on out."""
    last: dict[str, float] = {}
    bodies = parsed = 0
    bad: list[str] = []
    times: list[float] = []
    while time.monotonic() < start:
        time.sleep(0.05)
    while time.monotonic() < stop:
        t0 = time.monotonic()
        try:
            text = body_text(url, gz)
            why = check_body(text, last)
            if not why and (bodies % PARSE_EVERY == 0):
                why = parse_check(text)
                parsed += 1
        except Exception as e:  # every failure is a finding
            why = f"{type(e).__name__}: {e}"
        times.append(time.monotonic() - t0)
        bodies += 1
        if why:
            bad.append(why)
    out.put({"url": url, "gzip": gz, "bodies": bodies, "parsed": parsed, "bad": bad, "times": times})


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


def test_ha_pair_scraping_at_once_gets_whole_consistent_bodies_and_exact_counters():
    lab = Balancer()
    stop_traffic = threading.Event()
    errors: list[BaseException] = []
    try:
        lab.build()
        args = ("--namespace-path", lab.path)
        with (
            running_exporter(*args, timeout=600) as (url_default, _),
            running_exporter(*args, timeout=600, env={"INGRESS_IPVS_EXPORTER_CACHE_MB": "1"}) as (
                url_small,
                _,
            ),
        ):
            for url in (url_default, url_small):  # both have read the whole namespace once
                body_text(url, True)
            ctx = multiprocessing.get_context("fork")
            out = ctx.Queue()
            start = time.monotonic() + 2
            stop = start + SECONDS
            procs = [
                ctx.Process(target=scraper, args=(url, i % 2 == 0, start, stop, out))
                for url in (url_default, url_small)
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

            workers = [guarded(traffic), guarded(churn)]
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
            results = [out.get(timeout=SECONDS + 900) for _ in procs]
            for p in procs:
                p.join(60)
            stop_traffic.set()
            for t in workers:
                t.join(120)
    finally:
        stop_traffic.set()
        lab.close()
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
        "scrape_s": {"p50": round(times[len(times) // 2], 2), "max": round(times[-1], 2)} if times else {},
        "exact": {str(m): k for m, k in EXACT.items()},
    }
    out_path = os.path.join(REPO, "build", "vm", "ha-scrapes" + ("" if FULL else "-short") + ".json")
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    with open(out_path, "w") as f:
        json.dump(figures, f, indent=1)
    print(f"\nha-scrapes: {json.dumps({k: v for k, v in figures.items() if k != 'per_scraper'})}")
    assert not errors, f"traffic or churn failed: {errors[0]!r}"
    assert all(r["bodies"] >= 2 and r["parsed"] >= 1 for r in results), figures["per_scraper"]
    assert figures["bad_bodies"] == 0, figures["first_bad"]
