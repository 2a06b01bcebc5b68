"""A real Prometheus server scrapes the exporter in the VM; the Grafana dashboard's queries
run against it; promtool lints the exposition; the shipped alerting rules
(packaging/prometheus/alerts.yml) are loaded and seen firing.

The scrape job "ipvs" (the job name the rules assume) has three targets: the exporter on the
lab's namespace, a second exporter whose namespace path does not exist (it serves ipvs_up 0)
and a loopback port nothing listens on (up 0). Prometheus gets a copy of the rules with every
`for:` shortened to 2 s, so that the alerts fire within the test (evaluation interval 2 s, scrape interval 5 s).
Two extra IPVS services in the lab's balancer make the per-service alerts fire on the real
exporter's labels: fwmark 4242 with no real server, fwmark 4243 whose only one has weight 0."""

from __future__ import annotations

import json
import pathlib
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request

import pytest
from ipvs_testlib import api, free_port, running_exporter, running_prometheus, scrape, sh, wait_for
from lab import swarm_like_lab

pytestmark = pytest.mark.kernel
EMPTY_FWMARK, QUIESCED_FWMARK = 4242, 4243
ROOT = pathlib.Path(__file__).parents[2]
# The original exporter named these gauges *_total; they keep their names for compatibility.
ORIGINAL_GAUGES_NAMED_TOTAL = {
    "ipvs_services_total",
    "ipvs_destination_total",
    "ipvs_destination_active_connections_total",
    "ipvs_destination_inactive_connections_total",
}


@pytest.fixture(scope="module")
def prometheus_and_exporter(tmp_path_factory):
    assert shutil.which("prometheus"), "Debian's prometheus package is not installed"
    tmp = tmp_path_factory.mktemp("prom")
    rules = (ROOT / "packaging/prometheus/alerts.yml").read_text()
    rules, shortened = re.subn(r"(?m)^(\s+for:) \S+$", r"\1 2s", rules)
    assert shortened >= 6, "alerts.yml: fewer for: lines than alerts?"
    (tmp / "alerts.yml").write_text(rules)
    with (
        swarm_like_lab("nft") as lab,
        running_exporter("--namespace-path", "/run/netns/no-such-namespace") as (broken_url, _),
    ):
        lab.requests(30000, 5)
        sh("ipvsadm", "-A", "-f", str(EMPTY_FWMARK), "-s", "rr", ns=lab.balancer)
        sh("ipvsadm", "-A", "-f", str(QUIESCED_FWMARK), "-s", "rr", ns=lab.balancer)
        sh(
            "ipvsadm",
            "-a",
            "-f",
            str(QUIESCED_FWMARK),
            "-r",
            "198.18.20.4:0",
            "-m",
            "-w",
            "0",
            ns=lab.balancer,
        )
        with running_exporter("--namespace-path", lab.ns_path, "--backend-metrics") as (url, _):
            target = url.split("//")[1].split("/")[0]
            broken = broken_url.split("//")[1].split("/")[0]
            closed = closed_port_target()
            (tmp / "prometheus.yml").write_text(
                # a 5 s scrape timeout: at 2 s, a scrape slowed by a loaded emulator failed now
                # and then, and Prometheus marked every series of the target stale
                "global: {scrape_interval: 5s, scrape_timeout: 5s, evaluation_interval: 2s}\n"
                f"rule_files: ['{tmp / 'alerts.yml'}']\n"
                "scrape_configs:\n  - job_name: ipvs\n"
                f"    static_configs: [{{targets: ['{target}', '{broken}', '{closed}']}}]\n"
            )
            with running_prometheus(tmp) as base:
                # two scrapes, some traffic in between so that rate() has something to say
                wait_for(
                    "a first scrape",
                    lambda: api(base, "query", query=f'ipvs_up{{instance="{target}"}}')["result"],
                )
                lab.requests(30000, 5)
                wait_for(
                    "two scrapes",
                    lambda: float(
                        api(base, "query", query=f'count_over_time(ipvs_up{{instance="{target}"}}[5m])')[
                            "result"
                        ][0]["value"][1]
                    )
                    >= 2,
                )
                time.sleep(6)  # the kernel's counters lag ~2 s; one more scrape (5 s) sees the new traffic
                yield base, url, lab, broken, closed


def closed_port_target() -> str:
    """host:port on loopback where nothing listens (a scrape there fails: up 0)."""
    port = free_port()
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, f"something listens on {port}"
    return f"127.0.0.1:{port}"


def test_prometheus_scrapes_every_family(prometheus_and_exporter):
    base, url, lab, _, _ = prometheus_and_exporter
    target = url.split("//")[1].split("/")[0]
    (found,) = [t for t in api(base, "targets")["activeTargets"] if t["labels"]["instance"] == target]
    assert found["health"] == "up", found
    exported = {name for name, _ in scrape(url)}
    assert len(exported) > 30
    for name in sorted(exported):
        query = f'count({{__name__="{name}"}})'
        # polled: a scrape that fails (one slowed by a loaded host) leaves the series stale
        # until the next one succeeds
        wait_for(
            f"{name} to have series in Prometheus",
            lambda q=query: (r := api(base, "query", query=q)["result"]) and float(r[0]["value"][1]) > 0,
            timeout=60,
        )


def test_promtool_finds_nothing_but_the_original_names(prometheus_and_exporter):
    _, url, *_ = prometheus_and_exporter
    text = urllib.request.urlopen(url, timeout=30).read()
    res = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, timeout=60)
    reported = [line for line in (res.stdout + res.stderr).decode().splitlines() if line.strip()]
    names = {line.split()[0] for line in reported}
    assert names <= ORIGINAL_GAUGES_NAMED_TOTAL, reported
    assert all('non-counter metrics should not have "_total" suffix' in line for line in reported), reported


def test_every_dashboard_query_parses_and_returns_data(prometheus_and_exporter):
    """Here no exporter has --docker-host (no ipvs_swarm_service_info): the per-service panels
    must fall back to ':<port>' names. The named path: tests/swarm/test_swarm_sd.py."""
    base, *_ = prometheus_and_exporter
    dash = json.loads((ROOT / "packaging/grafana/ipvs.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    exprs += [v["query"] for v in dash["templating"]["list"] if v.get("type") == "query"]
    assert len(exprs) >= 10
    for expr in exprs:
        q = (
            expr.replace("$__rate_interval", "1m")
            .replace('"$namespace"', '".*"')
            .replace('"$instance"', '".*"')
        )
        m = re.fullmatch(r"label_values\((\w+), (\w+)\)", q)
        if m:  # a Grafana variable query: ask for the label's values
            values = api(base, f"label/{m.group(2)}/values", **{"match[]": m.group(1)})
            assert values, expr
            continue
        result = wait_for(
            f"data for dashboard query {expr}", lambda q=q: api(base, "query", query=q)["result"], timeout=60
        )
        if "ipvs_swarm_service_info" in expr:
            # ':<port>' where the fwmark has a published port; fwmarks without a mangle rule
            # (the lab's 999, 4242, 4243) have no port, so no name: the legend shows the fwmark
            names = {r["metric"].get("service_name") for r in result if r["metric"].get("port")}
            assert names and all(n and n.startswith(":") for n in names), (expr, result)
            assert ":30000" in names, names


def test_shipped_alerts_fire_in_prometheus(prometheus_and_exporter):
    base, url, _, broken, closed = prometheus_and_exporter
    healthy = url.split("//")[1].split("/")[0]
    groups = api(base, "rules")["groups"]
    assert {r["name"] for g in groups for r in g["rules"]} >= {"IPVSExporterDown", "IPVSNamespaceUnreadable"}
    assert all(r["health"] == "ok" for g in groups for r in g["rules"]), groups
    # the broken exporter's namespace label, as Prometheus stored it
    (down,) = api(base, "query", query=f'ipvs_up{{instance="{broken}"}} == 0')["result"]
    namespace = down["metric"]["namespace"]

    def firing() -> dict[tuple[str, str, str], dict]:
        return {
            (a["labels"]["alertname"], a["labels"]["instance"], a["labels"].get("fwmark", "")): a
            for a in api(base, "alerts")["alerts"]
            if a["state"] == "firing"
        }

    wanted = {
        ("IPVSNamespaceUnreadable", broken, ""),
        ("IPVSExporterDown", closed, ""),
        ("IPVSServiceWithoutDestinations", healthy, str(EMPTY_FWMARK)),
        ("IPVSServiceAllDestinationsQuiesced", healthy, str(QUIESCED_FWMARK)),
    }
    wait_for("the four alerts firing", lambda: wanted <= set(firing()))
    alerts = firing()
    assert set(alerts) == wanted, set(alerts) - wanted
    unread = alerts[("IPVSNamespaceUnreadable", broken, "")]
    assert unread["labels"]["namespace"] == namespace and unread["labels"]["severity"] == "critical"
    assert namespace in unread["annotations"]["summary"] and broken in unread["annotations"]["description"]
    assert closed in alerts[("IPVSExporterDown", closed, "")]["annotations"]["summary"]
    # the healthy exporter raises only the two service alerts (the set equality above: the
    # lab's other services have a real server of weight 1), naming the service
    empty = alerts[("IPVSServiceWithoutDestinations", healthy, str(EMPTY_FWMARK))]
    assert f"fwmark {EMPTY_FWMARK} " in empty["annotations"]["summary"], empty
    quiesced = alerts[("IPVSServiceAllDestinationsQuiesced", healthy, str(QUIESCED_FWMARK))]
    assert f"fwmark {QUIESCED_FWMARK} " in quiesced["annotations"]["summary"], quiesced
    # and the ALERTS series records them
    series = api(base, "query", query='ALERTS{alertstate="firing", alertname="IPVSNamespaceUnreadable"}')
    assert {r["metric"]["instance"] for r in series["result"]} == {broken}
