"""TLS for the server: the SSLContext a web config's tls_server_config asks for, certificates
re-read when their files change, and the refusal of encrypted keys (shared with the Docker
client)."""

from __future__ import annotations

import ctypes
import functools
import ipaddress
import logging
import os
import ssl
import stat
import threading
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TLSSettings:
    """tls_server_config, checked, with paths made absolute (relative to the file)."""

    cert_file: str
    key_file: str
    client_ca_file: str = ""
    client_auth_type: str = "NoClientCert"
    client_allowed_sans: tuple[str, ...] = ()
    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2
    max_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3
    ciphers: tuple[str, ...] = ()
    prefer_server_cipher_suites: bool = True
    curves: tuple[str, ...] = ()

    def files(self) -> tuple[str, ...]:
        return tuple(f for f in (self.cert_file, self.key_file, self.client_ca_file) if f)


def _regular_file(path: str, what: str) -> None:
    """ValueError unless path is a regular file: a FIFO or a device would block or never end."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # opening it says why, in its own words
    if not stat.S_ISREG(mode):
        raise ValueError(f"{what} {path} is not a regular file")


class EncryptedKey(ValueError):
    """What no_password raises."""


def no_password() -> bytes:
    """load_cert_chain's password callback: an encrypted key is refused, never prompted for
    (OpenSSL would read a pass phrase from the terminal, holding up whatever loads it)."""
    raise EncryptedKey("encrypted")


# Python's ssl has no verify callback and no groups list; OpenSSL has both. They are set on
# the context's SSL_CTX through the libssl that _ssl itself links against.
# Only the two settings that need them touch OpenSSL this way: a plain TLS config never does,
# and the ctypes callback is made only for RequestClientCert / RequireAnyClientCert.
_VerifyCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p)
_SSL_VERIFY_PEER, _SSL_VERIFY_FAIL_IF_NO_PEER_CERT = 1, 2
_SSL_CTRL_SET_GROUPS_LIST = 92


def _libssl() -> ctypes.CDLL:
    lib = ctypes.CDLL(ssl._ssl.__file__)  # type: ignore[attr-defined]  # dlsym searches its libssl too
    lib.SSL_CTX_set_verify.argtypes = (ctypes.c_void_p, ctypes.c_int, _VerifyCallback)
    lib.SSL_CTX_set_verify.restype = None
    lib.SSL_CTX_get_verify_mode.argtypes = (ctypes.c_void_p,)
    lib.SSL_CTX_get_verify_mode.restype = ctypes.c_int
    lib.SSL_CTX_ctrl.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_char_p)
    lib.SSL_CTX_ctrl.restype = ctypes.c_long
    return lib


def _ssl_ctx(ctx: ssl.SSLContext) -> tuple[ctypes.CDLL, int]:
    """libssl and the SSL_CTX* of ctx (the field after the object header), checked by
    setting a verify mode through Python and reading it back through libssl."""
    lib = _libssl()
    ptr = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    if not ptr:
        raise ValueError("this Python's ssl module does not expose OpenSSL's context")
    for mode, bits in ((ssl.CERT_OPTIONAL, 1), (ssl.CERT_REQUIRED, 3), (ssl.CERT_NONE, 0)):
        ctx.verify_mode = mode
        if lib.SSL_CTX_get_verify_mode(ptr) != bits:
            raise ValueError("this Python's ssl module does not expose OpenSSL's context")
    return lib, ptr


@functools.lru_cache(maxsize=1)
def _accept_any() -> Any:
    """A verify callback that accepts any certificate (made once, kept alive for OpenSSL)."""
    return _VerifyCallback(lambda ok, store: 1)


def build_context(s: TLSSettings) -> ssl.SSLContext:
    """An SSLContext for these settings; OSError/ssl.SSLError/ValueError name what failed."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    needs_openssl = bool(s.curves) or s.client_auth_type in ("RequestClientCert", "RequireAnyClientCert")
    lib, ptr = _ssl_ctx(ctx) if needs_openssl else (None, 0)
    ctx.minimum_version, ctx.maximum_version = s.min_version, s.max_version
    files = (("cert_file", s.cert_file), ("key_file", s.key_file), ("client_ca_file", s.client_ca_file))
    for what, path in files:
        if path:
            _regular_file(path, what)
    try:
        ctx.load_cert_chain(s.cert_file, s.key_file, password=no_password)
    except EncryptedKey:
        raise ValueError(f"key_file {s.key_file} is encrypted: give an unencrypted key") from None
    except (OSError, ssl.SSLError) as e:
        raise ValueError(f"cannot load cert_file/key_file: {getattr(e, 'strerror', None) or e}") from None
    if s.client_ca_file:
        try:
            ctx.load_verify_locations(s.client_ca_file)
        except (OSError, ssl.SSLError) as e:
            raise ValueError(f"cannot load client_ca_file: {getattr(e, 'strerror', None) or e}") from None
    if s.ciphers:
        ctx.set_ciphers(":".join(s.ciphers))
    if s.prefer_server_cipher_suites:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    if (
        lib is not None
        and s.curves
        and lib.SSL_CTX_ctrl(ptr, _SSL_CTRL_SET_GROUPS_LIST, 0, ":".join(s.curves).encode()) != 1
    ):
        raise ValueError(f"OpenSSL refused curve_preferences {', '.join(s.curves)}")
    if s.client_auth_type in ("RequestClientCert", "RequireAnyClientCert"):
        # ask for a certificate (and for RequireAny, insist on one) but do not verify it
        mode = _SSL_VERIFY_PEER
        if s.client_auth_type == "RequireAnyClientCert":
            mode |= _SSL_VERIFY_FAIL_IF_NO_PEER_CERT
        assert lib is not None
        lib.SSL_CTX_set_verify(ptr, mode, _accept_any())
    elif s.client_auth_type == "VerifyClientCertIfGiven":
        ctx.verify_mode = ssl.CERT_OPTIONAL
    elif s.client_auth_type == "RequireAndVerifyClientCert":
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _signature(files: tuple[str, ...]) -> tuple[tuple[int, int, int, int], ...]:
    out = []
    for f in files:
        try:
            st = os.stat(f)
            out.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((0, 0, -1, 0))
    return tuple(out)


class RotatingTLS:
    """The server's SSLContext, rebuilt when the cert, key or client CA file changes (checked
    with a stat per new connection, as the toolkit reads them per handshake). A new pair that
    does not load keeps the old context serving and is logged once."""

    def __init__(self, settings: TLSSettings):
        self.settings = settings
        self._lock = threading.Lock()
        self._seen = _signature(settings.files())
        self._ctx = build_context(settings)

    def context(self) -> ssl.SSLContext:
        now = _signature(self.settings.files())
        with self._lock:
            if now != self._seen:
                self._seen = now
                try:
                    self._ctx = build_context(self.settings)
                    log.info("TLS certificate files changed: reloaded %s", self.settings.cert_file)
                except (OSError, ssl.SSLError, ValueError) as e:
                    log.warning("TLS certificate files changed but do not load (%s): keeping the old ones", e)
            return self._ctx

    def peer_allowed(self, sock: ssl.SSLSocket) -> bool:
        """client_allowed_sans: the client certificate has one of the listed SANs."""
        allowed = self.settings.client_allowed_sans
        if not allowed:
            return True
        cert: dict[str, Any] = dict(sock.getpeercert() or {})
        for _kind, value in cert.get("subjectAltName", ()):
            value = str(value).strip()
            if value in allowed or _same_ip(value, allowed):
                return True
        return False


def _same_ip(value: str, allowed: tuple[str, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        return False
    for a in allowed:
        try:
            if ipaddress.ip_address(a) == ip:
                return True
        except ValueError:
            continue
    return False
