"""Thin binding over the C shim: a handle on one network namespace and its snapshots.

The shim fills flat arrays; a snapshot copies them out as Python lists in one call per
column block (no per-message parsing here). Failures raise IPVSError subclasses whose
message names the namespace and what to do about it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import threading
from typing import NamedTuple

from ._ipvs_cffi import ffi, lib

log = logging.getLogger(__name__)

SVC_NCOLS = lib.IPVS_SVC_NCOLS
DST_NCOLS = lib.IPVS_DST_NCOLS
NSTATS = lib.IPVS_NSTATS
ADDR_LEN = lib.IPVS_ADDR_LEN
NAME_LEN = lib.IPVS_NAME_LEN


class Stats(NamedTuple):
    """Kernel counters (totals since the entry was created) and rate estimates (per second)."""

    conns: int
    inpkts: int
    outpkts: int
    inbytes: int
    outbytes: int
    cps: int
    inpps: int
    outpps: int
    inbps: int
    outbps: int


class Destination(NamedTuple):
    af: int
    address: str
    port: int
    fwd_method: int
    weight: int
    u_threshold: int
    l_threshold: int
    active_conns: int
    inactive_conns: int
    persist_conns: int
    stats: Stats


class Service(NamedTuple):
    af: int
    protocol: int
    address: str
    port: int
    fwmark: int
    scheduler: str
    flags: int
    timeout: int
    netmask: int
    stats: Stats
    destinations: tuple[Destination, ...]


class IPVSError(OSError):
    """Reading IPVS in a namespace failed; str() is one line that says what to do."""


class NamespaceNotFound(IPVSError, FileNotFoundError):
    reason = "namespace_missing"


class NotANamespace(IPVSError):
    reason = "not_a_namespace"


class NotPermitted(IPVSError, PermissionError):
    reason = "permission"


class IPVSUnavailable(IPVSError):
    reason = "ipvs_unavailable"


class DumpFailed(IPVSError):
    reason = "netlink"


IPVSError.reason = "error"


def describe_namespace(path: str) -> str:
    return f"network namespace {path}" if path else "the current network namespace"


def error_for(err: int, path: str, entering: bool = False) -> IPVSError:
    """Map a shim errno to the exception a user can act on. entering: the error came from
    ipvs_open (open + setns into the namespace) rather than from an IPVS request, which tells
    the two EPERMs apart: setns() wants CAP_SYS_ADMIN, IPVS's netlink commands CAP_NET_ADMIN."""
    where = describe_namespace(path)
    denied = f"not permitted to read IPVS in {where}"
    if err == errno.ENOENT:
        return NamespaceNotFound(
            err, f"{where} does not exist (yet): is this node in a swarm? Otherwise set --namespace-path"
        )
    if err == errno.ENOMEDIUM and entering:
        # the shim's word for an empty regular file that setns() refused, judged on the file
        # it opened (a stat of the path now could already see the namespace mounted there)
        return NamespaceNotFound(
            err,
            f"{path} is an empty file, not yet a network namespace (Docker creates the file, then "
            "mounts the namespace on it): waiting for it",
        )
    if err == errno.EINVAL and entering:
        # a FIFO, directory, socket or device, a file with content, or another namespace type
        return NotANamespace(
            err,
            f"{path} is not a network namespace: point --namespace-path at one, "
            "e.g. /var/run/docker/netns/ingress_sbox",
        )
    if err == errno.EACCES:
        # open() of the path: a directory on the way is not searchable (Docker's /var/run/docker
        # is root's, mode 0700) or the file is not readable.
        return NotPermitted(
            err,
            f"{denied}: cannot open {path} (permission denied): give the exporter CAP_DAC_READ_SEARCH "
            "or run it as root",
        )
    if err == errno.EPERM and entering:
        return NotPermitted(
            err,
            f"{denied}: entering it (setns) needs CAP_SYS_ADMIN: give the exporter "
            "CAP_SYS_ADMIN or run it as root",
        )
    if err == errno.EPERM:
        return NotPermitted(
            err,
            f"{denied}: IPVS netlink requests need CAP_NET_ADMIN: give the exporter "
            "CAP_NET_ADMIN or run it as root",
        )
    if err == errno.EPROTONOSUPPORT:
        return IPVSUnavailable(
            err, f"IPVS is not available in the kernel of {where}: load it with 'modprobe ip_vs'"
        )
    return DumpFailed(err, f"reading IPVS in {where} failed: {os.strerror(err)}")


def _u32(ptr, n: int) -> memoryview:
    """A private copy of a uint32 column block, as a flat sequence of ints (4 bytes each,
    where a list would cost ~36: this is what keeps a 10,000-service scrape small)."""
    return memoryview(ffi.buffer(ptr, n * 4)[:]).cast("I") if n else memoryview(b"").cast("I")


def _u64(ptr, n: int) -> memoryview:
    return memoryview(ffi.buffer(ptr, n * 8)[:]).cast("Q") if n else memoryview(b"").cast("Q")


def _bytes(ptr, n: int) -> bytes:
    return ffi.buffer(ptr, n)[:] if n else b""


def format_addr(af: int, raw: bytes) -> str:
    """The text form of a 16-byte address slot (IPv4 uses the first 4 bytes)."""
    if af == socket.AF_INET6:
        return socket.inet_ntop(socket.AF_INET6, raw)
    if af == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    return ""


class Snapshot:
    """One dump of IPVS as flat columns (row-major, like the shim's arrays).

    svc_u32 / dst_u32 rows follow the IPVS_SVC_* / IPVS_DST_* column constants;
    *_stats rows follow Stats. The columns are int sequences (memoryviews over a copy of
    the shim's arrays, or lists in tests); services() builds the tuple view on demand.
    """

    __slots__ = (
        "n_svc",
        "n_dst",
        "svc_u32",
        "svc_stats",
        "svc_addr",
        "svc_sched",
        "dst_u32",
        "dst_stats",
        "dst_addr",
        "stats64",
    )

    def __init__(
        self,
        n_svc,
        n_dst,
        svc_u32,
        svc_stats,
        svc_addr,
        svc_sched,
        dst_u32,
        dst_stats,
        dst_addr,
        stats64=True,
    ):
        self.n_svc, self.n_dst = n_svc, n_dst
        self.svc_u32, self.svc_stats, self.svc_addr, self.svc_sched = svc_u32, svc_stats, svc_addr, svc_sched
        self.dst_u32, self.dst_stats, self.dst_addr = dst_u32, dst_stats, dst_addr
        self.stats64 = stats64

    @classmethod
    def from_handle(cls, h) -> Snapshot:
        ns, nd = h.n_svc, h.n_dst
        return cls(
            ns,
            nd,
            _u32(h.svc_u32, ns * SVC_NCOLS),
            _u64(h.svc_stats, ns * NSTATS),
            _bytes(h.svc_addr, ns * ADDR_LEN),
            _bytes(h.svc_sched, ns * NAME_LEN),
            _u32(h.dst_u32, nd * DST_NCOLS),
            _u64(h.dst_stats, nd * NSTATS),
            _bytes(h.dst_addr, nd * ADDR_LEN),
            bool(h.stats64),
        )

    def fwmarks(self) -> set[int]:
        c = lib.IPVS_SVC_FWMARK
        return {f for f in self.svc_u32[c::SVC_NCOLS] if f}

    def destination(self, i: int) -> Destination:
        r = self.dst_u32[i * DST_NCOLS : (i + 1) * DST_NCOLS]
        af = r[lib.IPVS_DST_AF]
        weight = r[lib.IPVS_DST_WEIGHT]
        return Destination(
            af=af,
            address=format_addr(af, self.dst_addr[i * ADDR_LEN : (i + 1) * ADDR_LEN]),
            port=r[lib.IPVS_DST_PORT],
            fwd_method=r[lib.IPVS_DST_FWD],
            weight=weight - (1 << 32) if weight >= 1 << 31 else weight,
            u_threshold=r[lib.IPVS_DST_U_THRESH],
            l_threshold=r[lib.IPVS_DST_L_THRESH],
            active_conns=r[lib.IPVS_DST_ACTIVE],
            inactive_conns=r[lib.IPVS_DST_INACTIVE],
            persist_conns=r[lib.IPVS_DST_PERSIST],
            stats=Stats(*self.dst_stats[i * NSTATS : (i + 1) * NSTATS]),
        )

    def service(self, i: int) -> Service:
        r = self.svc_u32[i * SVC_NCOLS : (i + 1) * SVC_NCOLS]
        af = r[lib.IPVS_SVC_AF]
        first, count = r[lib.IPVS_SVC_DEST_FIRST], r[lib.IPVS_SVC_DEST_COUNT]
        sched = self.svc_sched[i * NAME_LEN : (i + 1) * NAME_LEN].split(b"\0", 1)[0]
        return Service(
            af=af,
            protocol=r[lib.IPVS_SVC_PROTOCOL],
            address=format_addr(af, self.svc_addr[i * ADDR_LEN : (i + 1) * ADDR_LEN])
            if not r[lib.IPVS_SVC_FWMARK]
            else "",
            port=r[lib.IPVS_SVC_PORT],
            fwmark=r[lib.IPVS_SVC_FWMARK],
            scheduler=sched.decode("ascii", "replace"),
            flags=r[lib.IPVS_SVC_FLAGS],
            timeout=r[lib.IPVS_SVC_TIMEOUT],
            netmask=r[lib.IPVS_SVC_NETMASK],
            stats=Stats(*self.svc_stats[i * NSTATS : (i + 1) * NSTATS]),
            destinations=tuple(self.destination(j) for j in range(first, first + count)),
        )

    def services(self) -> list[Service]:
        return [self.service(i) for i in range(self.n_svc)]


def _namespace_id(path: str) -> tuple[int, int] | None:
    """(st_dev, st_ino) of the namespace file now; None when it is gone."""
    try:
        st = os.stat(path or "/proc/self/ns/net")
    except OSError:
        return None
    return st.st_dev, st.st_ino


class Handle:
    """A netlink handle on the namespace at `path` ("" = the exporter's own).

    Opened lazily and reopened when the path comes to name another namespace (docker
    recreates ingress_sbox on restart) or after a failed dump. Thread-safe.
    """

    def __init__(self, path: str):
        self.path = path
        self._h = None
        self._lock = threading.Lock()

    def _open(self) -> None:
        out = ffi.new("struct ipvs_handle **")
        rc = lib.ipvs_open(self.path.encode(), out)
        if rc == -errno.ENOTRECOVERABLE:
            # setns() back to our own namespace failed: this thread now lives in the
            # target namespace and every later socket would silently be made there.
            log.critical(
                "could not return from %s to the exporter's own network namespace; exiting",
                describe_namespace(self.path),
            )
            os._exit(70)
        if rc:
            raise error_for(-rc, self.path, entering=True)
        self._h = out[0]

    def _close(self) -> None:
        if self._h is not None:
            lib.ipvs_close(self._h)
            self._h = None

    def close(self) -> None:
        with self._lock:
            self._close()

    def _ensure_open(self) -> None:
        if self._h is not None and self.path:
            now = _namespace_id(self.path)
            if now != (self._h.ns_dev, self._h.ns_ino):
                log.info("%s changed or disappeared; reopening", describe_namespace(self.path))
                self._close()
        if self._h is None:
            self._open()

    def _call(self, fn, *args) -> None:
        self._ensure_open()
        rc = fn(self._h, *args)
        if rc:
            self._close()  # the socket may hold a half-read reply: start afresh
            raise error_for(-rc, self.path)

    def snapshot(self) -> Snapshot:
        """Dump every service and destination now."""
        with self._lock:
            self._call(lib.ipvs_dump)
            return Snapshot.from_handle(self._h)

    def info(self) -> tuple[int, int]:
        """(IPVS version as 0xMMmmpp, connection table size)."""
        v = ffi.new("uint32_t *")
        s = ffi.new("uint32_t *")
        with self._lock:
            self._call(lib.ipvs_get_info, v, s)
        return v[0], s[0]

    def __enter__(self) -> Handle:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        with contextlib.suppress(Exception):
            self._close()


def libnl_version() -> str:
    return ffi.string(lib.ipvs_libnl_version()).decode()
