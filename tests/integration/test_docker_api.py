"""docker against a fake Docker API served over a unix socket or TCP in this process (a manager,
a worker, a hostile one; plain and TLS): GET /services, the verbose network inspect, and the
TLS set-up at start-up."""

import http.server
import json
import logging
import os
import shutil
import socket
import socketserver
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import types

import pytest
import typer

from ingress_ipvs_exporter import flags, testing
from ingress_ipvs_exporter.swarm import endpoint, names
from ingress_ipvs_exporter.swarm.client import DockerError
from ingress_ipvs_exporter.swarm.names import (
    DockerServices,
    SwarmService,
    fetch_network_names,
    fetch_services,
)

WEB = SwarmService("kqlmvf2x3ng0ijlkjb0agq8fu", "web", "ingress")
DNS = SwarmService("3u3e9hq7b0x2gaqmvp3hxyy8p", "dns", "ingress")


def _port(published, protocol="tcp", mode="ingress", target=80):
    """One Endpoint.Ports entry as Docker 20.10 returns it."""
    return {"Protocol": protocol, "TargetPort": target, "PublishedPort": published, "PublishMode": mode}


def _service(sid, name, ports, vips=True):
    """One GET /services item, trimmed to what a real 20.10 daemon returns around the fields we read."""
    spec_ports = [{k: v for k, v in p.items() if k != "PublishedPort"} for p in ports]
    item = {
        "ID": sid,
        "Version": {"Index": 42},
        "CreatedAt": "2024-05-01T10:00:00.000000000Z",
        "UpdatedAt": "2024-05-01T10:00:00.000000000Z",
        "Spec": {
            "Name": name,
            "Labels": {},
            "TaskTemplate": {"ContainerSpec": {"Image": "swarm-lab/httpd:latest"}, "ForceUpdate": 0},
            "Mode": {"Replicated": {"Replicas": 1}},
            "EndpointSpec": {"Mode": "vip", "Ports": spec_ports},
        },
        "Endpoint": {"Spec": {"Mode": "vip", "Ports": spec_ports}},
    }
    if ports:
        item["Endpoint"]["Ports"] = ports
    if vips:
        item["Endpoint"]["VirtualIPs"] = [{"NetworkID": "ingressnetid", "Addr": "10.0.0.5/24"}]
    return item


SERVICES = [
    _service(WEB.id, WEB.name, [_port(30000), _port(8080, target=8080)]),
    _service(DNS.id, DNS.name, [_port(53, "udp", target=53)]),
    _service("hostmodeid", "agent", [_port(9100, mode="host", target=9100)], vips=False),
    _service("noportsid", "worker", [], vips=False),
]
EXPECTED = {("tcp", 30000): WEB, ("tcp", 8080): WEB, ("udp", 53): DNS}


class _Handler(http.server.BaseHTTPRequestHandler):
    """Answers every GET with the server's (status, body); records the requests it saw."""

    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.server.requests.append((self.path, self.headers.get("Host")))
        status, body = self.server.answer
        if isinstance(body, Routes):
            status, body = body.get(self.path, (404, {"message": "page not found"}))
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):  # quiet, and the unix peer address is "" (would IndexError)
        pass


class Routes(dict):
    """A fake daemon's answers by request path: path -> (status, body); 404 elsewhere."""


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class _TCPServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


def _short_dir(tmp_path):
    """tmp_path, or a short temp dir when tmp_path would make a socket path too long (108 bytes)."""
    if len(str(tmp_path)) < 80:
        return tmp_path
    return tempfile.mkdtemp(prefix="dk", dir="/tmp")


def _serve(server, answer):
    server.answer = answer
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server


@pytest.fixture
def fake_docker(tmp_path):
    """A fake Docker API on a unix socket; returns a function (status, body) -> 'unix://...' host."""
    servers = []

    def start(status=200, body=SERVICES):
        path = os.path.join(_short_dir(tmp_path), f"docker{len(servers)}.sock")
        server = _serve(_UnixServer(path, _Handler), (status, body))
        servers.append(server)
        return f"unix://{path}"

    start.servers = servers
    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------------------- fetch_services
def test_fetch_services_maps_ingress_ports(fake_docker):
    host = fake_docker()
    got = fetch_services(host)
    assert got.by_port == EXPECTED
    assert got.ids == {"web": WEB.id, "dns": DNS.id, "agent": "hostmodeid", "worker": "noportsid"}
    [(path, host_header)] = fake_docker.servers[0].requests
    assert path == "/services" and host_header


def test_fetch_services_over_tcp():
    server = _serve(_TCPServer(("127.0.0.1", 0), _Handler), (200, SERVICES))
    try:
        for scheme in ("tcp", "http"):
            assert fetch_services(f"{scheme}://127.0.0.1:{server.server_address[1]}").by_port == EXPECTED
    finally:
        server.shutdown()
        server.server_close()


def test_fetch_services_tolerates_odd_items(fake_docker):
    odd = [
        "not a dict",
        {"ID": "x"},  # no Spec, no Endpoint
        {"ID": "y", "Spec": {"Name": "y"}, "Endpoint": {"Ports": None}},
        {
            "ID": "z",
            "Spec": {"Name": "z"},
            "Endpoint": {
                "Ports": [
                    {"Protocol": "tcp", "TargetPort": 80},  # not published yet
                    {"Protocol": "TCP", "PublishedPort": 30005},  # no PublishMode: ingress is the default
                    {"Protocol": "tcp", "PublishedPort": "30006", "PublishMode": "ingress"},
                ]
            },
        },
    ]
    host = fake_docker(body=odd)
    assert fetch_services(host).by_port == {("tcp", 30005): SwarmService("z", "z", "ingress")}


def test_fetch_services_no_services(fake_docker):
    assert fetch_services(fake_docker(body=[])).by_port == {}


def test_fetch_services_socket_missing(tmp_path):
    host = f"unix://{tmp_path}/docker.sock"
    start = time.monotonic()
    with pytest.raises(DockerError) as info:
        fetch_services(host)
    assert time.monotonic() - start < 1
    message = str(info.value)
    assert host in message and "does not exist" in message and "--docker-host" in message
    assert info.value.kind == "unreachable"


def test_fetch_services_connection_refused(tmp_path):
    path = os.path.join(_short_dir(tmp_path), "stale.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.close()  # the file stays, nobody listens: what a crashed dockerd leaves behind
    with pytest.raises(DockerError, match="connection refused"):
        fetch_services(f"unix://{path}")


def test_fetch_services_not_a_manager(fake_docker):
    body = {
        "message": "This node is not a swarm manager. Worker nodes can't be used to view or "
        "modify cluster state. Please run this command on a manager node or promote "
        "the current node to a manager."
    }
    host = fake_docker(503, body)
    with pytest.raises(DockerError) as info:
        fetch_services(host)
    message = str(info.value)
    assert "\n" not in message and host in message and "503" in message
    assert "not a swarm manager" in message
    assert "worker node" in message and "network inspect" in message
    assert info.value.kind == "http" and info.value.status == 503


def test_fetch_services_other_http_error(fake_docker):
    with pytest.raises(DockerError, match=r"HTTP 500: boom\b"):
        fetch_services(fake_docker(500, {"message": "boom\nline two"}))
    with pytest.raises(DockerError, match="HTTP 404: page not found"):
        fetch_services(fake_docker(404, b"page not found\n"))


def test_fetch_services_timeout(tmp_path):
    path = os.path.join(_short_dir(tmp_path), "mute.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(1)  # accepts connections (kernel backlog) but never answers
    try:
        start = time.monotonic()
        with pytest.raises(DockerError) as info:
            fetch_services(f"unix://{path}", timeout=0.5)
        elapsed = time.monotonic() - start
    finally:
        sock.close()
    assert 0.4 < elapsed < 3.0
    assert "no answer within 0.5s" in str(info.value) and info.value.kind == "timeout"


def test_fetch_services_slow_dribble_is_bounded(tmp_path):
    """A server that sends a byte now and then cannot stretch the call past the timeout."""
    path = os.path.join(_short_dir(tmp_path), "slow.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    stop = threading.Event()

    def dribble():
        conn, _ = listener.accept()
        conn.recv(4096)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n[")
        while not stop.wait(0.1):
            try:
                conn.sendall(b" ")
            except OSError:
                break
        conn.close()

    thread = threading.Thread(target=dribble, daemon=True)
    thread.start()
    try:
        start = time.monotonic()
        with pytest.raises(DockerError, match="no answer within"):
            fetch_services(f"unix://{path}", timeout=0.6)
        assert time.monotonic() - start < 2.5
    finally:
        stop.set()
        listener.close()


def _one_connection(tmp_path, answer):
    """A unix socket whose first connection gets answer(conn) after the request; stop() ends it."""
    path = os.path.join(_short_dir(tmp_path), "one.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    stop = threading.Event()
    cut = threading.Event()  # the client went away before the whole answer was sent

    def serve():
        conn, _ = listener.accept()
        with conn:
            conn.recv(4096)
            try:
                answer(conn, stop)
            except OSError:
                cut.set()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()

    def close():
        """Whether the client cut the answer short (waits for the answer to end first)."""
        thread.join(60)
        stop.set()
        listener.close()
        return cut.is_set()

    return f"unix://{path}", close


def _docker_error(tmp_path, answer, timeout: float) -> tuple[DockerError, bool]:
    """The DockerError of fetch_services against _one_connection(answer), and whether the
    client cut the answer short."""
    host, close = _one_connection(tmp_path, answer)
    try:
        with pytest.raises(DockerError) as info:
            fetch_services(host, timeout=timeout)
    finally:
        cut = close()
    return info.value, cut


def test_a_trickled_status_line_and_headers_are_bounded_by_the_timeout(tmp_path):
    """One header byte every 0.1 s for up to 10 s: the client gives up at its 0.6 s timeout,
    before the trickle is over (a per-read socket timeout waited for all of it)."""

    def trickle(conn, stop):
        for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 100:
            time.sleep(0.1)
            conn.sendall(bytes([byte]))

    error, cut = _docker_error(tmp_path, trickle, 0.6)
    assert cut, "the client read the whole trickle"
    assert "no answer within 0.6s" in str(error) and error.kind == "timeout"


def test_an_answer_over_the_size_cap_is_refused_before_it_is_parsed(tmp_path):
    """A 20 MiB JSON list (valid, of no service) is cut at the cap, not read whole and parsed."""
    block, blocks = b"0," * 32768, 320

    def huge(conn, stop):
        size = 1 + blocks * len(block) + 2
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n[" % size)
        for _ in range(blocks):
            conn.sendall(block)
        conn.sendall(b"0]")

    error, cut = _docker_error(tmp_path, huge, 30)
    assert cut and "answer larger than 16 MiB" in str(error) and error.kind == "answer"


def test_garbage_for_a_status_line_is_not_copied_into_the_message(tmp_path):
    def garbage(conn, stop):
        conn.sendall(b"\x1b[31mEVIL\x07 not http at all\r\n\r\n")

    error, _ = _docker_error(tmp_path, garbage, 5)
    message = str(error)
    assert "EVIL" not in message and "\x1b" not in message and "not an HTTP answer" in message, message


@pytest.mark.parametrize("body", [b"{not json", b"\xff\xfe", b'{"message": "a dict, not a list"}', b"null"])
def test_fetch_services_bad_json(fake_docker, body):
    host = fake_docker(200, body)
    with pytest.raises(DockerError) as info:
        fetch_services(host)
    message = str(info.value)
    assert host in message and "JSON" in message and "\n" not in message
    assert info.value.kind == "answer"


def test_fetch_services_bad_host_is_docker_error():
    with pytest.raises(DockerError, match="--docker-host"):
        fetch_services("docker.sock")


# ---------------------------------------------------------------------------- the network route
# Shapes as a Docker 20.10 node answers them (docs/swarm-ipvs.md): GET /networks lists the
# node's networks; the verbose inspect's Services carry each service's LocalLBIndex (= fwmark).
APPNET_ID, INGRESS_ID = "k7z6c1mriroypvtp7f0v9qbgm", "qd497xqk61e8cbmpe2gm0cxb2"
NETWORKS = [
    {"Name": "bridge", "Id": "f3a1c0de" * 8, "Scope": "local", "Driver": "bridge", "Ingress": False},
    {"Name": "ingress", "Id": INGRESS_ID, "Scope": "swarm", "Driver": "overlay", "Ingress": True},
    {"Name": "appnet", "Id": APPNET_ID, "Scope": "swarm", "Driver": "overlay", "Ingress": False},
]


def _task(name, ip):
    return {"Name": name, "EndpointID": "e" * 64, "EndpointIP": ip, "Info": {"Host IP": "192.0.2.10"}}


APPNET = {
    "Name": "appnet",
    "Id": APPNET_ID,
    "Scope": "swarm",
    "Driver": "overlay",
    "Containers": {"lb-appnet": {"Name": "appnet-endpoint", "IPv4Address": "198.19.1.5/24"}},
    "Services": {
        "api": {
            "VIP": "198.19.1.2",
            "Ports": [],
            "LocalLBIndex": 257,
            "Tasks": [
                _task("api.1.qahivnd4iagvvujkazu2hm2sn", "198.19.1.3"),
                _task("api.2.yr4s", "198.19.1.4"),
            ],
        },
        "apipub": {
            "VIP": "198.19.1.6",
            "Ports": [],
            "LocalLBIndex": 259,
            "Tasks": [_task("apipub.1.y", "198.19.1.7")],
        },
        "client": {
            "VIP": "198.19.1.8",
            "Ports": [],
            "LocalLBIndex": 258,
            "Tasks": [_task("client.1.n", "198.19.1.9")],
        },
    },
    "Peers": [{"Name": "0bfc4155815b", "IP": "192.0.2.10"}],
}
INGRESS_NET = {
    "Name": "ingress",
    "Id": INGRESS_ID,
    "Ingress": True,
    "Services": {
        "": {
            "VIP": "<nil>",
            "Ports": [],
            "LocalLBIndex": 0,
            "Tasks": [_task("ingress-endpoint", "198.19.0.2")],
        },
        "apipub": {
            "VIP": "198.19.0.5",
            "Ports": ["Target: 80, Publish: 30001"],
            "LocalLBIndex": 260,
            "Tasks": [],
        },
        "web": {
            "VIP": "198.19.0.3",
            "Ports": ["Target: 80, Publish: 30000"],
            "LocalLBIndex": 256,
            "Tasks": [],
        },
    },
}
NETNS = "/var/run/docker/netns/"
IN, LB = NETNS + "ingress_sbox", NETNS + "lb_k7z6c1mri"
NOT_A_MANAGER = {
    "message": "This node is not a swarm manager. Worker nodes can't be used to view or modify cluster state."
}


def _daemon(
    services=(200, SERVICES), networks=(200, NETWORKS), appnet=(200, APPNET), ingress=(200, INGRESS_NET)
):
    """The routes of a fake 20.10 node; a worker answers 503 to /services."""
    return Routes(
        {
            "/services": services,
            "/networks": networks,
            f"/networks/{APPNET_ID}?verbose=true": appnet,
            f"/networks/{INGRESS_ID}?verbose=true": ingress,
        }
    )


def test_fetch_network_names_maps_local_lb_index_per_sandbox(fake_docker):
    host = fake_docker(body=_daemon())
    got = fetch_network_names(host, 2.0, ["lb_k7z6c1mri", "ingress_sbox", "1-k7z6c1mrir", "43519d37da6c"])
    assert got == {
        ("lb_k7z6c1mri", 257): SwarmService("", "api", "appnet"),
        ("lb_k7z6c1mri", 258): SwarmService("", "client", "appnet"),
        ("lb_k7z6c1mri", 259): SwarmService("", "apipub", "appnet"),
        ("ingress_sbox", 256): SwarmService("", "web", "ingress"),
        ("ingress_sbox", 260): SwarmService("", "apipub", "ingress"),  # not the pseudo-service
    }
    paths = sorted(p for p, _ in fake_docker.servers[0].requests)
    assert paths == [
        "/networks",
        f"/networks/{APPNET_ID}?verbose=true",
        f"/networks/{INGRESS_ID}?verbose=true",
    ]


def test_fetch_network_names_asks_nothing_without_a_load_balancer_namespace(fake_docker):
    host = fake_docker(body=_daemon())
    assert fetch_network_names(host, 2.0, ["1-k7z6c1mrir", "custom"]) == {}
    assert fake_docker.servers[0].requests == []


def test_fetch_network_names_skips_a_network_gone_and_one_with_no_services(fake_docker):
    host = fake_docker(
        body=_daemon(appnet=(404, {"message": "network appnet not found"}), ingress=(200, {"Services": None}))
    )
    assert fetch_network_names(host, 2.0, ["lb_k7z6c1mri", "ingress_sbox", "lb_zzzzzzzzz"]) == {}


HOSTILE = [
    pytest.param(dict(networks=(200, {"not": "a list"})), id="networks-not-a-list"),
    pytest.param(dict(networks=(200, [1, None, "x", {"Id": 5, "Name": "appnet"}])), id="network-items"),
    pytest.param(dict(networks=(200, [{"Id": "lb/../../x", "Name": "a"}])), id="id-with-a-path"),
    pytest.param(dict(networks=(200, [{"Id": APPNET_ID, "Name": None}])), id="no-name"),
    pytest.param(dict(networks=(200, NETWORKS + [dict(NETWORKS[2], Name="twin")])), id="ambiguous-prefix"),
    pytest.param(dict(appnet=(200, [])), id="inspect-a-list"),
    pytest.param(dict(appnet=(200, {"Services": ["api"]})), id="services-a-list"),
    pytest.param(
        dict(
            appnet=(
                200,
                {
                    "Services": {
                        "a": None,
                        "b": {"LocalLBIndex": "257"},
                        "c": {"LocalLBIndex": True},
                        "d": {"LocalLBIndex": -1},
                        "e": {"LocalLBIndex": 2.5},
                    }
                },
            )
        ),
        id="odd-services",
    ),
    pytest.param(dict(appnet=(200, b"{not json")), id="inspect-not-json"),
    pytest.param(dict(networks=(500, {"message": "boom"})), id="networks-500"),
]


@pytest.mark.parametrize("routes", HOSTILE)
def test_hostile_network_answers_never_raise_out_of_names(fake_docker, routes, caplog):
    """A broken or hostile daemon: no name for appnet's marks, a log line at most, no traceback."""
    cache = DockerServices(fake_docker(body=_daemon(services=(503, NOT_A_MANAGER), **routes)), timeout=2.0)
    try:
        with caplog.at_level(logging.DEBUG, logger=names.__name__):
            assert cache.names(LB, [257, 258, 259]) == {}
            assert testing.wait_idle(cache, 5)
            assert cache.names(LB, [257, 258, 259]) == {}
        assert all(r.exc_info is None and "\n" not in r.getMessage() for r in caplog.records)
    finally:
        testing.wait_idle(cache, 5)  # a refresh still running would log into the next test
        cache.close()


def test_a_worker_names_ingress_ports_and_vips_without_ids(fake_docker, caplog):
    """A worker answers 503 to GET /services: the names come from the network route anyway."""
    cache = DockerServices(fake_docker(body=_daemon(services=(503, NOT_A_MANAGER))), timeout=2.0)
    try:
        with caplog.at_level(logging.INFO, logger=names.__name__):
            assert cache.names(LB, [257, 258, 259, 300]) == {}  # the first refresh runs in the background
            assert cache.names(IN, [256, 260], {256: [("tcp", 30000)], 260: [("tcp", 30001)]}) == {}
            assert testing.wait_idle(cache, 5) and cache.up and testing.last_error(cache) is None
            assert cache.names(LB, [257, 258, 259, 300]) == {
                257: SwarmService("", "api", "appnet"),
                258: SwarmService("", "client", "appnet"),
                259: SwarmService("", "apipub", "appnet"),
            }
            assert cache.names(IN, [256, 260], {256: [("tcp", 30000)], 260: [("tcp", 30001)]}) == {
                256: SwarmService("", "web", "ingress"),
                260: SwarmService("", "apipub", "ingress"),
            }
        said = [(r.levelno, r.getMessage()) for r in caplog.records]
        assert len(said) == 1 and said[0][0] == logging.INFO and "not a swarm manager" in said[0][1]
    finally:
        testing.wait_idle(cache, 5)  # a refresh still running would log into the next test
        cache.close()


def test_a_manager_adds_ids_and_names_ports_the_network_route_cannot(fake_docker):
    """IDs come from GET /services by name; a namespace the network route does not know (not
    ingress_sbox or lb_*) is still named by its published ports, as before."""
    routes = _daemon()
    routes["/services"] = (200, SERVICES + [_service("apiid", "api", [])])
    cache = DockerServices(fake_docker(body=routes), timeout=2.0)
    try:
        cache.names(LB, [257, 258])
        cache.names("/run/custom_ns", [7], {7: [("tcp", 8080)]})
        assert testing.wait_idle(cache, 5) and cache.up
        assert cache.names(LB, [257, 258]) == {
            257: SwarmService("apiid", "api", "appnet"),
            258: SwarmService("", "client", "appnet"),  # no such service in /services: no ID
        }
        assert cache.names("/run/custom_ns", [7], {7: [("tcp", 8080)]}) == {7: WEB}
        assert cache.names(IN, [256], {256: [("tcp", 30000)]}) == {256: WEB}
    finally:
        testing.wait_idle(cache, 5)  # a refresh still running would log into the next test
        cache.close()


def test_names_by_port_when_the_network_route_fails(fake_docker, caplog):
    cache = DockerServices(fake_docker(body=_daemon(networks=(500, {"message": "boom"}))), timeout=2.0)
    try:
        with caplog.at_level(logging.WARNING, logger=names.__name__):
            cache.names(IN, [256, 257], {256: [("tcp", 30000)]})
            assert testing.wait_idle(cache, 5) and cache.up
            assert cache.names(IN, [256, 257], {256: [("tcp", 30000)]}) == {256: WEB}
        [warning] = caplog.records
        assert (
            "swarm service names unavailable" in warning.getMessage()
            and "HTTP 500: boom" in warning.getMessage()
        )
    finally:
        testing.wait_idle(cache, 5)  # a refresh still running would log into the next test
        cache.close()


# ---------------------------------------------------------------------------- TLS (DOCKER_TLS_VERIFY)
def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _ca(d, name):
    """A throw-away CA: d/<name>-ca.pem and its key."""
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-days", "2", "-subj", f"/CN={name} test CA",
        "-keyout", f"{name}-ca-key.pem", "-out", f"{name}-ca.pem", cwd=d,
    )  # fmt: skip


def _leaf(d, ca, out, cn, ext, days="2"):
    """d/<out>-cert.pem and <out>-key.pem, signed by CA ca, with the extension lines ext
    (days="-1": expired yesterday)."""
    (d / f"{out}.ext").write_text(
        "\n".join([*ext, "subjectKeyIdentifier=hash", "authorityKeyIdentifier=keyid"]) + "\n"
    )
    _openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-subj", f"/CN={cn}", "-keyout", f"{out}-key.pem", "-out", f"{out}.csr", cwd=d,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", f"{out}.csr", "-CA", f"{ca}-ca.pem", "-CAkey", f"{ca}-ca-key.pem",
        "-CAcreateserial", "-days", days, "-extfile", f"{out}.ext", "-out", f"{out}-cert.pem", cwd=d,
    )  # fmt: skip


def _client_dir(d, name, ca, cert):
    """A DOCKER_CERT_PATH folder d/name: ca.pem from CA ca, cert.pem/key.pem from leaf cert."""
    folder = d / name
    folder.mkdir(exist_ok=True)
    shutil.copyfile(d / f"{ca}-ca.pem", folder / "ca.pem")
    shutil.copyfile(d / f"{cert}-cert.pem", folder / "cert.pem")
    shutil.copyfile(d / f"{cert}-key.pem", folder / "key.pem")
    return str(folder)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """Two CAs (good, other); a daemon cert for 127.0.0.1/localhost, an expired one, one for another name; client
    certs from each CA; and DOCKER_CERT_PATH folders: right, wrong_ca, foreign_client."""
    d = tmp_path_factory.mktemp("pki")
    for name in ("good", "other"):
        _ca(d, name)
    server = ["subjectAltName=IP:127.0.0.1,DNS:localhost", "extendedKeyUsage=serverAuth"]
    _leaf(d, "good", "server", "localhost", server)
    _leaf(
        d,
        "good",
        "misnamed",
        "other.example",
        ["subjectAltName=DNS:other.example", "extendedKeyUsage=serverAuth"],
    )
    _leaf(d, "good", "expired", "localhost", server, days="-1")
    _leaf(d, "good", "client", "exporter", ["extendedKeyUsage=clientAuth"])
    _leaf(d, "other", "foreign", "exporter", ["extendedKeyUsage=clientAuth"])
    dirs = {
        "right": _client_dir(d, "right", "good", "client"),
        "wrong_ca": _client_dir(d, "wrong_ca", "other", "client"),
        "foreign_client": _client_dir(d, "foreign_client", "good", "foreign"),
    }
    return types.SimpleNamespace(path=d, dirs=dirs)


class _TLSServer(_TCPServer):
    """The fake Docker API behind TLS that requires a client certificate from the good CA, as
    dockerd --tlsverify does. A failed handshake never reaches the handler (requests stays [])."""

    def __init__(self, pki, cert="server", address="127.0.0.1"):
        super().__init__((address, 0), _Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(pki.path / f"{cert}-cert.pem", pki.path / f"{cert}-key.pem")
        context.load_verify_locations(pki.path / "good-ca.pem")
        context.verify_mode = ssl.CERT_REQUIRED
        self.socket = context.wrap_socket(self.socket, server_side=True)

    def handle_error(self, request, client_address):  # a rejected client is expected here
        pass


@pytest.fixture
def tls_docker(pki):
    """start(cert="server", address="127.0.0.1") -> 'tcp://address:port' of a TLS fake Docker."""
    servers = []

    def start(cert="server", address="127.0.0.1"):
        server = _serve(_TLSServer(pki, cert, address), (200, SERVICES))
        servers.append(server)
        return f"tcp://{address}:{server.server_address[1]}"

    start.servers = servers
    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def tls_env(monkeypatch, pki):
    """use(folder): DOCKER_TLS_VERIFY=1 with DOCKER_CERT_PATH=that folder (a key of pki.dirs or a path)."""
    monkeypatch.delenv("DOCKER_TLS", raising=False)

    def use(folder="right"):
        monkeypatch.setenv("DOCKER_TLS_VERIFY", "1")
        monkeypatch.setenv("DOCKER_CERT_PATH", pki.dirs.get(folder, folder))

    return use


def _tls_error(host, kinds=("tls",)):
    with pytest.raises(DockerError) as info:
        fetch_services(host, timeout=10)
    message = str(info.value)
    assert info.value.kind in kinds, (info.value.kind, message)
    assert "\n" not in message and host in message and "Traceback" not in message
    return message


def test_tls_fetch_services_with_the_docker_cli_variables(tls_docker, tls_env):
    host = tls_docker()
    tls_env("right")
    assert fetch_services(host, timeout=10).by_port == EXPECTED
    assert [path for path, _ in tls_docker.servers[0].requests] == ["/services"]


def test_tls_without_the_variables_talks_plain_http_and_fails(tls_docker, monkeypatch):
    monkeypatch.delenv("DOCKER_TLS_VERIFY", raising=False)
    monkeypatch.delenv("DOCKER_TLS", raising=False)
    host = tls_docker()
    with pytest.raises(DockerError):  # plain HTTP to a TLS port: what TLS support fixes
        fetch_services(host, timeout=10)
    assert tls_docker.servers[0].requests == []


def test_tls_daemon_certificate_from_another_ca_is_rejected(tls_docker, tls_env, pki):
    host = tls_docker()
    tls_env("wrong_ca")
    message = _tls_error(host)
    assert "certificate was rejected" in message and os.path.join(pki.dirs["wrong_ca"], "ca.pem") in message
    assert tls_docker.servers[0].requests == []


def test_tls_daemon_certificate_for_another_host_name_is_rejected(tls_docker, tls_env):
    host = tls_docker(cert="misnamed")
    tls_env("right")
    message = _tls_error(host)
    assert "mismatch" in message and "names the host" in message
    assert tls_docker.servers[0].requests == []


def test_tls_expired_daemon_certificate_is_rejected(tls_docker, tls_env):
    host = tls_docker(cert="expired")
    tls_env("right")
    assert "certificate has expired" in _tls_error(host)
    assert tls_docker.servers[0].requests == []


def test_tls_daemon_reached_by_an_address_its_certificate_does_not_name(tls_docker, tls_env):
    host = tls_docker(address="127.0.0.2")  # the certificate names 127.0.0.1 and localhost
    tls_env("right")
    assert "mismatch" in _tls_error(host)
    assert tls_docker.servers[0].requests == []


def test_tls_client_certificate_the_daemon_does_not_trust(tls_docker, tls_env):
    host = tls_docker()
    tls_env("right")
    assert fetch_services(host, timeout=10).by_port == EXPECTED
    tls_env("foreign_client")  # the daemon's CA did not sign this cert.pem
    _tls_error(host, kinds=("tls", "unreachable"))
    assert len(tls_docker.servers[0].requests) == 1  # only the first, trusted, client got in


def test_tls_to_a_plain_http_daemon_never_falls_back(tls_env):
    server = _serve(_TCPServer(("127.0.0.1", 0), _Handler), (200, SERVICES))
    try:
        tls_env("right")
        message = _tls_error(f"tcp://127.0.0.1:{server.server_address[1]}")
        assert "TLS failed" in message
        assert server.requests == []
    finally:
        server.shutdown()
        server.server_close()


def test_tls_client_files_gone_after_start_up(tls_docker, tls_env, tmp_path, pki):
    host = tls_docker()
    folder = tmp_path / "certs"
    shutil.copytree(pki.dirs["right"], folder)
    tls_env(str(folder))
    assert fetch_services(host, timeout=10).by_port == EXPECTED  # files are read at each query
    (folder / "key.pem").unlink()
    message = _tls_error(host)
    assert str(folder / "key.pem") in message and "DOCKER_CERT_PATH" in message


def test_docker_services_says_a_tls_failure_and_keeps_going(tls_docker, tls_env, caplog):
    host = tls_docker()
    tls_env("wrong_ca")
    services = DockerServices(host, timeout=10)
    try:
        with caplog.at_level(logging.WARNING, logger=names.__name__):
            assert services.names("/run/docker/netns/ingress_sbox", [256], {256: [("tcp", 30000)]}) == {}
            assert testing.wait_idle(services, 30)
        assert services.up is False
        assert "certificate was rejected" in testing.last_error(services)
        assert [r.getMessage() for r in caplog.records if "certificate was rejected" in r.getMessage()]
    finally:
        services.close()


# ---------------------------------------------------------------------------- TLS at start-up
def _start_up_error(value):
    with pytest.raises(typer.BadParameter) as info:
        flags.docker_host(value)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    return message


@pytest.mark.parametrize("missing", ["ca.pem", "cert.pem", "key.pem"])
def test_start_up_names_a_missing_tls_file(missing, tls_env, tmp_path, pki):
    folder = tmp_path / "certs"
    shutil.copytree(pki.dirs["right"], folder)
    (folder / missing).unlink()
    tls_env(str(folder))
    message = _start_up_error("tcp://127.0.0.1:2376")
    assert f"{folder / missing} does not exist" in message
    assert "DOCKER_CERT_PATH" in message and "DOCKER_TLS_VERIFY" in message


def test_start_up_names_an_unreadable_tls_file(tls_env, tmp_path, pki):
    folder = tmp_path / "certs"
    shutil.copytree(pki.dirs["right"], folder)
    (folder / "key.pem").unlink()
    (folder / "key.pem").mkdir()
    tls_env(str(folder))
    assert f"{folder / 'key.pem'} is a directory" in _start_up_error("tcp://127.0.0.1:2376")
    if os.geteuid() != 0:  # root reads mode 000 files
        (folder / "key.pem").rmdir()
        shutil.copyfile(pki.dirs["right"] + "/key.pem", folder / "key.pem")
        (folder / "key.pem").chmod(0)
        assert f"{folder / 'key.pem'} cannot be read" in _start_up_error("tcp://127.0.0.1:2376")


def test_start_up_finds_a_key_that_is_not_the_certificates(tls_env, tmp_path, pki):
    folder = tmp_path / "certs"
    shutil.copytree(pki.dirs["right"], folder)
    shutil.copyfile(pki.path / "foreign-key.pem", folder / "key.pem")
    tls_env(str(folder))
    message = _start_up_error("tcp://127.0.0.1:2376")
    assert f"{folder / 'key.pem'} is not the key of {folder / 'cert.pem'}" in message


@pytest.mark.parametrize("bad", ["ca.pem", "cert.pem"])
def test_start_up_finds_a_file_that_is_not_pem(bad, tls_env, tmp_path, pki):
    folder = tmp_path / "certs"
    shutil.copytree(pki.dirs["right"], folder)
    (folder / bad).write_text("not a certificate\n")
    tls_env(str(folder))
    assert str(folder / bad) in _start_up_error("tcp://127.0.0.1:2376")


def test_start_up_accepts_good_tls_files_and_defaults_to_port_2376(tls_env):
    tls_env("right")
    assert flags.docker_host("tcp://127.0.0.1:2376") == "tcp://127.0.0.1:2376"
    end = endpoint.endpoint("tcp://localhost")
    assert end.address == "localhost:2376" and end.tls is not None
    assert end.tls.verify_mode == ssl.CERT_REQUIRED and end.tls.check_hostname


def test_cert_path_defaults_to_the_docker_cli_config_folder(monkeypatch, tmp_path, pki):
    monkeypatch.delenv("DOCKER_CERT_PATH", raising=False)
    monkeypatch.delenv("DOCKER_CONFIG", raising=False)
    monkeypatch.setenv("DOCKER_TLS_VERIFY", "1")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert f"{tmp_path}/.docker/ca.pem does not exist" in _start_up_error("tcp://127.0.0.1:2376")
    shutil.copytree(pki.dirs["right"], tmp_path / ".docker")
    assert endpoint.endpoint("tcp://127.0.0.1:2376").cert_dir == f"{tmp_path}/.docker"
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "cfg"))  # as the docker CLI: its config dir
    assert f"{tmp_path}/cfg/ca.pem does not exist" in _start_up_error("tcp://127.0.0.1:2376")


@pytest.mark.parametrize("host", ["unix:///var/run/docker.sock", "http://127.0.0.1:2375"])
def test_start_up_refuses_tls_verify_on_a_plain_address(host, tls_env):
    tls_env("right")
    message = _start_up_error(host)
    assert "DOCKER_TLS_VERIFY is set" in message and "not TLS" in message


def test_start_up_refuses_docker_tls_without_verify(monkeypatch):
    monkeypatch.delenv("DOCKER_TLS_VERIFY", raising=False)
    monkeypatch.setenv("DOCKER_TLS", "1")
    message = _start_up_error("tcp://127.0.0.1:2376")
    assert "DOCKER_TLS (TLS without verifying the daemon) is not supported" in message
    monkeypatch.delenv("DOCKER_TLS")
    assert flags.docker_host("tcp://127.0.0.1:2375") == "tcp://127.0.0.1:2375"


def test_https_scheme_points_at_the_tls_variables():
    message = _start_up_error("https://127.0.0.1:2376")
    assert "https:// is not a docker host address" in message and "DOCKER_TLS_VERIFY=1" in message


def test_cli_exits_2_with_one_line_for_a_bad_tls_setup(tmp_path):
    env = dict(os.environ, DOCKER_TLS_VERIFY="1", DOCKER_CERT_PATH=str(tmp_path))
    env.pop("DOCKER_TLS", None)
    res = subprocess.run(
        [sys.executable, "-m", "ingress_ipvs_exporter.cli", "--docker-host", "tcp://127.0.0.1:2376"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert res.returncode == 2, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and f"{tmp_path}/ca.pem does not exist" in lines[0], res.stderr
    assert "DOCKER_CERT_PATH" in lines[0]


def test_start_up_refuses_an_encrypted_key_without_prompting(tls_env, tmp_path, pki):
    folder = tmp_path / "certs"
    shutil.copytree(pki.dirs["right"], folder)
    _openssl("pkey", "-in", "key.pem", "-aes256", "-passout", "pass:secret", "-out", "enc.pem", cwd=folder)
    (folder / "enc.pem").replace(folder / "key.pem")
    tls_env(str(folder))
    assert f"{folder / 'key.pem'} is encrypted" in _start_up_error("tcp://127.0.0.1:2376")
