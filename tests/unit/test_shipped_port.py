"""The shipped deployment files listen on 10320, not the CLI default :9100 that
node_exporter holds on most nodes (docs/prometheus.md says why 10320)."""

from __future__ import annotations

import pathlib
import re

import yaml

ROOT = pathlib.Path(__file__).parents[2]
PORT = 10320


def test_stack_publishes_and_passes_the_port():
    svc = yaml.safe_load((ROOT / "packaging/docker/stack.yml").read_text())["services"]["exporter"]
    cmd = svc["command"]
    assert cmd[cmd.index("--listen-address") + 1] == f":{PORT}"
    assert [(p["target"], p["published"], p["mode"]) for p in svc["ports"]] == [(PORT, PORT, "host")]


def test_dockerfile_exposes_and_listens_on_the_port():
    text = (ROOT / "packaging/docker/Dockerfile").read_text()
    assert re.search(rf"^EXPOSE {PORT}$", text, re.M)
    # ENTRYPOINT alone would listen on the CLI default :9100
    assert re.search(rf'^CMD \["--listen-address", ":{PORT}"\]$', text, re.M)


def test_systemd_unit_defaults_to_the_port():
    text = (ROOT / "packaging/systemd/ingress_ipvs_exporter.service").read_text()
    env = text.index(f'Environment="ARGS=--listen-address :{PORT}"')
    assert env < text.index("EnvironmentFile=-/etc/default/ingress_ipvs_exporter")  # the file overrides
    assert "$ARGS" in text


def test_no_shipped_file_listens_on_9100():
    for path in ROOT.glob("packaging/**/*"):
        if path.is_file():
            for line in path.read_text().splitlines():
                if "9100" in line:
                    # only ever as the port to avoid, or node_exporter's own target in a rule test
                    ok = ("node_exporter" in line, "CLI default" in line, 'job="node"' in line)
                    assert any(ok), f"{path}: {line}"


def test_discovery_example_scrapes_the_port():
    for path in ("packaging/prometheus/prometheus-dockerswarm.yml", "docs/prometheus.md"):
        assert f"replacement: $1:{PORT}" in (ROOT / path).read_text(), path
