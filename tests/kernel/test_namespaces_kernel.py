"""Several namespaces in one exporter, against the real kernel: a glob pattern's matches
each equal ipvsadm in that namespace, a VIP's fwmark service carries the VIP of its INPUT
rule, empty and stale matches are left out, namespaces created and removed while
scraping never fail a scrape nor leave stale series, and a namespace too slow for the
scraper's timeout is reported without holding up the others."""

from __future__ import annotations

import os
import re
import time

import pytest
from ipvs_testlib import (
    assert_original_samples_match,
    exporter_log,
    get_text,
    namespaces_shown,
    of_namespace,
    running_exporter,
    samples,
    scrape,
    scrape_while_all_stable,
    scraping,
    sh,
)
from lab import SWARM_PORTS, swarm_like_lab

from ingress_ipvs_exporter.namespaces import SCRAPE_TIMEOUT_MARGIN, SHORTEST_DEADLINE
from ingress_ipvs_exporter.web.apps import SCRAPE_TIMEOUT_HEADER

pytestmark = pytest.mark.kernel

# an overlay network's load-balancer namespace, as docs/swarm-ipvs.md measured it:
# one fwmark service per VIP, marked by an INPUT rule, no published ports
VIPS = {"10.0.1.2": 257, "10.0.1.3": 258}
BIG = 20000  # services in the namespace too slow for the shortest wait (0.1 s)


def lb_namespace(name: str) -> str:
    """A namespace holding two VIP services (see VIPS) with two real servers each."""
    sh("ip", "netns", "add", name)
    sh("ip", "link", "set", "lo", "up", ns=name)
    for i, (vip, mark) in enumerate(VIPS.items()):
        sh(
            *("iptables-nft", "-t", "mangle", "-A", "INPUT", "-d", f"{vip}/32"),
            *("-j", "MARK", "--set-xmark", f"{mark:#x}/0xffffffff"),
            ns=name,
        )
        sh("ipvsadm", "-A", "-f", str(mark), "-s", "rr", ns=name)
        for j in (10, 11):
            sh("ipvsadm", "-a", "-f", str(mark), "-r", f"10.0.1.{j + 10 * i}:0", "-m", ns=name)
    return f"/run/netns/{name}"


def test_every_glob_match_equals_ipvsadm_in_its_namespace():
    with swarm_like_lab("nft") as lab:
        tag = lab.balancer[: -len("lb")]
        lb = lb_namespace(f"{tag}vip")
        stale = f"/run/netns/{tag}stale"  # what Docker leaves for a minute: a plain file
        open(stale, "w").close()
        try:
            lab.requests(30000, 5)
            paths = (lab.ns_path, lb)
            with running_exporter("--namespace-path", f"/run/netns/{tag}*") as (url, _):
                scraped, before = scrape_while_all_stable(url, list(paths))
                log = open(exporter_log(url)).read()
            # the lab's client and server namespaces hold no IPVS service, the stale file is
            # no namespace: neither is shown, nor logged above debug
            assert namespaces_shown(scraped) == set(paths)
            assert "level=error" not in log and "level=warn" not in log, log
            ports = {mark: str(port) for port, mark in SWARM_PORTS.items()}
            assert_original_samples_match(
                of_namespace(scraped, lab.ns_path), before[lab.ns_path], lab.ns_path, ports
            )
            assert before[lab.ns_path]["FWM 256"].conns == 5
            assert_original_samples_match(
                of_namespace(scraped, lb), before[lb], lb, dict.fromkeys(VIPS.values(), "")
            )
            for vip, mark in VIPS.items():
                labels = {"family": "ipv4", "fwmark": str(mark), "namespace": lb, "port": ""}
                key = frozenset({**labels, "protocol": "", "vip": vip}.items())
                assert scraped[("ipvs_service_destinations", key)] == 2
            # the ingress-like namespace's services have no INPUT rule: no VIP
            assert {
                dict(k)["vip"] for k in samples(of_namespace(scraped, lab.ns_path), "ipvs_service_info")
            } == {""}
        finally:
            os.unlink(stale)
            sh("ip", "netns", "del", f"{tag}vip", check=False)


def test_namespaces_created_and_removed_while_scraping(netns):
    name, path = netns
    sh("ipvsadm", "-A", "-f", "256", "-s", "rr", ns=name)
    prefix = f"/run/netns/{name}_x"
    with (
        running_exporter("--namespace-path", path, "--namespace-path", prefix + "*") as (url, _),
        scraping(url) as seen,
    ):
        for round_ in range(4):
            extra = lb_namespace(f"{name}_x{round_}")
            deadline = time.monotonic() + 60
            while extra not in namespaces_shown(scrape(url)):
                assert time.monotonic() < deadline, f"{extra} never appeared"
            sh("ip", "netns", "del", f"{name}_x{round_}")
            deadline = time.monotonic() + 60
            while of_namespace(scrape(url), extra):
                assert time.monotonic() < deadline, f"{extra}'s series stayed after it was removed"
    failures, bodies = seen["failures"], seen["bodies"]
    assert not failures, failures[:3]
    assert len(bodies) >= 8
    assert all(f'ipvs_up{{namespace="{path}"}} 1.0' in b for b in bodies)


def test_a_namespace_slower_than_the_scrapers_timeout_is_reported_and_the_others_served(netns):
    """Prometheus sends its scrape_timeout; with several namespaces the exporter waits for
    that less SCRAPE_TIMEOUT_MARGIN, not its fixed 10 s. A namespace that has just grown to
    BIG services (a dump of about half a second under the VM's emulation) is reported as timed
    out at the shortest wait, 0.1 s, while a small one is served; a later scrape shows it again.
    Bodies are checked as text: parsing BIG services' families would take minutes here."""
    name, _ = netns
    big, small = f"{name}_big", f"{name}_small"
    sh("ip", "netns", "add", big)
    try:
        sh("ipvsadm", "-A", "-t", "10.199.0.1:80", "-s", "rr", ns=big)
        small_path, big_path = lb_namespace(small), f"/run/netns/{big}"

        def get(timeout: float) -> str:
            started = time.monotonic()
            body = get_text(url, {SCRAPE_TIMEOUT_HEADER: f"{timeout:g}"}, timeout=120)
            print(f"scrape with a {timeout:g} s timeout: {time.monotonic() - started:.2f} s")
            return body

        def count(body: str, name: str, path: str) -> int:
            return len(re.findall(rf'^{name}{{[^}}]*namespace="{re.escape(path)}"', body, re.M))

        def up(body: str, path: str) -> str:
            return re.search(rf'^ipvs_up{{namespace="{re.escape(path)}"}} (\S+)$', body, re.M).group(1)

        def timeouts(n: int) -> str:
            return rf'^ipvs_scrape_errors_total{{namespace="{re.escape(big_path)}",reason="timeout"}} {n}.0$'

        with running_exporter("--namespace-path", f"/run/netns/{name}_*") as (url, _):
            # both namespaces opened and read once, so the short wait catches nothing else
            body = get(60)
            assert (up(body, big_path), up(body, small_path)) == ("1.0", "1.0")
            rules = "".join(f"-A -t 10.200.{i // 250}.{i % 250 + 1}:80 -s rr\n" for i in range(BIG))
            sh("ipvsadm", "-R", ns=big, input=rules)
            # The small namespace's read under emulation, beside the other tests, can miss the
            # shortest wait as well; the big one cannot make it. Up to 5 short scrapes, for one
            # in which the small one was served; each of them counts one timeout of the big one.
            short = 0
            while short < 5 and (short == 0 or up(body, small_path) != "1.0"):
                body = get(SCRAPE_TIMEOUT_MARGIN + SHORTEST_DEADLINE)
                short += 1
                assert up(body, big_path) == "0.0"
            assert up(body, small_path) == "1.0", f"the small namespace missed all {short} short waits"
            assert re.search(timeouts(short), body, re.M), body
            assert count(body, "ipvs_service_info", small_path) == len(VIPS)
            body = get(60)
            assert (up(body, big_path), up(body, small_path)) == ("1.0", "1.0")
            assert re.search(timeouts(short), body, re.M)  # no timeout since
            assert count(body, "ipvs_service_info", big_path) == BIG + 1
            assert count(body, "ipvs_service_info", small_path) == len(VIPS)
    finally:
        sh("ip", "netns", "del", big, check=False)
        sh("ip", "netns", "del", small, check=False)
