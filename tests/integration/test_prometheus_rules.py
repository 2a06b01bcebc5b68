"""The shipped alerting rules (packaging/prometheus/alerts.yml), checked by the real promtool:
`promtool check rules` and `promtool test rules` on the unit tests in alerts_test.yml, and
that every alert has a test in which it fires and one in which it does not."""

from __future__ import annotations

import pathlib
import subprocess

import yaml
from ipvs_testlib import promtool

ROOT = pathlib.Path(__file__).parents[2]
RULES = ROOT / "packaging/prometheus/alerts.yml"
RULE_TESTS = ROOT / "packaging/prometheus/alerts_test.yml"


def alerts() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r]


def test_promtool_check_rules():
    res = subprocess.run(
        [promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in res.stdout, res.stdout


def test_promtool_test_rules():
    res = subprocess.run(
        [promtool(), "test", "rules", RULE_TESTS.name],
        cwd=RULE_TESTS.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout, res.stdout


def test_every_alert_is_tested_firing_and_not_firing():
    firing, silent = set(), set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {a["alert"] for a in alerts()}
    assert names == firing, f"alerts without a firing test: {names - firing}; unknown: {firing - names}"
    assert names == silent, f"alerts without a not-firing test: {names - silent}; unknown: {silent - names}"


def test_every_alert_has_severity_for_and_annotations():
    for a in alerts():
        assert a["labels"]["severity"] in {"critical", "warning"}, a["alert"]
        assert a.get("for"), f"{a['alert']}: no 'for:' (one bad scrape would page)"
        assert {"summary", "description"} <= set(a["annotations"]), a["alert"]
        # who is affected: the instance, and the namespace for per-namespace metrics
        assert "$labels.instance" in a["annotations"]["summary"], a["alert"]
        if "ipvs_" in a["expr"]:
            assert "$labels.namespace" in a["annotations"]["description"], a["alert"]


def test_promtool_check_swarm_discovery_config():
    config = ROOT / "packaging/prometheus/prometheus-dockerswarm.yml"
    res = subprocess.run(
        [promtool(), "check", "config", "--syntax-only", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    (job,) = yaml.safe_load(config.read_text())["scrape_configs"]
    assert job["job_name"] == "ipvs"  # what IPVSExporterDown selects
