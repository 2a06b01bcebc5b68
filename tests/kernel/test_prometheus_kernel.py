"""A real Prometheus server scrapes the exporter in the VM; the Grafana dashboard's queries
run against it; promtool lints the exposition."""

from __future__ import annotations

import json
import pathlib
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request

import pytest
from ipvs_testlib import free_port, running_exporter, scrape
from lab import swarm_like_lab

pytestmark = pytest.mark.kernel
ROOT = pathlib.Path(__file__).parents[2]
# The original exporter named these gauges *_total; they keep their names for compatibility.
SEED_GAUGES_NAMED_TOTAL = {
    "ipvs_services_total",
    "ipvs_destination_total",
    "ipvs_destination_active_connections_total",
    "ipvs_destination_inactive_connections_total",
}


def api(base: str, path: str, **params) -> dict:
    url = f"{base}/api/v1/{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
    with urllib.request.urlopen(url, timeout=30) as r:
        body = json.load(r)
    assert body["status"] == "success", body
    return body["data"]


def wait_for(what: str, check, timeout: float = 180.0, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


@pytest.fixture(scope="module")
def prometheus_and_exporter(tmp_path_factory):
    assert shutil.which("prometheus"), "Debian's prometheus package is not installed"
    tmp = tmp_path_factory.mktemp("prom")
    with swarm_like_lab("nft") as lab:
        lab.requests(30000, 5)
        with running_exporter("--namespace-path", lab.ns_path, "--backend-metrics") as (url, _):
            port = free_port()
            target = url.split("//")[1].split("/")[0]
            (tmp / "prometheus.yml").write_text(
                "global: {scrape_interval: 2s, evaluation_interval: 2s}\n"
                f"scrape_configs:\n  - job_name: ipvs\n    static_configs: [{{targets: ['{target}']}}]\n"
            )
            log = open(tmp / "prometheus.log", "w")
            prom = subprocess.Popen(
                [
                    "prometheus",
                    f"--config.file={tmp / 'prometheus.yml'}",
                    f"--storage.tsdb.path={tmp / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            base = f"http://127.0.0.1:{port}"
            try:
                wait_for(
                    "prometheus ready",
                    lambda: urllib.request.urlopen(base + "/-/ready", timeout=5).status == 200,
                )
                # two scrapes, some traffic in between so that rate() has something to say
                wait_for("a first scrape", lambda: api(base, "query", query="ipvs_up")["result"])
                lab.requests(30000, 5)
                wait_for(
                    "two scrapes",
                    lambda: float(
                        api(base, "query", query="count_over_time(ipvs_up[5m])")["result"][0]["value"][1]
                    )
                    >= 2,
                )
                time.sleep(3)  # the kernel's counters lag ~2 s; one more scrape sees the new traffic
                yield base, url, lab
            finally:
                prom.terminate()
                prom.wait(30)
                log.close()


def test_prometheus_scrapes_every_family(prometheus_and_exporter):
    base, url, lab = prometheus_and_exporter
    (target,) = api(base, "targets")["activeTargets"]
    assert target["health"] == "up", target
    exported = {name for name, _ in scrape(url)}
    assert len(exported) > 30
    for name in sorted(exported):
        result = api(base, "query", query=f'count({{__name__="{name}"}})')["result"]
        assert result and float(result[0]["value"][1]) > 0, f"{name} has no series in Prometheus"


def test_promtool_finds_nothing_but_the_original_names(prometheus_and_exporter):
    _, url, _ = prometheus_and_exporter
    text = urllib.request.urlopen(url, timeout=30).read()
    res = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, timeout=60)
    reported = [line for line in (res.stdout + res.stderr).decode().splitlines() if line.strip()]
    names = {line.split()[0] for line in reported}
    assert names <= SEED_GAUGES_NAMED_TOTAL, reported
    assert all('non-counter metrics should not have "_total" suffix' in line for line in reported), reported


def test_every_dashboard_query_parses_and_returns_data(prometheus_and_exporter):
    base, _, _ = prometheus_and_exporter
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
        result = api(base, "query", query=q)["result"]
        assert result, f"no data for dashboard query: {expr}"
