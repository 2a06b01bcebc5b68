"""A two-node swarm (tests/swarm/two-node: a manager and a worker in one VM boot): the routing
mesh from the worker's published port to the manager's task through the worker's IPVS, each
node's exporter, Prometheus' dockerswarm_sd_configs finding both, names on the worker, and the
global stack (packaging/docker/stack.yml) running one exporter per node.

Marked `swarm2`: `make test-swarm-2node` runs it, `make test`/`test-vm` do not (it needs a
second dockerd and an image build, about 50 minutes under TCG). The process exporters (class
TestProcessExporters) hold port 10320 on both nodes; pytest tears them down when it leaves the
class, so the stack test, which publishes 10320 itself, runs last (and its slow image build
cannot cost the earlier results).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import pathlib
import shutil
import subprocess
from types import SimpleNamespace

import pytest
import swarmlib
from ipvs_testlib import (
    api,
    assert_original_samples_match,
    exporter_command,
    ipvsadm,
    samples,
    scrape,
    scrape_while_stable,
    stop_process,
)
from swarmlib import _docker_binary, marks_by_port, sd_prometheus

pytestmark = pytest.mark.swarm2
ROOT = pathlib.Path(__file__).parents[2]
HERE = pathlib.Path(__file__).parent
# private copies: bash reads a script as it runs (see swarmlib.LAB)
SCRIPT = pathlib.Path(os.environ.get("SWARM_2NODE_COPY", "/tmp/swarm-2node.sh"))
LAB_COPY = pathlib.Path(os.environ.get("SWARM_2NODE_LAB_COPY", "/tmp/swarm-2node-lab.sh"))
STATE = os.environ.get("SWARM_2NODE_STATE", "/tmp/swarm-2node")
PORT = 10320  # the shipped port: what the shipped dockerswarm_sd_configs job scrapes
REQUESTS = 5
wait_for = functools.partial(swarmlib.wait_for, timeout=swarmlib.SD_WAIT)


def two_node(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT), *args, "--state", STATE],
        stdout=subprocess.PIPE,
        text=True,
        timeout=timeout,
        env=dict(os.environ, SWARM_LAB_SCRIPT=str(LAB_COPY)),
    )


@pytest.fixture(scope="module")
def nodes():
    """The two-node swarm's KEY=VALUE lines (MANAGER_*, WORKER_*); torn down afterwards."""
    shutil.copyfile(HERE / "two-node", SCRIPT)
    shutil.copyfile(HERE / "swarm-lab", LAB_COPY)
    try:
        up = two_node("up", timeout=2400)
    except subprocess.TimeoutExpired:
        two_node("down", timeout=900)
        pytest.fail("two-node up did not finish in 2400 s")
    if up.returncode != 0:
        two_node("down", timeout=900)
        pytest.fail(f"two-node up failed (exit {up.returncode}); see its log in the captured stderr")
    env = dict(line.split("=", 1) for line in up.stdout.splitlines() if "=" in line)
    try:
        yield env
    finally:
        two_node("down", timeout=900)


def docker(host: str, *args: str, timeout: float = 180) -> str:
    res = subprocess.run(
        [_docker_binary(), "--host", host, *args], capture_output=True, text=True, timeout=timeout
    )
    assert res.returncode == 0, f"docker {' '.join(args)}: {res.stderr.strip()}"
    return res.stdout


def published_port(host: str, service: str) -> int:
    """The service's first published port, as the manager at host reports it."""
    return int(
        docker(host, "service", "inspect", "--format", "{{(index .Endpoint.Ports 0).PublishedPort}}", service)
    )


def running_tasks(host: str, service: str) -> list[str]:
    """ "<node> <current state>" of each of the service's tasks meant to be running."""
    out = docker(
        host,
        "service",
        "ps",
        "--filter",
        "desired-state=running",
        "--format",
        "{{.Node}} {{.CurrentState}}",
        service,
    )
    return out.splitlines()


@contextlib.contextmanager
def diagnosed():
    try:
        yield
    except BaseException:
        print(two_node("diag", timeout=600).stdout)
        raise


def node_exporter(env: dict, node: str, tmp: pathlib.Path) -> subprocess.Popen:
    """The exporter as the stack runs it on a node: in the node's network namespace, on the
    node's address and port 10320, reading that node's ingress_sbox, names from its dockerd."""
    prefix = ["ip", "netns", "exec", env["WORKER_NETNS"]] if node == "WORKER" else []
    log = open(tmp / f"exporter-{node.lower()}.log", "w")
    return subprocess.Popen(
        [
            *prefix,
            exporter_command(),
            "--listen-address",
            f"{env[node + '_ADDR']}:{PORT}",
            "--namespace-path",
            env[node + "_INGRESS_NS"],
            "--docker-host",
            env[node + "_DOCKER_HOST"],
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )


@pytest.fixture(scope="class")
def exporters(nodes, tmp_path_factory):
    """One exporter per node; yields node -> metrics URL (reachable from the manager)."""
    tmp = tmp_path_factory.mktemp("two-node")
    procs = {node: node_exporter(nodes, node, tmp) for node in ("MANAGER", "WORKER")}
    urls = {node: f"http://{nodes[node + '_ADDR']}:{PORT}/metrics" for node in procs}
    try:
        for node, url in urls.items():
            wait_for(f"the {node.lower()}'s exporter answering", lambda u=url: scrape(u))
        yield urls
    finally:
        for node, proc in procs.items():
            stop_process(proc)
            print(f"--- {node.lower()} exporter log (tail) ---")
            print("".join((tmp / f"exporter-{node.lower()}.log").read_text().splitlines(True)[-30:]))


def marks(ns: str) -> dict[int, int]:
    """published port -> fwmark in a node's ingress_sbox (each node numbers its own marks)."""
    return marks_by_port(SimpleNamespace(ingress_ns=ns, backend="nft"))


STACK = "ipvs"  # docker stack deploy -c packaging/docker/stack.yml ipvs, as its header says
STACK_NS = "/var/run/docker/netns/ingress_sbox"  # the image's default --namespace-path
OFFLINE = ROOT / "build" / "docker"  # packaging/docker/prepare-offline's bases and wheelhouse


def exporter_image(nodes: dict) -> str:
    """packaging/docker/Dockerfile built offline on the manager (as tests/container/container-test
    does), then `docker save | docker load` into the worker; returns the image ID."""
    mgr = nodes["MANAGER_DOCKER_HOST"]
    for name in ("base-runtime.tar", "base-build.tar", "wheelhouse"):
        assert (OFFLINE / name).exists(), f"{OFFLINE / name} missing: packaging/docker/prepare-offline first"
    for base in ("runtime", "build"):
        docker(
            mgr,
            "import",
            str(OFFLINE / f"base-{base}.tar"),
            f"ingress-ipvs-exporter/base-{base}:12",
            timeout=900,
        )
    docker(
        mgr,
        "build",
        "--force-rm",
        "-f",
        str(ROOT / "packaging/docker/Dockerfile"),
        "--build-arg",
        "BASE_IMAGE=ingress-ipvs-exporter/base-runtime:12",
        "--build-arg",
        "BUILD_IMAGE=ingress-ipvs-exporter/base-build:12",
        "-t",
        "ingress-ipvs-exporter:latest",
        str(ROOT),
        timeout=1800,
    )
    image = docker(mgr, "image", "inspect", "--format", "{{.Id}}", "ingress-ipvs-exporter:latest").strip()
    # no registry: the worker gets the same image (same ID) the way an air-gapped node would
    save = subprocess.Popen([_docker_binary(), "--host", mgr, "save", image], stdout=subprocess.PIPE)
    load = subprocess.run(
        [_docker_binary(), "--host", nodes["WORKER_DOCKER_HOST"], "load"],
        stdin=save.stdout,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert save.wait(timeout=60) == 0 and load.returncode == 0, load.stderr
    assert (
        docker(nodes["WORKER_DOCKER_HOST"], "image", "inspect", "--format", "{{.Id}}", image).strip() == image
    )
    return image


class TestProcessExporters:
    """The exporter as a process on each node (as the .deb runs it), on port 10320."""

    def test_worker_port_reaches_manager_task_through_worker_ipvs(self, nodes, exporters):
        mgr, wkr = nodes["MANAGER_DOCKER_HOST"], nodes["WORKER_DOCKER_HOST"]
        with diagnosed():
            port = published_port(mgr, "service_1")
            # service_1's one task runs on the manager (it was placed before the worker joined)
            running = running_tasks(mgr, "service_1")[0]
            manager_name = docker(mgr, "info", "--format", "{{.Name}}").strip()
            assert running.startswith(f"{manager_name} Running"), running
            assert docker(wkr, "info", "--format", "{{.Swarm.ControlAvailable}}").strip() == "false"
            # the task's address on the ingress network, as the manager's network database has it
            services = json.loads(
                docker(mgr, "network", "inspect", "--verbose", "--format", "{{json .Services}}", "ingress")
            )
            (task,) = services["service_1"]["Tasks"]
            assert task["Info"]["Host IP"] == nodes["MANAGER_ADDR"], task

            ns, manager_ns = nodes["WORKER_INGRESS_NS"], nodes["MANAGER_INGRESS_NS"]
            mark, manager_mark = marks(ns)[port], marks(manager_ns)[port]
            subprocess.run(["nsenter", f"--net={ns}", "ipvsadm", "-Z"], check=True, timeout=60)
            manager_before = ipvsadm(manager_ns)[f"FWM {manager_mark}"].conns
            for _ in range(REQUESTS):  # from the worker's own namespace to its own published port
                body = subprocess.run(
                    [
                        "ip",
                        "netns",
                        "exec",
                        nodes["WORKER_NETNS"],
                        "curl",
                        "-sf",
                        "--noproxy",
                        "*",
                        "--max-time",
                        "20",
                        f"http://{nodes['WORKER_ADDR']}:{port}/",
                    ],
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
                assert body.returncode == 0 and body.stdout.strip() == "swarm-lab ok", body

            scraped, adm = scrape_while_stable(exporters["WORKER"], ns)
            svc = adm[f"FWM {mark}"]
            # the worker's IPVS balanced every request, to the manager's task, over the overlay
            assert svc.conns == REQUESTS, svc
            assert list(svc.dests) == [(task["EndpointIP"], 0)], svc.dests
            assert svc.dests[(task["EndpointIP"], 0)].conns == REQUESTS, svc
            # and the worker's exporter counts exactly that (every original sample equals ipvsadm)
            assert_original_samples_match(scraped, adm, ns, {mark: str(port)})
            conns = scraped[
                (
                    "ipvs_connections_total",
                    frozenset({("namespace", ns), ("fwmark", str(mark)), ("port", str(port))}),
                )
            ]
            assert conns == REQUESTS
            # the manager's own IPVS balanced none of them
            assert ipvsadm(manager_ns)[f"FWM {manager_mark}"].conns == manager_before

    def test_worker_exporter_names_services(self, nodes, exporters):
        """Names on the worker: its exporter with --docker-host at the worker's own dockerd,
        which answers no GET /services (HTTP 503): the names come from its network inspect."""
        with diagnosed():
            port = published_port(nodes["MANAGER_DOCKER_HOST"], "service_1")

            def named():
                got = {
                    dict(labels).get("port"): (dict(labels).get("service_name"), dict(labels).get("network"))
                    for labels in samples(scrape(exporters["WORKER"]), "ipvs_swarm_service_info")
                }
                return got or None

            try:
                got = wait_for("ipvs_swarm_service_info on the worker", named)
            except AssertionError:
                # what the worker's Engine API answers the exporter's naming request, for the record
                sock = nodes["WORKER_DOCKER_HOST"].removeprefix("unix://")
                answer = subprocess.run(
                    [
                        "curl",
                        "-s",
                        "--unix-socket",
                        sock,
                        "-w",
                        " (HTTP %{http_code})",
                        "http://docker/services",
                    ],
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
                docker_up = samples(scrape(exporters["WORKER"]), "ipvs_docker_up")
                print(
                    f"worker: GET /services -> {answer.stdout.strip()}; exporter ipvs_docker_up {docker_up}"
                )
                raise
            assert got == {str(port): ("service_1", "ingress")}, got

    def test_dockerswarm_sd_finds_both_nodes_up(self, nodes, exporters, tmp_path):
        """The shipped dockerswarm_sd_configs job (role nodes) against the manager: both nodes'
        exporters discovered, scraped on each node's address and up."""
        with diagnosed(), sd_prometheus(nodes["MANAGER_DOCKER_HOST"], tmp_path) as base:

            def all_up():
                targets = api(base, "targets")["activeTargets"]
                return len(targets) == 2 and all(t["health"] == "up" for t in targets) and targets

            targets = wait_for("both nodes' targets discovered and up", all_up)
            by_role = {t["labels"]["node_role"]: t for t in targets}
            assert sorted(by_role) == ["manager", "worker"], targets
            for role in ("manager", "worker"):
                addr = nodes[f"{role.upper()}_ADDR"]
                assert by_role[role]["scrapeUrl"] == f"http://{addr}:{PORT}/metrics", by_role[role]
            assert by_role["worker"]["labels"]["node"] == nodes["WORKER_HOSTNAME"], by_role["worker"]
            result = wait_for(
                "ipvs_up from both nodes",
                lambda: len(r := api(base, "query", query="ipvs_up")["result"]) == 2 and r,
            )
            assert sorted((r["metric"]["node_role"], r["value"][1]) for r in result) == [
                ("manager", "1"),
                ("worker", "1"),
            ], result


def test_global_stack_runs_one_exporter_per_node(nodes, tmp_path):
    """packaging/docker/stack.yml deployed as shipped on the two-node swarm: one exporter task
    per node, each serving its own node's ingress_sbox on NODE:10320, and Prometheus'
    dockerswarm_sd_configs finding both up. Runs after TestProcessExporters has freed 10320."""
    mgr = nodes["MANAGER_DOCKER_HOST"]
    with diagnosed():
        image = exporter_image(nodes)
        env = dict(os.environ, DOCKER_NETNS_DIR=nodes["STACK_NETNS_DIR"], EXPORTER_IMAGE=image)
        deploy = subprocess.run(
            [
                _docker_binary(),
                "--host",
                mgr,
                "stack",
                "deploy",
                "--resolve-image",
                "never",
                "-c",
                str(ROOT / "packaging/docker/stack.yml"),
                STACK,
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert deploy.returncode == 0, deploy.stderr
        try:
            names = {nodes["WORKER_HOSTNAME"], docker(mgr, "info", "--format", "{{.Name}}").strip()}

            def one_per_node():
                tasks = running_tasks(mgr, f"{STACK}_exporter")
                running = [line.split()[0] for line in tasks if " Running " in f"{line} "]
                return sorted(running) == sorted(names) and running

            wait_for("one running exporter task per node", one_per_node, timeout=900)
            for node in ("MANAGER", "WORKER"):
                url = f"http://{nodes[node + '_ADDR']}:{PORT}/metrics"
                wait_for(
                    f"the {node.lower()}'s stack exporter serving ipvs_up 1",
                    lambda u=url: scrape(u).get(("ipvs_up", frozenset({("namespace", STACK_NS)}))) == 1,
                )
            with sd_prometheus(mgr, tmp_path) as base:
                result = wait_for(
                    "both stack exporters discovered and up",
                    lambda: len(r := api(base, "query", query="up")["result"]) == 2
                    and all(x["value"][1] == "1" for x in r)
                    and r,
                )
                assert sorted(x["metric"]["node_role"] for x in result) == ["manager", "worker"], result
        finally:
            docker(mgr, "stack", "rm", STACK)

            def port_free():
                for node in ("MANAGER", "WORKER"):
                    with contextlib.suppress(OSError):
                        scrape(f"http://{nodes[node + '_ADDR']}:{PORT}/metrics")
                        return False
                return True

            wait_for("the stack's exporters gone from port 10320", port_free, timeout=300)
