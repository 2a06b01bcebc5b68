"""The real-swarm lab for pytest: swarm-lab up/down around the swarm tests, and helpers."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import ipvs_testlib
import yaml
from ipvs_testlib import running_prometheus

# swarm-lab runs from a private copy: bash reads a script as it goes, so an edit to the
# work tree's file during a long 'up' would otherwise derail the running lab.
LAB_SOURCE = Path(__file__).with_name("swarm-lab")
LAB = Path(os.environ.get("SWARM_TEST_LAB_COPY", "/tmp/swarm-lab-test.sh"))
STATE = os.environ.get("SWARM_TEST_LAB_STATE", "/tmp/swarm-lab-test")
BACKENDS = ("nft", "legacy")  # the iptables alternatives a lab comes up with, in this order
IMAGE = "swarm-lab/httpd:latest"  # what swarm-lab imports and runs its services from
API_TIMEOUT = 30.0  # one Docker API call; everything is 5-20x slower under TCG
WAIT = 240.0  # a swarm change to show up in the API


def _docker_binary() -> str:
    """The docker CLI swarm-lab uses (the 20.10 client when installed)."""
    return os.environ.get("SWARM_LAB_DOCKER") or (
        "/usr/bin/docker" if os.access("/usr/bin/docker", os.X_OK) else shutil.which("docker") or "docker"
    )


class Lab:
    """The running lab: its environment lines and helpers for the docker CLI and swarm-lab."""

    def __init__(self, env: dict[str, str]) -> None:
        self.docker_host = env["DOCKER_HOST"]
        self.ingress_ns = env["INGRESS_NS"]
        self.backend = env.get("BACKEND", "")
        self.state = env.get("STATE", STATE)
        # dockerd's second listener, TLS with client certificates, and the client's DOCKER_CERT_PATH
        self.tls_host = env.get("DOCKER_TLS_HOST", "")
        self.tls_cert_path = env.get("DOCKER_TLS_CERT_PATH", "")
        self.cli_env = dict(
            os.environ,
            DOCKER_HOST=self.docker_host,
            DOCKER_CONFIG=os.path.join(self.state, "cli"),
            SWARM_LAB_STATE=self.state,
        )

    def docker(self, *args: str) -> str:
        """stdout of a docker CLI call against the lab; fails the test on error."""
        res = subprocess.run(
            [_docker_binary(), *args], env=self.cli_env, capture_output=True, text=True, timeout=180
        )
        assert res.returncode == 0, f"docker {' '.join(args)}: {res.stderr.strip()}"
        return res.stdout

    def ports(self) -> dict[str, int]:
        """service name -> published (ingress, tcp) port, as `swarm-lab ports` reports it."""
        res = subprocess.run(
            ["bash", str(LAB), "ports", "--state", self.state],
            env=self.cli_env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert res.returncode == 0, f"swarm-lab ports: {res.stderr.strip()}"
        found = {}
        for line in res.stdout.splitlines():
            name, port = line.split()
            found[name] = int(port)
        return found

    def ids(self) -> dict[str, str]:
        """service name -> full service ID, from `docker service inspect`."""
        names = self.docker("service", "ls", "--quiet").split()
        out = self.docker("service", "inspect", "--format", "{{.Spec.Name}} {{.ID}}", *names)
        return dict(line.split() for line in out.splitlines() if line.strip())

    def requests(self, port: int, n: int) -> None:
        res = subprocess.run(
            ["bash", str(LAB), "requests", "--state", self.state, str(port), str(n)],
            env=self.cli_env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert res.returncode == 0, f"swarm-lab requests {port} {n}: {res.stderr.strip()}"

    def wait_ports(self, ready, what: str) -> dict[str, int]:
        """Poll `swarm-lab ports` until ready(ports) holds (bounded by WAIT)."""
        deadline = time.monotonic() + WAIT
        while True:
            ports = self.ports()
            if ready(ports):
                return ports
            assert time.monotonic() < deadline, f"{what}: not after {WAIT:g}s; ports now {ports}"
            time.sleep(2)


def marks_by_port(lab) -> dict[int, int]:
    """published port -> fwmark, from the backend's own mangle rules in ingress_sbox."""
    out = subprocess.run(
        ["nsenter", f"--net={lab.ingress_ns}", f"iptables-{lab.backend}-save", "-t", "mangle"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    return {
        int(p): int(m, 16) for p, m in re.findall(r"--dport (\d+) -j MARK --set-xmark (0x[0-9a-f]+)/", out)
    }


def wait_for(what: str, check, timeout: float = WAIT, every: float = 2.0):
    """ipvs_testlib.wait_for with the swarm's patience."""
    return ipvs_testlib.wait_for(what, check, timeout, every)


def _lab_cmd(*args: str, timeout: float) -> subprocess.CompletedProcess:
    """Run swarm-lab; its progress (stderr) goes to pytest's captured output."""
    return subprocess.run(
        ["bash", str(LAB), *args],
        stdout=subprocess.PIPE,
        text=True,
        timeout=timeout,
        env=dict(os.environ, SWARM_LAB_STATE=STATE),
    )


def diag() -> str:
    """swarm-lab's failure diagnostics: dockerd log tail, service ps, ipvsadm, mangle rules."""
    res = subprocess.run(
        ["bash", str(LAB), "diag", "--state", STATE],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, SWARM_LAB_STATE=STATE),
    )
    return res.stdout + res.stderr


# ---- the real Prometheus with the shipped dockerswarm_sd_configs job (test_swarm_sd, test_two_node)

SHIPPED_SD_JOB = Path(__file__).parents[2] / "packaging/prometheus/prometheus-dockerswarm.yml"
SD_WAIT = 600.0  # discovery + first scrapes under TCG; two VMs at once make everything slower


@contextlib.contextmanager
def sd_prometheus(docker_host: str, tmp: Path):
    """The real Prometheus (Debian's) running the shipped scrape job, changed only where the
    lab differs: the manager's Docker socket and short intervals. Yields its base URL once ready."""
    config = yaml.safe_load(SHIPPED_SD_JOB.read_text())
    (job,) = config["scrape_configs"]
    (sd,) = job["dockerswarm_sd_configs"]
    sd["host"] = docker_host
    sd["refresh_interval"] = "5s"
    config["global"] = {"scrape_interval": "3s", "scrape_timeout": "3s", "evaluation_interval": "3s"}
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    with running_prometheus(tmp, ready_timeout=SD_WAIT) as base:
        yield base
