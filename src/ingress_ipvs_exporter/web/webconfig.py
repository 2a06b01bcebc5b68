"""--web.config.file: reading and checking the exporter-toolkit web config (TLS, basic auth
users, response headers); tls.py makes the TLS context from its settings.

The file fails closed: an unknown, misspelt, duplicated, unsupported or mistyped key stops
start-up with one line naming it, so a typo never silently weakens what the file asks for.
Keys (as exporter-toolkit documents them):

- tls_server_config: cert_file, key_file, client_ca_file, client_auth_type,
  client_allowed_sans, min_version, max_version, cipher_suites (Go names; TLS 1.3 suites are
  accepted and, as in Go, not configurable), prefer_server_cipher_suites, curve_preferences.
  The inline cert, key and client_ca are rejected (use the *_file keys).
- http_server_config: headers (the five the toolkit allows), http2 (accepted; this server
  speaks HTTP/1.1 only).
- basic_auth_users: {user: bcrypt hash}.
- rate_limit is rejected (not implemented here; --web.max-requests bounds concurrency).

The file and the TLS files must be regular files (a FIFO or a device is one line, not a hang),
the file at most MAX_BYTES and MAX_NODES values with its YAML aliases expanded; an encrypted key is refused,
never prompted for.
"""

from __future__ import annotations

import logging
import os
import re
import reprlib
import ssl
import stat
from dataclasses import dataclass, field
from typing import Any, Optional, cast

import yaml

from .tls import RotatingTLS, TLSSettings

log = logging.getLogger(__name__)

_TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
_CLIENT_AUTH = (
    "NoClientCert",
    "RequestClientCert",
    "RequireAnyClientCert",
    "RequireClientCert",  # the toolkit's older spelling of RequireAnyClientCert
    "VerifyClientCertIfGiven",
    "RequireAndVerifyClientCert",
)
# Go's tls.CipherSuites() names -> OpenSSL names (TLS 1.2 and below)
_CIPHERS = {
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
}
# TLS 1.3 suites: Go lists them but ignores them in its config, and so does OpenSSL's cipher list
_TLS13_CIPHERS = ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256")
_CURVES = {"CurveP256": "P-256", "CurveP384": "P-384", "CurveP521": "P-521", "X25519": "X25519"}
# the only response headers the toolkit lets a config set; a tuple lists the allowed values
_HEADERS: dict[str, tuple[str, ...]] = {
    "Strict-Transport-Security": (),
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": (),
    "Content-Security-Policy": (),
}
_BCRYPT = re.compile(rb"\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}")


class WebConfigError(ValueError):
    """The web config file is unusable; the message names the file, the key and the fix."""


@dataclass
class WebConfig:
    tls: Optional[RotatingTLS] = None
    users: dict[str, bytes] = field(default_factory=dict)
    headers: list[tuple[str, str]] = field(default_factory=list)


# ---- reading the file ----------------------------------------------------------------


MAX_BYTES = 1 << 20  # a web config is a few hundred bytes; this bounds what start-up reads
# YAML nodes with every alias expanded: plenty for any web config, far too few for an alias
# bomb (nested aliases, each level multiplying the one below)
MAX_NODES = 10_000
_MERGE = "tag:yaml.org,2002:merge"


def _expanded(node: yaml.Node, sizes: dict[int, int]) -> int:
    """How many nodes the document holds with its aliases expanded, counted without
    expanding them (an alias is the same node object: its size is looked up)."""
    size = sizes.get(id(node))
    if size is None:
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        size = 1
        for child in children:
            size += _expanded(child, sizes)
            if size > MAX_NODES:
                break
        sizes[id(node)] = size
    return size


def _parse(text: str) -> Any:
    """The YAML document, refused (yaml.YAMLError) past MAX_NODES once aliases are expanded."""
    loader = _UniqueKeyLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded(node, {}) > MAX_NODES:
            raise yaml.YAMLError(f"more than {MAX_NODES} values once aliases are expanded")
        return loader.construct_document(node)
    finally:
        loader.dispose()


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key twice in one mapping (YAML would keep the last silently);
    merge keys (<<: *base) work as in Go's yaml, a key of the mapping itself overriding a
    merged one."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == _MERGE:
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: construct_mapping says so itself
                break
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key '{key}'", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_TYPE_NAMES = {str: "a string", bool: "true or false", list: "a list", dict: "a mapping"}


class _Checker:
    """Type and key checks that name the offending key in the error."""

    def __init__(self, path: str):
        self.path = path

    def fail(self, message: str) -> WebConfigError:
        return WebConfigError(f"--web.config.file {self.path}: {message}")

    def get(self, section: dict[str, Any], prefix: str, key: str, kind: type, default: Any = None) -> Any:
        value = section.get(key)
        if value is None:
            return default
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise self.fail(f"{prefix}{key} must be {_TYPE_NAMES[kind]}, not {_describe(value)}")
        if kind is list:
            items = cast(list[Any], value)
            for i, item in enumerate(items):
                if not isinstance(item, str):
                    raise self.fail(f"{prefix}{key}[{i}] must be a string, not {_describe(item)}")
        return value

    def known(self, section: dict[str, Any], prefix: str, known: tuple[str, ...]) -> None:
        for key in section:
            if key not in known:
                raise self.fail(f"unknown key '{prefix}{key}' (known: {', '.join(known)})")

    def choice(self, name: str, value: str, choices: Any) -> None:
        if value not in choices:
            raise self.fail(f"{name} '{value}' must be one of {', '.join(choices)}")


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother = 2, 40, 40  # never renders a whole value


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {_SHORT.repr(value)}"[:80]


def load(path: str) -> WebConfig:
    """Parse and check the file now, so that a mistake stops start-up with one line."""
    check = _Checker(path)
    try:
        # O_NONBLOCK: opening a FIFO waits for a writer otherwise (a regular file ignores it)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with open(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise check.fail("not a regular file")
            raw = f.read(MAX_BYTES + 1)
        if len(raw) > MAX_BYTES:
            raise check.fail(f"larger than {MAX_BYTES} bytes: not a web config")
        text = raw.decode("utf-8")
    except OSError as e:
        raise WebConfigError(f"cannot read --web.config.file {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise check.fail(f"not UTF-8 text (byte {e.start})") from None
    try:
        data = _parse(text) or {}
    except yaml.YAMLError as e:
        raise check.fail(f"not valid YAML: {' '.join(str(e).split())}") from None
    except RecursionError:
        raise check.fail("not a web config: nested too deep") from None
    if not isinstance(data, dict):
        raise check.fail(f"expected a mapping at the top level, not {_describe(data)}")
    if "rate_limit" in data:
        raise check.fail("rate_limit is not supported by this exporter (see --web.max-requests)")
    check.known(data, "", ("tls_server_config", "http_server_config", "basic_auth_users"))
    cfg = WebConfig()
    tls = check.get(data, "", "tls_server_config", dict, {})
    if tls:
        settings = _tls_settings(check, tls)
        try:
            cfg.tls = RotatingTLS(settings)
        except (OSError, ssl.SSLError, ValueError) as e:
            raise check.fail(str(e)) from None
    http = check.get(data, "", "http_server_config", dict, {})
    check.known(http, "http_server_config.", ("headers", "http2"))
    check.get(http, "http_server_config.", "http2", bool)  # HTTP/1.1 is served either way
    for name, value in check.get(http, "http_server_config.", "headers", dict, {}).items():
        key = f"http_server_config.headers.{name}"
        if name not in _HEADERS:
            raise check.fail(f"{key} cannot be set (allowed: {', '.join(_HEADERS)})")
        if not isinstance(value, str) or "\r" in value or "\n" in value:
            raise check.fail(f"{key} must be a one-line string, not {_describe(value)}")
        if _HEADERS[name] and value not in _HEADERS[name]:
            raise check.fail(f"{key} '{value}' must be one of {', '.join(_HEADERS[name])}")
        if value:  # blank means unset, as in the toolkit
            cfg.headers.append((name, value))
    for user, hashed in check.get(data, "", "basic_auth_users", dict, {}).items():
        if not isinstance(user, str) or not isinstance(hashed, str):
            raise check.fail(f"basic_auth_users.{user} must map a user name to a bcrypt hash string")
        h = hashed.encode()
        m = _BCRYPT.fullmatch(h)
        if not m or not 4 <= int(m.group(1)) <= 31:
            raise check.fail(
                f"basic_auth_users.{user} is not a bcrypt hash (make one with: htpasswd -nBC 10 USER)"
            )
        cfg.users[user] = h
    return cfg


def _tls_settings(check: _Checker, tls: dict[str, Any]) -> TLSSettings:
    p = "tls_server_config."
    for inline in ("cert", "key", "client_ca"):
        if inline in tls:
            raise check.fail(f"{p}{inline} (inline PEM) is not supported; use {inline}_file")
    check.known(
        tls,
        p,
        (
            "cert_file",
            "key_file",
            "client_ca_file",
            "client_auth_type",
            "client_allowed_sans",
            "min_version",
            "max_version",
            "cipher_suites",
            "prefer_server_cipher_suites",
            "curve_preferences",
        ),
    )
    base = os.path.dirname(os.path.abspath(check.path))

    def path(key: str) -> str:  # paths in the file are relative to the file, as in exporter-toolkit
        value: str = check.get(tls, p, key, str, "")
        return os.path.join(base, value) if value else ""

    cert, key = path("cert_file"), path("key_file")
    if not cert or not key:
        raise check.fail("tls_server_config needs cert_file and key_file")
    auth = check.get(tls, p, "client_auth_type", str, "NoClientCert")
    check.choice(f"{p}client_auth_type", auth, _CLIENT_AUTH)
    auth = "RequireAnyClientCert" if auth == "RequireClientCert" else auth
    ca = path("client_ca_file")
    if ca and auth == "NoClientCert":
        raise check.fail(f"{p}client_ca_file is set but client_auth_type is NoClientCert")
    if not ca and auth in ("RequireAndVerifyClientCert", "VerifyClientCertIfGiven"):
        raise check.fail(f"{p}client_auth_type {auth} needs client_ca_file")
    sans = tuple(check.get(tls, p, "client_allowed_sans", list, []))
    if sans and auth not in ("RequireAnyClientCert", "RequireAndVerifyClientCert"):
        raise check.fail(
            f"{p}client_allowed_sans needs client_auth_type RequireAnyClientCert or RequireAndVerify..."
        )
    versions = []
    for name, default in (("min_version", "TLS12"), ("max_version", "TLS13")):
        value = check.get(tls, p, name, str, default)
        check.choice(p + name, value, _TLS_VERSIONS)
        versions.append(_TLS_VERSIONS[value])
    if versions[0] > versions[1]:
        raise check.fail(f"{p}min_version is above max_version")
    ciphers = []
    for name in check.get(tls, p, "cipher_suites", list, []):
        if name not in _CIPHERS and name not in _TLS13_CIPHERS:
            raise check.fail(f"{p}cipher_suites: unknown cipher '{name}' (Go's tls.CipherSuites() names)")
        if name in _CIPHERS:
            ciphers.append(_CIPHERS[name])
    curves = []
    for name in check.get(tls, p, "curve_preferences", list, []):
        check.choice(f"{p}curve_preferences entry", name, _CURVES)
        curves.append(_CURVES[name])
    settings = TLSSettings(
        cert_file=cert,
        key_file=key,
        client_ca_file=ca,
        client_auth_type=auth,
        client_allowed_sans=sans,
        min_version=versions[0],
        max_version=versions[1],
        ciphers=tuple(ciphers),
        prefer_server_cipher_suites=check.get(tls, p, "prefer_server_cipher_suites", bool, True),
        curves=tuple(curves),
    )
    return settings
