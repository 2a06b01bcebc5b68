"""Where the Docker Engine API is and how to reach it: --docker-host parsed, and TLS set up as
the docker CLI reads it (DOCKER_TLS_VERIFY, DOCKER_CERT_PATH)."""

from __future__ import annotations

import os
import re
import ssl
from dataclasses import dataclass
from typing import Mapping
from urllib.parse import urlsplit

from ..logs import one_line
from ..web.webconfig import EncryptedKey, no_password

_DEFAULT_TCP_PORT = {"tcp": 2375, "http": 80}
_DEFAULT_TLS_PORT = 2376  # the docker CLI's default for tcp:// with TLS
_TLS_FILES = ("ca.pem", "cert.pem", "key.pem")  # in DOCKER_CERT_PATH, as the docker CLI names them


def _scheme(value: str) -> str:
    """The lower-cased scheme of a --docker-host value ('' when it has none)."""
    scheme, sep, _ = value.strip().partition("://")
    return scheme.lower() if sep else ""


def parse_docker_host(value: str, tls: bool = False) -> tuple[str, str]:
    """'unix:///path' -> ('unix', '/path'); 'tcp://h:p' or 'http://h:p' -> ('tcp', 'h:p'); else ValueError.

    tcp://HOST without a port means 2376 with tls (as the docker CLI has it), else 2375.
    """
    text = value.strip()
    bad = f"--docker-host {value!r}"
    want = "use unix:///var/run/docker.sock, tcp://HOST:PORT or http://HOST:PORT"
    scheme, sep, rest = text.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in ("unix", "tcp", "http"):
        if scheme == "https":  # the docker CLI rejects it too; TLS comes from DOCKER_TLS_VERIFY
            raise ValueError(
                f"{bad}: https:// is not a docker host address; for TLS use tcp://HOST:2376 "
                "with DOCKER_TLS_VERIFY=1 and DOCKER_CERT_PATH (see docs/prometheus.md)"
            )
        if scheme in ("ssh", "npipe", "fd"):
            raise ValueError(f"{bad}: {scheme}:// is not supported; {want}")
        raise ValueError(f"{bad} is not a docker host address; {want}")
    if scheme == "unix":
        if not rest.startswith("/") or rest.rstrip("/") == "" or "\0" in rest:
            raise ValueError(f"{bad}: the socket path must be absolute, e.g. unix:///var/run/docker.sock")
        return "unix", rest
    try:
        parts = urlsplit(f"http://{rest}")
        hostname, port = parts.hostname, parts.port
    except ValueError as exc:
        raise ValueError(f"{bad}: {exc}; {want}") from None
    if (
        not hostname
        or port == 0
        or parts.username
        or parts.password
        or parts.query
        or parts.fragment
        or parts.path not in ("", "/")
    ):
        raise ValueError(f"{bad} is not a HOST:PORT address; {want}")
    host = f"[{hostname}]" if ":" in hostname else hostname
    default = _DEFAULT_TLS_PORT if tls and scheme == "tcp" else _DEFAULT_TCP_PORT[scheme]
    return "tcp", f"{host}:{port if port is not None else default}"


class TLSConfigError(ValueError):
    """The docker CLI's TLS variables or files are unusable (one line naming the file and variable)."""


@dataclass(frozen=True)
class Endpoint:
    """Where and how to reach Docker: ('unix', path) or ('tcp', 'host:port'), TLS or not."""

    kind: str
    address: str
    tls: ssl.SSLContext | None = None
    cert_dir: str = ""  # where ca.pem, cert.pem and key.pem came from, with tls


def _cert_dir(environ: Mapping[str, str]) -> str:
    """DOCKER_CERT_PATH, else the docker CLI's config folder ($DOCKER_CONFIG, else ~/.docker)."""
    folder = environ.get("DOCKER_CERT_PATH") or environ.get("DOCKER_CONFIG") or "~/.docker"
    if folder.startswith("~"):
        home = environ.get("HOME") or os.path.expanduser("~")
        folder = home + folder[1:]
    return folder


def tls_context(cert_dir: str) -> ssl.SSLContext:
    """A client context that trusts only cert_dir/ca.pem (host name checked) and presents
    cert_dir/cert.pem with key.pem. ValueError naming the file and DOCKER_CERT_PATH when one
    is missing, unreadable, not PEM, encrypted, or the key does not match the certificate."""
    ca, cert, key = (os.path.join(cert_dir, name) for name in _TLS_FILES)
    where = f"(DOCKER_CERT_PATH={cert_dir})"
    fix = "set DOCKER_CERT_PATH to the folder holding the docker client's ca.pem, cert.pem and key.pem"
    for path in (ca, cert, key):
        try:
            with open(path, "rb"):
                pass
        except FileNotFoundError:
            raise ValueError(f"{path} does not exist {where}; {fix}") from None
        except IsADirectoryError:
            raise ValueError(f"{path} is a directory, not a PEM file {where}; {fix}") from None
        except OSError as exc:
            raise ValueError(f"{path} cannot be read {where}: {exc.strerror or exc}; {fix}") from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the certificate and the host name
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_verify_locations(cafile=ca)
    except (ssl.SSLError, ValueError) as exc:
        raise ValueError(f"{ca} holds no PEM CA certificate {where}: {ssl_reason(exc)}; {fix}") from None
    try:
        context.load_cert_chain(cert, key, password=no_password)
    except EncryptedKey:
        raise ValueError(f"{key} is encrypted {where}; give the docker client's unencrypted key") from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ValueError(f"{key} is not the key of {cert} {where}; {fix}") from None
        raise ValueError(
            f"{cert} and {key} are not a PEM certificate and its key {where}: {ssl_reason(exc)}; {fix}"
        ) from None
    return context


def endpoint(docker_host: str, environ: Mapping[str, str] | None = None) -> Endpoint:
    """The Endpoint for a --docker-host value and the docker CLI's TLS variables; ValueError in one line.

    DOCKER_TLS_VERIFY (any non-empty value, as for the docker CLI) makes a tcp:// host TLS with
    the daemon's certificate and host name verified against $DOCKER_CERT_PATH/ca.pem and the
    client certificate cert.pem/key.pem presented. It is refused, never ignored, with unix://
    or http://. DOCKER_TLS (TLS without verification) is refused: nothing here skips verifying.
    """
    env = os.environ if environ is None else environ
    verify, insecure = bool(env.get("DOCKER_TLS_VERIFY")), bool(env.get("DOCKER_TLS"))
    bad = f"--docker-host {docker_host!r}"
    if not verify and not insecure:
        return Endpoint(*parse_docker_host(docker_host))
    scheme = _scheme(docker_host)
    if not verify:
        parse_docker_host(docker_host)
        raise TLSConfigError(
            f"{bad}: DOCKER_TLS (TLS without verifying the daemon) is not supported; "
            "set DOCKER_TLS_VERIFY=1 with DOCKER_CERT_PATH, or unset DOCKER_TLS for plain HTTP"
        )
    kind, address = parse_docker_host(docker_host, tls=True)
    if scheme != "tcp":
        raise TLSConfigError(
            f"{bad}: DOCKER_TLS_VERIFY is set but {scheme}:// is not TLS; use tcp://HOST:2376, "
            "or unset DOCKER_TLS_VERIFY to talk plain HTTP"
        )
    cert_dir = _cert_dir(env)
    try:
        context = tls_context(cert_dir)
    except ValueError as exc:
        raise TLSConfigError(f"{bad} with DOCKER_TLS_VERIFY set: {exc}") from None
    return Endpoint(kind, address, context, cert_dir)


def ssl_reason(exc: BaseException) -> str:
    """The short reason of an ssl error (its verify message for a rejected certificate), one line."""
    text = getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or str(exc)
    text = re.sub(r"\s*\(_ssl\.c:\d+\)", "", str(text))  # where in CPython, not why
    return one_line(text or type(exc).__name__, 120)
