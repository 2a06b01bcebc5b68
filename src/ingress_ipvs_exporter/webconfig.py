"""--web.config.file: TLS and basic auth in the format Prometheus exporters share
(exporter-toolkit): tls_server_config.{cert_file,key_file,client_ca_file,client_auth_type,
min_version} and basic_auth_users {user: bcrypt hash}.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import ssl
import threading
from dataclasses import dataclass, field

import bcrypt
import yaml

_TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
_CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_OPTIONAL,
    "RequireAnyClientCert": ssl.CERT_REQUIRED,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}


class WebConfigError(ValueError):
    """The web config file is unusable; the message names the file, the key and the fix."""


@dataclass
class WebConfig:
    tls: ssl.SSLContext | None = None
    users: dict[str, bytes] = field(default_factory=dict)


def load(path: str) -> WebConfig:
    """Parse and check the file now, so that a mistake stops start-up with one line."""
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except OSError as e:
        raise WebConfigError(f"cannot read --web.config.file {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise WebConfigError(
            f"--web.config.file {path} is not valid YAML: {' '.join(str(e).split())}"
        ) from None
    if not isinstance(data, dict):
        raise WebConfigError(f"--web.config.file {path}: expected a mapping at the top level")
    unknown = set(data) - {"tls_server_config", "basic_auth_users", "http_server_config"}
    if unknown:
        raise WebConfigError(
            f"--web.config.file {path}: unknown key '{sorted(unknown)[0]}' "
            "(known: tls_server_config, basic_auth_users)"
        )
    cfg = WebConfig()
    tls = data.get("tls_server_config")
    if tls:
        cfg.tls = _tls_context(path, tls)
    for user, hashed in (data.get("basic_auth_users") or {}).items():
        h = str(hashed).encode()
        if not h.startswith((b"$2a$", b"$2b$", b"$2y$")):
            raise WebConfigError(
                f"--web.config.file {path}: basic_auth_users.{user} is not a bcrypt hash "
                "(make one with: htpasswd -nBC 10 USER)"
            )
        cfg.users[str(user)] = h
    return cfg


def _tls_context(path: str, tls: dict) -> ssl.SSLContext:
    base = os.path.dirname(os.path.abspath(path))

    def rel(p: str) -> str:  # paths in the file are relative to the file, as in exporter-toolkit
        return p if os.path.isabs(p) else os.path.join(base, p)

    cert, key = tls.get("cert_file"), tls.get("key_file")
    if not cert or not key:
        raise WebConfigError(f"--web.config.file {path}: tls_server_config needs cert_file and key_file")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.get("min_version"):
        if tls["min_version"] not in _TLS_VERSIONS:
            raise WebConfigError(
                f"--web.config.file {path}: min_version must be one of {', '.join(_TLS_VERSIONS)}"
            )
        ctx.minimum_version = _TLS_VERSIONS[tls["min_version"]]
    try:
        ctx.load_cert_chain(rel(cert), rel(key))
    except (OSError, ssl.SSLError) as e:
        raise WebConfigError(
            f"--web.config.file {path}: cannot load cert_file/key_file: {getattr(e, 'strerror', None) or e}"
        ) from None
    auth = tls.get("client_auth_type", "NoClientCert")
    if auth not in _CLIENT_AUTH:
        raise WebConfigError(
            f"--web.config.file {path}: client_auth_type must be one of {', '.join(_CLIENT_AUTH)}"
        )
    ctx.verify_mode = _CLIENT_AUTH[auth]
    if tls.get("client_ca_file"):
        try:
            ctx.load_verify_locations(rel(tls["client_ca_file"]))
        except (OSError, ssl.SSLError) as e:
            raise WebConfigError(f"--web.config.file {path}: cannot load client_ca_file: {e}") from None
    elif auth in ("RequireAndVerifyClientCert", "VerifyClientCertIfGiven"):
        raise WebConfigError(f"--web.config.file {path}: client_auth_type {auth} needs client_ca_file")
    return ctx


class BasicAuth:
    """WSGI middleware: 401 unless the request carries a user and password from the file.
    bcrypt is slow by design; a verified pair is remembered (as a salted digest)."""

    def __init__(self, app, users: dict[str, bytes]):
        self.app = app
        self.users = users
        self._ok: set[bytes] = set()
        self._salt = os.urandom(16)
        self._lock = threading.Lock()

    def _allowed(self, header: str) -> bool:
        if not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        hashed = self.users.get(user)
        if hashed is None:
            return False
        token = hashlib.sha256(self._salt + user.encode() + b"\0" + password.encode() + hashed).digest()
        with self._lock:
            if token in self._ok:
                return True
        if bcrypt.checkpw(password.encode(), hashed):
            with self._lock:
                self._ok.add(token)
            return True
        return False

    def __call__(self, environ, start_response):
        if self._allowed(environ.get("HTTP_AUTHORIZATION", "")):
            return self.app(environ, start_response)
        start_response(
            "401 Unauthorized",
            [
                ("Content-Type", "text/plain; charset=utf-8"),
                ("WWW-Authenticate", 'Basic realm="ingress_ipvs_exporter"'),
            ],
        )
        return [b"401 Unauthorized\n"]
