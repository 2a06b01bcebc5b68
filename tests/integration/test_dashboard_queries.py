"""The Grafana dashboard's service-name join, evaluated by the real promtool on input series:
a service that ipvs_swarm_service_info names gets its name (once, though every node exports
the fwmark and only managers export the name), one without a name falls back to ':<port>'.
Every query of the dashboard must also parse (promtool check rules on them as recording rules)."""

from __future__ import annotations

import json
import pathlib
import re
import subprocess

import yaml
from ipvs_testlib import promtool

from ingress_ipvs_exporter.render.metrics import METRICS, Level

ROOT = pathlib.Path(__file__).parents[2]
DASHBOARD = json.loads((ROOT / "packaging/grafana/ipvs.json").read_text())


def exprs() -> dict[str, str]:
    found = {}
    for panel in DASHBOARD["panels"]:
        for target in panel["targets"]:
            found[f"{panel['title']}/{target['refId']}"] = (
                target["expr"]
                .replace("$__rate_interval", "1m")
                .replace('"$namespace"', '".*"')
                .replace('"$instance"', '".*"')
            )
    return found


def panel_expr(title: str) -> str:
    (expr,) = [e for key, e in exprs().items() if key.startswith(title + "/")]
    return expr


def run_promtool(tmp_path: pathlib.Path, tests: dict) -> None:
    (tmp_path / "none.yml").write_text("groups: []\n")
    (tmp_path / "t.yml").write_text(yaml.safe_dump(tests, sort_keys=False))
    res = subprocess.run(
        [promtool(), "test", "rules", "t.yml"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_every_dashboard_query_parses(tmp_path):
    rules = [{"record": f"dashboard:q{i}", "expr": e} for i, e in enumerate(exprs().values())]
    (tmp_path / "q.yml").write_text(yaml.safe_dump({"groups": [{"name": "q", "rules": rules}]}))
    res = subprocess.run(
        [promtool(), "check", "rules", str(tmp_path / "q.yml")], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stdout + res.stderr


NS = 'namespace="ingress_sbox"'
SERIES = [
    # two nodes export both fwmarks; 60 connections a minute each = 1/s per node
    *(
        {
            "series": f'ipvs_connections_total{{instance="{node}", {NS}, fwmark="{mark}", port="{port}"}}',
            "values": "0+60x10",
        }
        for node in ("n1:10320", "n2:10320")
        for mark, port in (("256", "30000"), ("257", "30001"))
    ),
    *(
        {
            "series": f'ipvs_destination_total{{instance="{node}", {NS}, fwmark="{mark}", port="{port}"}}',
            "values": "2x10",
        }
        for node in ("n1:10320", "n2:10320")
        for mark, port in (("256", "30000"), ("257", "30001"))
    ),
    # only the manager (n1, --docker-host) names fwmark 256; nothing names 257
    {
        "series": f'ipvs_swarm_service_info{{instance="n1:10320", {NS}, fwmark="256", network="ingress", port="30000", service_id="abc", service_name="service_1"}}',
        "values": "1x10",
    },
]


def test_named_where_swarm_info_exists_else_port(tmp_path):
    named = {"namespace": "ingress_sbox", "fwmark": "256", "port": "30000", "service_name": "service_1"}
    unnamed = {"namespace": "ingress_sbox", "fwmark": "257", "port": "30001", "service_name": ":30001"}

    def samples(value):
        return [
            {"labels": "{" + ", ".join(f'{k}="{v}"' for k, v in labels.items()) + "}", "value": value}
            for labels in (named, unnamed)
        ]

    run_promtool(
        tmp_path,
        {
            "rule_files": ["none.yml"],
            "tests": [
                {
                    "interval": "1m",
                    "input_series": SERIES,
                    "promql_expr_test": [
                        {
                            "expr": panel_expr("Connections /s per swarm service (fwmark services)"),
                            "eval_time": "5m",
                            "exp_samples": samples(2),
                        },
                        {
                            "expr": panel_expr("Destinations per swarm service (fwmark services)"),
                            "eval_time": "5m",
                            "exp_samples": samples(4),
                        },
                    ],
                }
            ],
        },
    )


def test_every_per_service_panel_names_services():
    per_service = {k: e for k, e in exprs().items() if "ipvs_swarm_service_info" in e}
    assert len(per_service) >= 7, sorted(per_service)
    for key, expr in per_service.items():
        assert "label_replace(" in expr and '"service_name", ":$1", "port"' in expr, f"{key}: no fallback"


def test_settings_panel_lists_every_setting_of_each_namespace(tmp_path):
    on = 'instance="n1:10320", namespace="ingress_sbox"'
    series = [
        {"series": f'ipvs_timeout_seconds{{{on}, protocol="tcp"}}', "values": "100x5"},
        {"series": f'ipvs_timeout_seconds{{{on}, protocol="udp"}}', "values": "30x5"},
        {"series": f'ipvs_sysctl{{{on}, name="conn_reuse_mode"}}', "values": "0x5"},
        {"series": f"ipvs_sync_daemons{{{on}}}", "values": "1x5"},
        {
            "series": f'ipvs_sync_daemon_info{{{on}, state="master", mcast_interface="eth1", sync_id="7"}}',
            "values": "1x5",
        },
    ]
    expected = {"timeout_tcp": 100, "timeout_udp": 30, "net.ipv4.vs.conn_reuse_mode": 0}
    expected |= {"sync_daemons": 1, "sync_daemon master eth1 7": 1}
    run_promtool(
        tmp_path,
        {
            "rule_files": ["none.yml"],
            "tests": [
                {
                    "interval": "1m",
                    "input_series": series,
                    "promql_expr_test": [
                        {
                            "expr": panel_expr("Settings"),
                            "eval_time": "3m",
                            "exp_samples": [
                                {"labels": f'{{{on}, setting="{name}"}}', "value": value}
                                for name, value in expected.items()
                            ],
                        }
                    ],
                }
            ],
        },
    )


def test_a_panel_of_ipvs_up_says_so():
    """ipvs_up is whether IPVS could be read, not whether the exporter is up (Prometheus's `up`)."""
    for panel in DASHBOARD["panels"]:
        plotted = " ".join(t["expr"] for t in panel.get("targets", []))
        if "ipvs_up" in plotted:
            assert "ipvs_up" in panel["title"] and "IPVS" in panel["title"], panel["title"]
        if "exporter" in panel["title"].lower():
            assert "up{" in plotted.replace("ipvs_up", ""), panel["title"]


def plotted_families(panel: dict) -> set[str]:
    return set(re.findall(r"\bipvs_\w+", " ".join(t["expr"] for t in panel.get("targets", []))))


def test_no_panel_needs_a_family_that_a_flag_removes():
    """--no-rate-metrics removes the kernel's *_per_second estimates: panels use rate() over
    the counters, which every flag keeps."""
    removable = {d.name for d in METRICS if d.is_rate}
    for panel in DASHBOARD["panels"]:
        assert not plotted_families(panel) & removable, panel["title"]


def test_each_panel_of_services_says_which_kind_it_covers():
    """The original families cover fwmark services only (swarm's); ipvs_service_* every kind."""
    level = {d.name: d.level for d in METRICS}
    fwmark_only = {Level.ORIGINAL_SERVICE, Level.ORIGINAL_DESTINATION}
    kinds = set()
    for panel in DASHBOARD["panels"]:
        levels = {level[n] for n in plotted_families(panel) if n in level}
        if levels & fwmark_only:
            kinds.add("fwmark")
            assert "(fwmark services)" in panel["title"], panel["title"]
        if Level.SERVICE in levels:
            kinds.add("every")
            assert "(every kind)" in panel["title"], panel["title"]
    assert kinds == {"fwmark", "every"}
