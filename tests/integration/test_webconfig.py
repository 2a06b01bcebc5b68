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
from ipvs_testlib import exporter_command, exporter_log, running_exporter, write_config


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


# ---- issue #13: the file fails closed, and the toolkit's keys mean what they mean there ----

BCRYPT_4 = bcrypt.hashpw(b"p", bcrypt.gensalt(4)).decode()  # the password "p", cost 4


def start(config_text: str, d, *extra: str, timeout: float = 15) -> subprocess.CompletedProcess:
    """Start the exporter with this web config; a config it accepts keeps it serving until
    the timeout (then TimeoutExpired: the test fails, as it should)."""
    path = d / "web.yml"
    path.write_bytes(config_text.encode() if isinstance(config_text, str) else config_text)
    return subprocess.run(
        [exporter_command(), "--listen-address", "127.0.0.1:0", "--namespace-path", "/nonexistent/ns"]
        + ["--web.config.file", str(path), *extra],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


TLS = "tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n"
REFUSED = {
    "typo in client_auth_type's key": (
        TLS + "  client_auth_typ: RequireAndVerifyClientCert\n",
        "client_auth_typ",
    ),
    "unknown http_server_config key": ("http_server_config:\n  http3: true\n", "http_server_config.http3"),
    "basic_auth_users a list": ("basic_auth_users: [a, b]\n", "basic_auth_users"),
    "cert_file a number": ("tls_server_config:\n  cert_file: 5\n  key_file: key.pem\n", "cert_file"),
    "tls_server_config a string": ('tls_server_config: "x"\n', "tls_server_config"),
    "http2 a string": ("http_server_config:\n  http2: yes please\n", "http2"),
    "cipher_suites a string": (TLS + "  cipher_suites: TLS_AES_128_GCM_SHA256\n", "cipher_suites"),
    "duplicated basic_auth_users": (
        f"basic_auth_users:\n  u: {BCRYPT_4}\nbasic_auth_users:\n",
        "duplicate key 'basic_auth_users'",
    ),
    "duplicated user": (f"basic_auth_users:\n  u: {BCRYPT_4}\n  u: {BCRYPT_4}\n", "duplicate key 'u'"),
    "not UTF-8": (b"basic_auth_users:\n  \xff\xfe: x\n", "UTF-8"),
    "malformed bcrypt hash": ("basic_auth_users:\n  alice: $2y$10$tooshort\n", "basic_auth_users.alice"),
    "forbidden header": ("http_server_config:\n  headers:\n    Content-Type: text/html\n", "Content-Type"),
    "forbidden Authorization header": (
        "http_server_config:\n  headers:\n    Authorization: x\n",
        "Authorization",
    ),
    "bad X-Frame-Options value": (
        "http_server_config:\n  headers:\n    X-Frame-Options: allow\n",
        "X-Frame-Options",
    ),
    "unknown cipher": (TLS + "  cipher_suites: [TLS_RSA_WITH_RC4_128_SHA]\n", "TLS_RSA_WITH_RC4_128_SHA"),
    "unknown curve": (TLS + "  curve_preferences: [CurveP192]\n", "CurveP192"),
    "unknown max_version": (TLS + "  max_version: TLS14\n", "max_version"),
    "min_version above max_version": (TLS + "  min_version: TLS13\n  max_version: TLS12\n", "min_version"),
    "client_allowed_sans without a required cert": (
        TLS + "  client_allowed_sans: [prometheus]\n",
        "client_allowed_sans",
    ),
    "client CA without client auth": (TLS + "  client_ca_file: cert.pem\n", "client_ca_file"),
    "inline cert": (TLS + "  cert: '-----BEGIN CERTIFICATE-----'\n", "tls_server_config.cert"),
    "rate_limit": ("rate_limit:\n  interval: 1s\n  burst: 5\n", "rate_limit"),
    # nine levels of nine aliases: a billion strings if expanded, as its error message once did
    "alias bomb": (
        "tls_server_config: [&a [lol, lol, lol, lol, lol, lol, lol, lol, lol], "
        + ", ".join(f"&{b} [{', '.join(['*' + a] * 9)}]" for a, b in zip("abcdefgh", "bcdefghi"))
        + "]\n",
        "aliases are expanded",
    ),
    "nested too deep": ("tls_server_config: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deep"),
    "over 1 MiB": ("#" * (1 << 20) + "\n", "larger than 1048576 bytes"),
    "a duplicate next to a merge key": (
        "http_server_config:\n  headers:\n    <<: {X-Frame-Options: deny}\n"
        "    X-Content-Type-Options: nosniff\n    X-Content-Type-Options: nosniff\n",
        "duplicate key 'X-Content-Type-Options'",
    ),
    "a long value in a message": ("tls_server_config: [" + "x" * 100_000 + "]\n", "must be a mapping"),
}


@pytest.mark.parametrize("what", list(REFUSED))
def test_web_config_fails_closed_with_one_line_naming_the_key(cert, what):
    content, needle = REFUSED[what]
    res = start(content, cert)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "--web.config.file" in lines[0], res.stderr
    assert "Traceback" not in res.stderr and len(lines[0]) < 400


def _fifo(d, name: str) -> str:
    import os

    path = d / name
    if not path.exists():
        os.mkfifo(path)
    return str(path)


@pytest.mark.parametrize("which", ["/dev/zero", "fifo", "client_ca_file fifo", "key_file fifo"])
def test_a_web_config_or_tls_file_that_is_not_a_regular_file_is_one_line(cert, tmp_path, which):
    """A device or a FIFO would be read without end or block start-up for good."""
    import shutil

    if which == "/dev/zero":
        config = "/dev/zero"
    elif which == "fifo":
        config = _fifo(tmp_path, "web.yml")
    else:
        for f in ("cert.pem", "key.pem"):
            shutil.copy(cert / f, tmp_path / f)
        key = _fifo(tmp_path, "key.fifo") if which == "key_file fifo" else "key.pem"
        text = f"tls_server_config:\n  cert_file: cert.pem\n  key_file: {key}\n"
        if which == "client_ca_file fifo":
            text += (
                f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {_fifo(tmp_path, 'ca')}\n"
            )
        (tmp_path / "web.yml").write_text(text)
        config = str(tmp_path / "web.yml")
    res = subprocess.run(
        [exporter_command(), "--listen-address", "127.0.0.1:0", "--web.config.file", config],
        capture_output=True,
        text=True,
        timeout=15,
    )
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and "not a regular file" in lines[0], res.stderr


def encrypted_key(d, plain) -> str:
    out = str(d / "encrypted.key")
    cmd = ["openssl", "pkey", "-in", str(plain), "-aes256", "-passout", "pass:secret", "-out", out]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    return out


def test_an_encrypted_key_at_start_up_is_one_line_never_a_prompt(cert, tmp_path):
    """setsid: no controlling terminal, so OpenSSL's own prompt could neither wait nor hide."""
    import shutil

    shutil.copy(cert / "cert.pem", tmp_path / "cert.pem")
    shutil.copy(encrypted_key(tmp_path, cert / "key.pem"), tmp_path / "key.pem")
    (tmp_path / "web.yml").write_text(TLS)
    res = subprocess.run(
        ["setsid", exporter_command(), "--listen-address", "127.0.0.1:0"]
        + ["--web.config.file", str(tmp_path / "web.yml")],
        capture_output=True,
        text=True,
        timeout=15,
        stdin=subprocess.DEVNULL,
    )
    lines = (res.stdout + res.stderr).strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and "is encrypted" in lines[0], res.stdout + res.stderr


def test_a_merge_key_is_accepted_and_overridden_as_in_go(cert):
    path = cert / "web.yml"
    path.write_text(
        "http_server_config:\n  headers:\n"
        "    <<: {X-Frame-Options: deny, X-Content-Type-Options: nosniff}\n"
        "    X-Frame-Options: sameorigin\n"
    )
    with running_exporter("--namespace-path", "/nonexistent/ns", "--web.config.file", str(path)) as (url, _):
        with urllib.request.urlopen(url, timeout=10) as r:
            assert r.headers["X-Frame-Options"] == "sameorigin"
            assert r.headers["X-Content-Type-Options"] == "nosniff"


def openssl_cert(d, name: str, san: str, ca: str | None = None) -> tuple[str, str]:
    """A key and certificate for `name` with this subjectAltName, self-signed or signed by ca."""
    key, crt = str(d / f"{name}.key"), str(d / f"{name}.crt")
    common = ["-subj", f"/CN={name}", "-days", "2"]
    if ca is None:
        cmd = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", *common]
        cmd += ["-addext", f"subjectAltName={san}", "-addext", "basicConstraints=critical,CA:TRUE"]
        subprocess.run([*cmd, "-keyout", key, "-out", crt], check=True, capture_output=True, timeout=60)
        return crt, key
    csr = str(d / f"{name}.csr")
    cmd = ["openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes", *common, "-keyout", key, "-out", csr]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    ext = d / f"{name}.ext"
    ext.write_text(f"subjectAltName={san}\n")
    cmd = ["openssl", "x509", "-req", "-in", csr, "-CA", ca + ".crt", "-CAkey", ca + ".key"]
    cmd += ["-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", crt]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    return crt, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA; the server's certificate from it; client certificates: one from the CA (SAN
    DNS:prometheus), one self-signed (SAN DNS:prometheus), one from the CA (SAN DNS:intruder)."""
    d = tmp_path_factory.mktemp("pki")
    openssl_cert(d, "ca", "DNS:ca")
    ca = str(d / "ca")
    openssl_cert(d, "server", "IP:127.0.0.1,DNS:localhost", ca)
    openssl_cert(d, "client", "DNS:prometheus", ca)
    openssl_cert(d, "selfsigned", "DNS:prometheus")
    openssl_cert(d, "intruder", "DNS:intruder", ca)
    return d


def tls_conn(url: str, pki, client: str | None = None, curve: str | None = None) -> ssl.SSLSocket:
    """A finished TLS handshake with the exporter (the caller closes it)."""
    import socket
    from urllib.parse import urlsplit

    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    if client:
        ctx.load_cert_chain(str(pki / f"{client}.crt"), str(pki / f"{client}.key"))
    if curve:
        ctx.set_ecdh_curve(curve)
    u = urlsplit(url)
    s = ctx.wrap_socket(
        socket.create_connection((u.hostname, u.port), timeout=10), server_hostname=u.hostname
    )
    return s


def served(url: str, pki, client: str | None = None) -> bool:
    """True when a TLS GET / with this client certificate gets a 200; False when the handshake
    or the connection is refused."""
    try:
        with tls_conn(url, pki, client) as s:
            s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
            reply = b""
            for _ in range(100):
                chunk = s.recv(65536)
                if not chunk:
                    break
                reply += chunk
            return reply.startswith(b"HTTP/1.0 200")
    except (ssl.SSLError, ConnectionError, OSError):
        return False


def write_tls(pki, extra: str = "") -> str:
    path = pki / "web.yml"
    path.write_text(f"tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n{extra}")
    return str(path)


@pytest.mark.parametrize(
    "auth,expected",
    [
        # the toolkit's (Go's) meanings: who gets served
        ("RequestClientCert", {None: True, "client": True, "selfsigned": True}),
        ("RequireAnyClientCert", {None: False, "client": True, "selfsigned": True}),
        ("RequireAndVerifyClientCert", {None: False, "client": True, "selfsigned": False}),
        ("VerifyClientCertIfGiven", {None: True, "client": True, "selfsigned": False}),
    ],
)
def test_client_auth_types_mean_what_they_mean_in_the_toolkit(pki, auth, expected):
    ca = "  client_ca_file: ca.crt\n" if "Verify" in auth else ""
    config = write_tls(pki, f"  client_auth_type: {auth}\n{ca}")
    with running_exporter(
        "--namespace-path", "/nonexistent/ns", "--web.config.file", config, probe=False
    ) as (
        url,
        proc,
    ):
        got = {client: served(url, pki, client) for client in expected}
        assert got == expected
        assert proc.poll() is None


@pytest.mark.parametrize("auth", ["RequireAnyClientCert", "RequireAndVerifyClientCert"])
def test_client_allowed_sans(pki, auth):
    extra = (
        f"  client_auth_type: {auth}\n  client_ca_file: ca.crt\n  client_allowed_sans: [other, prometheus]\n"
    )
    config = write_tls(pki, extra)
    with running_exporter(
        "--namespace-path", "/nonexistent/ns", "--web.config.file", config, probe=False
    ) as (
        url,
        _,
    ):
        assert served(url, pki, "client")
        assert not served(url, pki, "intruder")
        assert not served(url, pki)


def test_max_version_ciphers_and_curves(pki):
    extra = (
        "  max_version: TLS12\n"
        "  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384, TLS_AES_128_GCM_SHA256]\n"
        "  prefer_server_cipher_suites: true\n"
        "  curve_preferences: [CurveP384]\n"
    )
    config = write_tls(pki, extra)
    with running_exporter(
        "--namespace-path", "/nonexistent/ns", "--web.config.file", config, probe=False
    ) as (
        url,
        _,
    ):
        with tls_conn(url, pki, curve="secp384r1") as s:
            assert s.version() == "TLSv1.2"
            assert s.cipher()[0] == "ECDHE-RSA-AES256-GCM-SHA384"
        with pytest.raises(ssl.SSLError):
            tls_conn(url, pki, curve="prime256v1").close()  # no curve in common


def test_http_server_config_headers_on_every_response(cert):
    path = cert / "web.yml"
    path.write_text(
        "http_server_config:\n  http2: false\n  headers:\n"
        "    X-Frame-Options: deny\n    Content-Security-Policy: default-src 'none'\n"
        "    X-XSS-Protection: ''\n"
        f"basic_auth_users:\n  u: {BCRYPT_4}\n"
    )
    with running_exporter(
        "--namespace-path", "/nonexistent/ns", "--web.config.file", str(path), probe=False
    ) as (
        url,
        _,
    ):
        base = url.rsplit("/", 1)[0]
        for target, user, status in ((url, "u", 200), (base + "/nope", "u", 404), (url, None, 401)):
            try:
                with urllib.request.urlopen(auth_request(target, user, "p"), timeout=10) as r:
                    got, headers = r.status, r.headers
            except urllib.error.HTTPError as e:
                got, headers = e.code, e.headers
            assert got == status
            assert headers["X-Frame-Options"] == "deny"
            assert headers["Content-Security-Policy"] == "default-src 'none'"
            assert "X-XSS-Protection" not in headers  # blank means unset


def auth_request(url: str, user: str | None, password: str) -> urllib.request.Request:
    req = urllib.request.Request(url)
    if user:
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    return req


def test_certificate_rotation(pki, tmp_path):
    """Replacing cert and key while serving: the next connection gets the new certificate;
    a pair that does not load keeps the old one serving, with one log line."""
    import shutil

    for f in ("server.crt", "server.key"):
        shutil.copy(pki / f, tmp_path / f)
    config = tmp_path / "web.yml"
    config.write_text("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n")
    with running_exporter(
        "--namespace-path", "/nonexistent/ns", "--web.config.file", str(config), probe=False
    ) as (
        url,
        proc,
    ):
        with tls_conn(url, pki) as s:
            first = s.getpeercert(binary_form=True)
        new_crt, new_key = openssl_cert(tmp_path, "server2", "IP:127.0.0.1", str(pki / "ca"))
        # write both through temporary files and rename, as cert-manager and certbot do
        for src, dst in ((new_key, "server.key"), (new_crt, "server.crt")):
            shutil.copy(src, tmp_path / (dst + ".tmp"))
            (tmp_path / (dst + ".tmp")).rename(tmp_path / dst)
        with tls_conn(url, pki) as s:
            second = s.getpeercert(binary_form=True)
        assert second != first and second == ssl.PEM_cert_to_DER_cert(open(new_crt).read())
        (tmp_path / "server.key").write_text("not a key\n")
        with tls_conn(url, pki) as s:
            assert s.getpeercert(binary_form=True) == second
        assert proc.poll() is None
    with open(exporter_log(url)) as f:
        said = [line for line in f if "do not load" in line]
    assert len(said) == 1 and "level=warn " in said[0], said


def test_a_rotation_to_an_encrypted_key_keeps_the_old_pair(pki, tmp_path):
    """The accept loop never waits on a pass phrase: the old pair keeps serving, one warning,
    and a good pair put in place afterwards is taken up (setsid: no terminal to prompt on)."""
    import shutil

    for f in ("server.crt", "server.key"):
        shutil.copy(pki / f, tmp_path / f)
    config = tmp_path / "web.yml"
    config.write_text("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n")
    args = ("--namespace-path", "/nonexistent/ns", "--web.config.file", str(config))
    with running_exporter(*args, probe=False, prefix=("setsid",)) as (url, proc):
        with tls_conn(url, pki) as s:
            first = s.getpeercert(binary_form=True)
        shutil.copy(encrypted_key(tmp_path, pki / "server.key"), tmp_path / "server.key")
        for _ in range(3):
            with tls_conn(url, pki) as s:
                assert s.getpeercert(binary_form=True) == first
        new_crt, new_key = openssl_cert(tmp_path, "server3", "IP:127.0.0.1", str(pki / "ca"))
        shutil.copy(new_key, tmp_path / "server.key")
        shutil.copy(new_crt, tmp_path / "server.crt")
        with tls_conn(url, pki) as s:
            assert s.getpeercert(binary_form=True) == ssl.PEM_cert_to_DER_cert(open(new_crt).read())
        assert proc.poll() is None
    with open(exporter_log(url)) as f:
        text = f.read()
    said = [line for line in text.splitlines() if "do not load" in line]
    assert len(said) == 1 and "is encrypted" in said[0] and "level=warn " in said[0], text
    assert "pass phrase" not in text.lower()
