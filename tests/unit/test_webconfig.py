"""--web.config.file: TLS and basic auth over real loopback HTTP(S), as exporters do it."""

from __future__ import annotations

import base64
import http.client
import ssl
import subprocess
import sys
import urllib.error
import urllib.request

import bcrypt
import pytest
from ipvs_testlib import running_exporter


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout",
            str(d / "key.pem"),
            "-out",
            str(d / "cert.pem"),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return d


def write_config(d, tls=True, users=None):
    lines = []
    if tls:
        lines += ["tls_server_config:", "  cert_file: cert.pem", "  key_file: key.pem"]
    if users:
        lines.append("basic_auth_users:")
        lines += [f"  {u}: {bcrypt.hashpw(p.encode(), bcrypt.gensalt(4)).decode()}" for u, p in users.items()]
    path = d / "web.yml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def get(url, user=None, password=None, cafile=None):
    req = urllib.request.Request(url)
    if user:
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    ctx = ssl.create_default_context(cafile=cafile) if cafile else None
    with urllib.request.urlopen(req, context=ctx, timeout=30) as r:
        return r.status, r.read().decode()


def test_tls_and_basic_auth(cert):
    config = write_config(cert, tls=True, users={"prometheus": "s3cret"})
    with running_exporter(
        "--namespace-path", "/nonexistent/ns", "--web.config.file", config, probe=False
    ) as (url, proc):
        https = url.replace("http://", "https://")
        ca = str(cert / "cert.pem")
        status, body = get(https, "prometheus", "s3cret", ca)
        assert status == 200 and "ipvs_up" in body
        with pytest.raises(urllib.error.HTTPError) as e:
            get(https, "prometheus", "wrong", ca)
        assert e.value.code == 401 and "Basic" in e.value.headers["WWW-Authenticate"]
        with pytest.raises(urllib.error.HTTPError) as e:
            get(https, cafile=ca)
        assert e.value.code == 401
        # plain HTTP to the TLS port gets no HTTP answer
        host, port = url.split("//")[1].split("/")[0].split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        with pytest.raises((http.client.HTTPException, ConnectionError, OSError)):
            conn.request("GET", "/metrics")
            conn.getresponse().read()
        # and the exporter still serves TLS afterwards
        assert get(https, "prometheus", "s3cret", ca)[0] == 200
        assert proc.poll() is None


def test_basic_auth_without_tls_and_the_node_exporter_flag_spellings(cert):
    config = write_config(cert, tls=False, users={"u": "p"})
    with running_exporter(
        "--namespace-path",
        "/nonexistent/ns",
        "--web.config.file",
        config,
        "--web.telemetry-path",
        "/ipvs",
        listen_flag="--web.listen-address",
        probe=False,
    ) as (url, _):
        base = url.rsplit("/", 1)[0]
        assert get(base + "/ipvs", "u", "p")[0] == 200
        with pytest.raises(urllib.error.HTTPError) as e:
            get(base + "/ipvs")
        assert e.value.code == 401


@pytest.mark.parametrize(
    "content,needle",
    [
        ("tls_server_config:\n  cert_file: nope.pem\n  key_file: nope.pem\n", "cannot load cert_file"),
        ("basic_auth_users:\n  u: plaintext\n", "not a bcrypt hash"),
        ("tls_server_config: [\n", "not valid YAML"),
        ("colour: blue\n", "unknown key 'colour'"),
    ],
)
def test_bad_web_config_is_one_line_and_exit_2(tmp_path, content, needle):
    path = tmp_path / "web.yml"
    path.write_text(content)
    res = subprocess.run(
        [sys.executable, "-m", "ingress_ipvs_exporter.cli", "--web.config.file", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "--web.config.file" in lines[0], res.stderr
