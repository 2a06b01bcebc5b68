"""Prometheus' Docker Swarm service discovery finds the exporter on the swarm's node, and the
Grafana dashboard names swarm services: a real swarm (swarm-lab, in the IPVS VM), the real
Prometheus (Debian's 2.42) with packaging/prometheus/prometheus-dockerswarm.yml pointed at the
lab's dockerd socket, and the exporter listening on the node's own address, port 10320, with
--docker-host (so it exports ipvs_swarm_service_info).

Discovery does not depend on the iptables backend, so this module runs on the nft lab only.
"""

from __future__ import annotations

import functools
import json
import pathlib
import subprocess

import pytest
import swarmlib
from ipvs_testlib import api, exporter_command, stop_process
from swarmlib import diag, sd_prometheus

pytestmark = [pytest.mark.swarm, pytest.mark.parametrize("lab", ["nft"], indirect=True)]
ROOT = pathlib.Path(__file__).parents[2]
PORT = 10320  # the shipped port (docs/prometheus.md)
wait_for = functools.partial(swarmlib.wait_for, timeout=swarmlib.SD_WAIT)


@pytest.fixture(scope="module")
def swarm_prometheus(lab, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("promsd")
    node = json.loads(lab.docker("node", "inspect", "self"))[0]
    addr = node["Status"]["Addr"]
    assert addr and addr != "0.0.0.0", f"node address {addr!r}: {node['Status']}"
    exporter_log = open(tmp / "exporter.log", "w+")
    exporter = subprocess.Popen(
        [
            exporter_command(),
            "--listen-address",
            f"{addr}:{PORT}",
            "--namespace-path",
            lab.ingress_ns,
            "--docker-host",
            lab.docker_host,
        ],
        stdout=exporter_log,
        stderr=subprocess.STDOUT,
    )
    try:
        with sd_prometheus(lab.docker_host, tmp) as base:
            yield base, node, addr
    except BaseException:
        print(diag())
        raise
    finally:
        stop_process(exporter)
        exporter_log.seek(0)
        print("--- exporter log (tail) ---\n" + "".join(exporter_log.readlines()[-40:]))
        exporter_log.close()


def test_swarm_sd_discovers_and_scrapes_the_node(swarm_prometheus, lab):
    base, node, addr = swarm_prometheus

    def up_target():
        targets = api(base, "targets")["activeTargets"]
        return [t for t in targets if t["health"] == "up"] and targets

    targets = wait_for("the discovered node target up", up_target)
    (target,) = targets  # one node, one target
    labels = target["labels"]
    assert target["scrapeUrl"] == f"http://{addr}:{PORT}/metrics", target
    assert labels["instance"] == f"{addr}:{PORT}" and labels["job"] == "ipvs", labels
    assert labels["node"] == node["Description"]["Hostname"], labels
    assert labels["node_role"] == "manager" and labels["node_id"] == node["ID"], labels
    assert target["discoveredLabels"]["__meta_dockerswarm_node_address"] == addr, target
    # the node labels are on the scraped series
    result = wait_for(
        "ipvs_up from the discovered node",
        lambda: api(base, "query", query=f'ipvs_up{{node_role="manager", node="{labels["node"]}"}}')[
            "result"
        ],
    )
    assert [r["value"][1] for r in result] == ["1"], result


def dashboard_exprs() -> list[str]:
    dash = json.loads((ROOT / "packaging/grafana/ipvs.json").read_text())
    return [
        t["expr"]
        .replace("$__rate_interval", "1m")
        .replace('"$namespace"', '".*"')
        .replace('"$instance"', '".*"')
        for p in dash["panels"]
        for t in p["targets"]
        if "ipvs_swarm_service_info" in t["expr"]
    ]


def test_dashboard_shows_swarm_service_names(swarm_prometheus, lab):
    base, _, _ = swarm_prometheus
    ports = lab.ports()  # service name -> published port, from docker service inspect
    assert sorted(ports) == ["service_1", "service_2", "service_3"], ports
    wait_for(
        "ipvs_swarm_service_info for every service",
        lambda: len(api(base, "query", query="ipvs_swarm_service_info")["result"]) == len(ports),
    )
    lab.requests(ports["service_1"], 3)
    exprs = dashboard_exprs()
    assert len(exprs) >= 7
    for expr in exprs:
        result = wait_for(f"data for {expr}", lambda e=expr: api(base, "query", query=e)["result"])
        named = {r["metric"].get("service_name"): r["metric"].get("port") for r in result}
        # every swarm service by name, with its own published port; no ':<port>' fallback
        assert set(named) == set(ports), (expr, result)
        assert {name: int(port) for name, port in named.items()} == ports, (expr, result)
