"""Swarm service names over TLS (IPVS VM, the swarm lab, nft only: TLS does not depend on the
iptables backend): the lab's dockerd also listens on tcp://127.0.0.1:2376 with --tlsverify,
and the installed exporter reaches it with DOCKER_TLS_VERIFY and DOCKER_CERT_PATH as the
docker CLI would.
"""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest
from ipvs_testlib import exporter_log, running_exporter, samples, scrape
from swarmlib import API_TIMEOUT, WAIT, diag

from ingress_ipvs_exporter.swarm.client import DockerError
from ingress_ipvs_exporter.swarm.names import fetch_services

pytestmark = [pytest.mark.swarm, pytest.mark.parametrize("lab", ["nft"], indirect=True)]


@pytest.fixture
def tls_env(monkeypatch, lab):
    """use(folder): DOCKER_TLS_VERIFY=1 and DOCKER_CERT_PATH=folder, for this process and the
    exporters it starts."""
    assert lab.tls_host == "tcp://127.0.0.1:2376" and lab.tls_cert_path, "swarm-lab printed no TLS lines"
    monkeypatch.delenv("DOCKER_TLS", raising=False)
    monkeypatch.delenv("DOCKER_HOST", raising=False)

    def use(folder: str) -> None:
        monkeypatch.setenv("DOCKER_TLS_VERIFY", "1")
        monkeypatch.setenv("DOCKER_CERT_PATH", folder)

    return use


def _wrong_ca(lab, tmp_path) -> str:
    """The lab's client folder with ca.pem replaced by a CA that did not sign the daemon."""
    folder = tmp_path / "wrong-ca"
    shutil.copytree(lab.tls_cert_path, folder)
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "2", "-subj", "/CN=not the lab's CA", "-keyout", str(tmp_path / "k.pem"),
         "-out", str(folder / "ca.pem")],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    return str(folder)


def _log(url: str) -> str:
    with open(exporter_log(url)) as f:
        return f.read()


def test_fetch_services_over_tls(lab, tls_env):
    tls_env(lab.tls_cert_path)
    ports = lab.ports()
    got = fetch_services(lab.tls_host, timeout=API_TIMEOUT).by_port
    assert {port: s.name for port, s in got.items()} == {("tcp", p): name for name, p in ports.items()}


def test_exporter_names_services_over_tls(lab, tls_env):
    tls_env(lab.tls_cert_path)
    expected = {port: name for name, port in lab.ports().items()}
    assert sorted(expected.values()) == ["service_1", "service_2", "service_3"]
    with running_exporter("--namespace-path", lab.ingress_ns, "--docker-host", lab.tls_host) as (url, _):
        ns = frozenset({("namespace", lab.ingress_ns)})
        deadline = time.monotonic() + WAIT
        while True:
            scraped = scrape(url)
            got = {
                int(dict(k)["port"]): dict(k)["service_name"]
                for k in samples(scraped, "ipvs_swarm_service_info")
            }
            if got == expected:
                break
            assert time.monotonic() < deadline, (
                f"names {got}, expected {expected}; log: {_log(url)}\n{diag()}"
            )
            time.sleep(2)
        assert scraped[("ipvs_docker_up", ns)] == 1
        assert scraped[("ipvs_up", ns)] == 1


def test_exporter_with_a_wrong_ca_says_docker_is_down(lab, tls_env, tmp_path):
    folder = _wrong_ca(lab, tmp_path)
    tls_env(folder)
    with pytest.raises(DockerError) as info:
        fetch_services(lab.tls_host, timeout=API_TIMEOUT)
    assert info.value.kind == "tls" and "certificate was rejected" in str(info.value)
    with running_exporter("--namespace-path", lab.ingress_ns, "--docker-host", lab.tls_host) as (url, _):
        ns = frozenset({("namespace", lab.ingress_ns)})
        deadline = time.monotonic() + WAIT
        while (scraped := scrape(url)).get(("ipvs_docker_up", ns)) != 0:
            assert time.monotonic() < deadline, f"ipvs_docker_up never 0; log: {_log(url)}"
            time.sleep(2)
        assert scraped[("ipvs_up", ns)] == 1  # the IPVS metrics carry on
        assert len(samples(scraped, "ipvs_connections_total")) == 3
        assert not samples(scraped, "ipvs_swarm_service_info")
        # one warning per route (the network inspect for names, GET /services for IDs), written
        # asynchronously, and not again on later scrapes
        routes = ("swarm service names unavailable", "swarm service IDs")

        def rejected() -> list[str]:
            return [line for line in _log(url).splitlines() if "certificate was rejected" in line]

        deadline = time.monotonic() + 60
        while not all(any(r in line for line in rejected()) for r in routes):
            assert time.monotonic() < deadline, _log(url)
            time.sleep(1)
        for _ in range(3):
            scrape(url)
            time.sleep(2)
        lines = rejected()
        assert len(lines) == 2 and all(f"{folder}/ca.pem" in line for line in lines), lines
        assert all(sum(r in line for line in lines) == 1 for r in routes), lines
