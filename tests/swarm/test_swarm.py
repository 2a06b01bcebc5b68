"""The exporter on a real Docker Swarm (swarm-lab, inside the IPVS VM), once with the
host's iptables alternative set to nft and once to legacy.

Per backend the tests run in file order on the session's swarm, after the modules that leave
it as it came up (this one changes it): the README example (three
services, ten requests, every original sample equal to ipvsadm, ports as docker reports them),
swarm service names through the exporter and through swarm/names.py, churn, east-west VIP traffic
read with the lb_* glob, names of VIP and ingress fwmarks with their network from a manager and
from a worker's answers, a frozen dockerd, and dockerd stopped last, since it ends the swarm.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import os
import re
import signal
import socket
import socketserver
import subprocess
import threading
import time
from pathlib import Path

import pytest
from ipvs_testlib import (
    assert_original_samples_match,
    exporter_log,
    ipvsadm,
    namespaces_shown,
    of_namespace,
    running_exporter,
    samples,
    scrape,
    scrape_while_all_stable,
    scrape_while_stable,
    scraping,
    sh,
)
from swarmlib import API_TIMEOUT, IMAGE, WAIT, diag, marks_by_port, wait_for

from ingress_ipvs_exporter.swarm.client import DockerError
from ingress_ipvs_exporter.swarm.names import fetch_services

pytestmark = [pytest.mark.swarm, pytest.mark.swarm_lab_order(1)]

PROBE_MARK = 4000000  # a fwmark swarm does not use (it numbers services from 256)
NET = "namesnet"  # an overlay network with service 'api', for the naming tests
NOT_A_MANAGER = (
    b'{"message":"This node is not a swarm manager. Worker nodes can\'t be used to view or modify '
    b'cluster state. Please run this command on a manager node or promote the current node to a manager."}'
)


@contextlib.contextmanager
def diagnosed(*urls: str):
    """On failure, print swarm-lab's diagnostics (dockerd log, service ps, ipvsadm, rules) and
    the logs of the exporters at urls."""
    try:
        yield
    except BaseException:
        print(diag())
        for url in urls:
            with open(exporter_log(url)) as f:
                print(f"===== exporter log {url}\n{f.read()}")
        raise


def _names(mapping) -> dict[tuple[str, int], str]:
    return {port: service.name for port, service in mapping.items()}


def save_example(url: str, mark: int, backend: str) -> None:
    """The README example's lines as this run saw them, in build/vm/ (writable from the VM)."""
    import urllib.request

    text = urllib.request.urlopen(url, timeout=60).read().decode()
    original = re.compile(r"^ipvs_(bytes_(in|out)|connections|destination_[a-z_]+|services)_total\{")
    lines = [
        line
        for line in text.splitlines()
        if original.match(line) and (f'fwmark="{mark}"' in line or line.startswith("ipvs_services_total"))
    ]
    out = Path(__file__).parents[2] / "build" / "vm"
    if out.is_dir():
        (out / f"readme-example-{backend}.txt").write_text("\n".join(sorted(lines)) + "\n")


def test_readme_example_seed_metrics_equal_ipvsadm(lab):
    with diagnosed():
        ports = lab.ports()  # what `docker service inspect` reports: the truth
        assert sorted(ports) == ["service_1", "service_2", "service_3"]
        marks = marks_by_port(lab)
        assert set(marks) == set(ports.values()), f"mangle rules {marks} vs published {ports}"
        subprocess.run(["nsenter", f"--net={lab.ingress_ns}", "ipvsadm", "-Z"], check=True, timeout=60)
        first = ports["service_1"]
        lab.requests(first, 10)
        with running_exporter("--namespace-path", lab.ingress_ns) as (url, _):
            scraped, before = scrape_while_stable(url, lab.ingress_ns)
            save_example(url, marks[first], lab.backend)
        ns = frozenset({("namespace", lab.ingress_ns)})
        assert scraped[("ipvs_services_total", ns)] == 3
        assert scraped[("ipvs_up", ns)] == 1
        for name, port in ports.items():  # each service's port label is its published port
            series = samples(scraped, "ipvs_connections_total")
            assert frozenset(ns | {("fwmark", str(marks[port])), ("port", str(port))}) in series, (name, port)
        conns = scraped[
            ("ipvs_connections_total", frozenset(ns | {("fwmark", str(marks[first])), ("port", str(first))}))
        ]
        assert conns == 10
        assert_original_samples_match(scraped, before, lab.ingress_ns, {m: str(p) for p, m in marks.items()})


def test_fetch_services_names_each_published_port(lab):
    ports = lab.ports()
    assert sorted(ports) == ["service_1", "service_2", "service_3"]
    got = fetch_services(lab.docker_host, timeout=API_TIMEOUT).by_port
    assert _names(got) == {("tcp", port): name for name, port in ports.items()}
    ids = lab.ids()
    assert {service.name: service.id for service in got.values()} == {name: ids[name] for name in ports}


def test_service_names_through_the_exporter_follow_churn(lab):
    with (
        diagnosed(),
        running_exporter("--namespace-path", lab.ingress_ns, "--docker-host", lab.docker_host) as (url, _),
    ):
        ns = ("namespace", lab.ingress_ns)

        def names() -> dict[int, str]:
            """published port -> service name, from ipvs_swarm_service_info."""
            got = {}
            for labels in samples(scrape(url), "ipvs_swarm_service_info"):
                d = dict(labels)
                assert d["namespace"] == lab.ingress_ns
                got[int(d["port"])] = d["service_name"]
            return got

        def wait_names(expected: dict[int, str]) -> None:
            deadline = time.monotonic() + WAIT
            while (got := names()) != expected:
                assert time.monotonic() < deadline, f"names {got}, expected {expected}"
                time.sleep(2)

        wait_names({port: name for name, port in lab.ports().items()})
        assert scrape(url)[("ipvs_docker_up", frozenset({ns}))] == 1
        # churn between scrapes: a service created, another removed
        lab.docker(
            "service",
            "create",
            "--no-resolve-image",
            "--detach=true",
            "--name",
            "service_4",
            "--publish",
            "80",
            IMAGE,
            "/bin/httpd",
            "-f",
            "-p",
            "80",
            "-h",
            "/www",
        )
        lab.wait_ports(lambda p: "service_4" in p, "service_4 published")
        lab.docker("service", "rm", "service_3")
        after = lab.wait_ports(lambda p: "service_3" not in p, "service_3 removed")
        wait_names({port: name for name, port in after.items()})


def _client_requests(lab, container: str, vip: str, n: int) -> None:
    """n HTTP/1.0 GETs from a task to a VIP over busybox nc (the image's static busybox
    wget crashes without a libc: docs/swarm-ipvs.md); every one must be answered."""
    script = (
        'ok=0; i=0; while [ $i -lt "$2" ]; do i=$((i + 1)); '
        'if /bin/busybox printf "GET / HTTP/1.0\\r\\n\\r\\n" | /bin/busybox nc -w 10 "$1" 80 '
        '| /bin/busybox grep -q "200 OK"; then ok=$((ok + 1)); fi; done; echo "$ok"'
    )
    answered = lab.docker("exec", container, "/bin/busybox", "sh", "-c", script, "sh", vip, str(n))
    assert answered.strip() == str(n), f"{answered.strip()} of {n} requests to {vip} answered"


def save_east_west_example(url: str, lb: str, mark: int, backend: str) -> None:
    """The README's east-west lines as this run saw them, in build/vm/."""
    import urllib.request

    text = urllib.request.urlopen(url, timeout=60).read().decode()
    lines = [
        line
        for line in text.splitlines()
        if f'namespace="{lb}"' in line
        and f'fwmark="{mark}"' in line
        and line.startswith(
            ("ipvs_connections_total", "ipvs_service_connections_total", "ipvs_swarm_service_info")
        )
    ]
    out = Path(__file__).parents[2] / "build" / "vm"
    if out.is_dir():
        (out / f"east-west-example-{backend}.txt").write_text("\n".join(sorted(lines)) + "\n")


def test_east_west_vip_traffic_is_counted_in_its_load_balancer_namespace(lab):
    """A task calls a service's VIP on an overlay network: the exporter, reading ingress_sbox
    and the lb_* glob in one process, shows the connections in that network's lb_
    namespace under the VIP's fwmark with the VIP and the service's name, and every sample
    of both namespaces equals ipvsadm there."""
    net = f"east{lab.backend}"
    netns_dir = os.path.dirname(lab.ingress_ns)
    try:
        with diagnosed():
            lab.docker("network", "create", "-d", "overlay", "--attachable", net)
            net_id = lab.docker("network", "inspect", "-f", "{{.Id}}", net).strip()
            lb = os.path.join(netns_dir, f"lb_{net_id[:9]}")
            for name, command in (
                ("api", ["/bin/httpd", "-f", "-p", "80", "-h", "/www"]),
                ("client", ["/bin/busybox", "sleep", "3600"]),
            ):
                replicas = "2" if name == "api" else "1"
                lab.docker(
                    *("service", "create", "--no-resolve-image", "--detach=true", "--name", f"{net}_{name}"),
                    *("--replicas", replicas, "--network", net, IMAGE, *command),
                )
            api = f"{net}_api"

            def converged():
                verbose = json.loads(lab.docker("network", "inspect", "--verbose", net))[0]
                svc = (verbose.get("Services") or {}).get(api) or {}
                if len(svc.get("Tasks") or []) != 2 or not os.path.exists(lb):
                    return None
                mark = svc["LocalLBIndex"]
                found = ipvsadm(lb).get(f"FWM {mark}")
                return (svc["VIP"], mark) if found and len(found.dests) == 2 else None

            vip, mark = wait_for("api's VIP balanced to 2 tasks in lb_", converged)
            client = wait_for(
                "the client task running",
                lambda: lab.docker(
                    "ps", "-q", "--filter", f"label=com.docker.swarm.service.name={net}_client"
                ).split(),
            )[0]
            _client_requests(lab, client, vip, 6)
            pattern = os.path.join(netns_dir, "lb_*")
            args = (
                "--namespace-path",
                lab.ingress_ns,
                "--namespace-path",
                pattern,
                "--docker-host",
                lab.docker_host,
            )
            with running_exporter(*args) as (url, _):
                mine = {"namespace": lb, "fwmark": str(mark)}

                def named():
                    info = samples(scrape(url), "ipvs_swarm_service_info")
                    return [dict(k) for k in info if mine.items() <= dict(k).items()]

                names = wait_for("the VIP service named", named)
                scraped, before = scrape_while_all_stable(url, [lab.ingress_ns, lb])
                save_east_west_example(url, lb, mark, lab.backend)
                assert names[0]["service_name"] == api and names[0]["network"] == net
                assert {lab.ingress_ns, lb} <= namespaces_shown(scraped)
                assert before[lb][f"FWM {mark}"].conns >= 6
                svc_labels = {"family": "ipv4", "port": "", "protocol": "", "vip": vip, **mine}
                got = scraped[("ipvs_service_connections_total", frozenset(svc_labels.items()))]
                assert got == before[lb][f"FWM {mark}"].conns
                assert_original_samples_match(of_namespace(scraped, lb), before[lb], lb, {})
                ingress_ports = {m: str(p) for p, m in marks_by_port(lab).items()}
                ingress = of_namespace(scraped, lab.ingress_ns)
                assert_original_samples_match(ingress, before[lab.ingress_ns], lab.ingress_ns, ingress_ports)
                # the network goes while scraping: its lb_ namespace (stale for a while, then
                # deleted) never fails a scrape and its series go with it
                with scraping(url) as seen:
                    lab.docker("service", "rm", f"{net}_api", f"{net}_client")
                    wait_for(
                        "the services' tasks gone",
                        lambda: lab.docker("network", "inspect", "-f", "{{len .Containers}}", net).strip()
                        == "0",
                    )
                    lab.docker("network", "rm", net)
                    wait_for(f"{lb}'s series gone", lambda: not of_namespace(scrape(url), lb))
                assert not seen["failures"], seen["failures"][:3]
                assert seen["bodies"] and all(
                    f'ipvs_up{{namespace="{lab.ingress_ns}"}} 1.0' in b for b in seen["bodies"]
                )
    finally:
        with contextlib.suppress(AssertionError):  # the lab goes down after the module anyway
            lab.docker("service", "rm", f"{net}_api", f"{net}_client")


def _ipvs_fwmarks(ns: str) -> set[int]:
    """The FWM virtual services that have a real server in ns, as ipvsadm lists them."""
    return {int(key.split()[1]) for key, svc in ipvsadm(ns).items() if key.startswith("FWM ") and svc.dests}


def _lb_index(lab, network: str) -> dict[str, int]:
    """service name -> LocalLBIndex, from the docker CLI's verbose network inspect."""
    services = json.loads(
        lab.docker("network", "inspect", "--verbose", "--format", "{{json .Services}}", network)
    )
    return {name: s["LocalLBIndex"] for name, s in (services or {}).items() if name and s.get("LocalLBIndex")}


@pytest.fixture(scope="module")
def overlay(lab):
    """NET with service 'api' attached (1 replica, no published port), converged: its lb_
    namespace holds api's FWM service. Yields (lb namespace path, api's fwmark)."""
    with diagnosed():
        net_id = lab.docker("network", "create", "-d", "overlay", "--attachable", NET).strip()
        lab.docker(
            "service", "create", "--no-resolve-image", "--detach=true", "--name", "api", "--replicas", "1",
            "--network", NET, IMAGE, "/bin/httpd", "-f", "-p", "80", "-h", "/www",
        )  # fmt: skip
        lb_ns = os.path.join(os.path.dirname(lab.ingress_ns), f"lb_{net_id[:9]}")

        def balanced():
            index = _lb_index(lab, NET)
            return "api" in index and os.path.exists(lb_ns) and index["api"] in _ipvs_fwmarks(lb_ns) and index

        index = wait_for(f"api load-balanced in {lb_ns}", balanced, timeout=2 * WAIT)
    yield lb_ns, index["api"]


class _Handler(http.server.BaseHTTPRequestHandler):
    """Forwards GETs to the lab's dockerd, except /services (and versioned forms): 503 as on a worker."""

    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if re.fullmatch(r"(/v[0-9.]+)?/services([/?].*)?", self.path):
            status, body = 503, NOT_A_MANAGER
        else:
            conn = http.client.HTTPConnection("localhost", timeout=60)
            conn.sock = _unix_socket(self.server.upstream)
            conn.request("GET", self.path, headers={"Host": "docker"})
            resp = conn.getresponse()
            status, body = resp.status, resp.read()
            conn.close()
        self.server.paths.append((self.path, status))
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def _unix_socket(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(60)
    sock.connect(path)
    return sock


class _Proxy(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@contextlib.contextmanager
def worker_view(lab, tmp_path):
    """A unix socket that answers like a worker node's dockerd; yields (its docker host, paths seen)."""
    path = os.path.join(str(tmp_path), "worker.sock")
    server = _Proxy(path, _Handler)
    server.upstream = lab.docker_host.removeprefix("unix://")
    server.paths = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"unix://{path}", server.paths
    finally:
        server.shutdown()
        server.server_close()


def _wait_info(url: str, want: set[frozenset]) -> set[frozenset]:
    """ipvs_swarm_service_info's series once they include every series of want."""

    def served():
        info = samples(scrape(url), "ipvs_swarm_service_info").keys()
        return set(info) if want <= info else None

    return wait_for(f"ipvs_swarm_service_info to include {sorted(map(sorted, want))}", served)


def _series(ns: str, mark: int, network: str, port: str, sid: str, name: str) -> frozenset:
    return frozenset(
        {
            ("namespace", ns),
            ("fwmark", str(mark)),
            ("network", network),
            ("port", port),
            ("service_id", sid),
            ("service_name", name),
        }
    )


def _expected(lab, lb_ns: str, api_mark: int, with_ids: bool) -> tuple[set[frozenset], set[frozenset]]:
    """What the lb_ exporter and the ingress_sbox exporter must serve, from the docker CLI."""
    ids = lab.ids() if with_ids else {}
    ingress = _lb_index(lab, "ingress")
    published = lab.ports()
    assert set(published) <= set(ingress), f"ingress LocalLBIndex {ingress}, published {published}"
    assert set(ingress.values()) <= _ipvs_fwmarks(lab.ingress_ns)  # LocalLBIndex is the fwmark there too
    lb = {_series(lb_ns, api_mark, NET, "", ids.get("api", ""), "api")}
    mesh = {
        _series(lab.ingress_ns, ingress[name], "ingress", str(port), ids.get(name, ""), name)
        for name, port in published.items()
    }
    return lb, mesh


def test_a_manager_names_vip_and_ingress_fwmarks_with_their_network(lab, overlay):
    lb_ns, api_mark = overlay
    with (
        running_exporter("--namespace-path", lb_ns, "--docker-host", lab.docker_host) as (lb_url, _),
        running_exporter("--namespace-path", lab.ingress_ns, "--docker-host", lab.docker_host) as (in_url, _),
        diagnosed(lb_url, in_url),
    ):
        lb, mesh = _expected(lab, lb_ns, api_mark, with_ids=True)
        assert all(dict(s)["service_id"] for s in lb | mesh)  # a manager answers GET /services: IDs
        assert _wait_info(lb_url, lb) == lb  # exactly api, under its LocalLBIndex, port ""
        assert _wait_info(in_url, mesh) == mesh
        for url, ns in ((lb_url, lb_ns), (in_url, lab.ingress_ns)):
            assert scrape(url)[("ipvs_docker_up", frozenset({("namespace", ns)}))] == 1


def test_a_worker_names_them_without_ids(lab, overlay, tmp_path):
    lb_ns, api_mark = overlay
    with worker_view(lab, tmp_path) as (host, paths):
        with (
            running_exporter("--namespace-path", lb_ns, "--docker-host", host) as (lb_url, _),
            running_exporter("--namespace-path", lab.ingress_ns, "--docker-host", host) as (in_url, _),
            diagnosed(lb_url, in_url),
        ):
            lb, mesh = _expected(lab, lb_ns, api_mark, with_ids=False)
            assert _wait_info(lb_url, lb) == lb
            assert _wait_info(in_url, mesh) == mesh
            for url, ns in ((lb_url, lb_ns), (in_url, lab.ingress_ns)):
                assert scrape(url)[("ipvs_docker_up", frozenset({("namespace", ns)}))] == 1
            with open(exporter_log(lb_url)) as f:
                said = f.read()
            assert "not a swarm manager" in said and "Traceback" not in said
    assert ("/services", 503) in paths and any(p.startswith("/networks/") and s == 200 for p, s in paths)


def test_docker_api_hanging_leaves_ipvs_metrics_alone(lab):
    """dockerd frozen (SIGSTOP): its API stops answering but the swarm's IPVS stays, as when
    a busy or wedged dockerd does not answer. Scrapes go on, unaffected; only
    ipvs_docker_up turns 0; the last known names stay.

    A fwmark service the exporter has not seen, added to ingress_sbox and removed again,
    makes it refresh the names at once rather than when they are 60 s old (the same
    background refresh; its timing is the unit tests' business)."""
    pid = int(Path(lab.state, "dockerd.pid").read_text().strip())
    probe = ("-f", str(PROBE_MARK))
    with running_exporter("--namespace-path", lab.ingress_ns, "--docker-host", lab.docker_host) as (url, _):
        ns = frozenset({("namespace", lab.ingress_ns)})
        deadline = time.monotonic() + WAIT
        while not samples(before := scrape(url), "ipvs_swarm_service_info"):
            assert time.monotonic() < deadline, "no names before freezing dockerd"
            time.sleep(2)
        os.kill(pid, signal.SIGSTOP)
        try:
            sh("ipvsadm", "-A", *probe, "-s", "rr", ns_path=lab.ingress_ns)
            deadline = time.monotonic() + WAIT
            after = scrape(url)
            while after.get(("ipvs_docker_up", ns)) != 0:  # the refresh times out in the background
                assert time.monotonic() < deadline, "ipvs_docker_up never went to 0"
                assert after[("ipvs_up", ns)] == 1
                time.sleep(2)
                after = scrape(url)
            sh("ipvsadm", "-D", *probe, ns_path=lab.ingress_ns)
            after = scrape(url)
            assert after[("ipvs_up", ns)] == 1
            for name in (
                "ipvs_connections_total",
                "ipvs_destination_total",
                "ipvs_destination_connections_total",
            ):
                assert samples(after, name).keys() == samples(before, name).keys(), name
            assert (
                samples(after, "ipvs_swarm_service_info").keys()
                == samples(before, "ipvs_swarm_service_info").keys()
            )
        finally:
            sh("ipvsadm", "-D", *probe, ns_path=lab.ingress_ns, check=False)
            os.kill(pid, signal.SIGCONT)


@pytest.mark.swarm_lab_order(2)
def test_docker_api_down_fails_fast(lab):
    """Last for this swarm: dockerd stopped; the API client fails at once, in one line."""
    pid = int(Path(lab.state, "dockerd.pid").read_text().strip())
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + WAIT
    while os.path.exists(f"/proc/{pid}"):
        assert time.monotonic() < deadline, f"dockerd {pid} still running {WAIT:g}s after SIGTERM"
        time.sleep(1)
    start = time.monotonic()
    with pytest.raises(DockerError) as info:
        fetch_services(lab.docker_host, timeout=API_TIMEOUT)
    assert time.monotonic() - start < 5.0, "a stopped dockerd must fail fast, not time out"
    message = str(info.value)
    assert lab.docker_host in message and "\n" not in message
    assert info.value.kind == "unreachable"
