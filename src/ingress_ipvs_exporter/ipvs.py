"""The binding over the C shim, and the only module of the exporter that knows its row layout
(testing.py's builder, for tests, writes rows in it too): a handle on one network namespace,
and snapshots of its IPVS as named, typed columns.

The shim fills flat row-major arrays; a snapshot copies each block out in one call (no
per-message parsing here) and exposes it column by column (`snap.services.fwmark`,
`snap.dests.weight`, ...). Failures raise IPVSError subclasses whose message names the
namespace and what to do about it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import threading
from collections.abc import Sequence
from typing import Any, Callable, NamedTuple

from ._ipvs_cffi import ffi, lib
from .speedups import transposed

log = logging.getLogger(__name__)

_SVC_NCOLS: int = lib.IPVS_SVC_NCOLS
_DST_NCOLS: int = lib.IPVS_DST_NCOLS
_NSTATS: int = lib.IPVS_NSTATS
_ADDR_LEN: int = lib.IPVS_ADDR_LEN
_NAME_LEN: int = lib.IPVS_NAME_LEN
SYSCTLS: tuple[str, ...] = tuple(
    ffi.string(lib.ipvs_sysctl_name(i)).decode() for i in range(lib.IPVS_NSYSCTL)
)
SYSCTL_DIR = "/proc/sys/net/ipv4/vs"
DAEMON_STATES: dict[int, str] = {1: "master", 2: "backup"}  # IP_VS_STATE_*


class SyncDaemon(NamedTuple):
    """A running connection sync daemon: "master" or "backup", its multicast interface, sync ID."""

    state: str
    mcast_interface: str
    sync_id: int


class Settings(NamedTuple):
    """A namespace's IPVS settings. timeouts: {"tcp", "tcp_fin", "udp"} -> seconds, None when
    the kernel refused the query; daemons: the running sync daemons, None when refused;
    sysctls: name -> value of each setting this namespace has and the exporter could read;
    problems: (key, message) for each query refused or setting unreadable (a setting the
    kernel lacks is no problem), the key telling one kind of problem from another."""

    timeouts: dict[str, int] | None
    daemons: tuple[SyncDaemon, ...] | None
    sysctls: dict[str, int]
    problems: tuple[tuple[tuple[str, str, int], str], ...] = ()


class IPVSError(OSError):
    """Reading IPVS in a namespace failed; str() is one line that says what to do."""

    reason = "error"  # the label of the scrape error counter


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


class ReadTimeout(IPVSError):
    """A namespace's read was still running when the scrape stopped waiting for it."""

    reason = "timeout"


class ThreadLost(BaseException):
    """The shim could not setns() the calling thread back to the exporter's own namespace: the
    thread now lives in the target namespace, and every socket it made later would silently
    be made there. No scrape error but the process's end (the CLI exits 70): a BaseException,
    so that no handler of request or read failures takes it for one of those."""


def shown_path(path: str) -> str:
    """A path as labels and logs show it: bytes that are not UTF-8 (os.fsdecode keeps them as
    lone surrogates, which nothing can encode) written as \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


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
    if err == errno.ESTALE:
        # ipvs_get_settings found the path naming another namespace than the handle's
        return DumpFailed(err, f"{where} was replaced while it was read: reopening it")
    if err == errno.EPROTONOSUPPORT:
        return IPVSUnavailable(
            err, f"IPVS is not available in the kernel of {where}: load it with 'modprobe ip_vs'"
        )
    return DumpFailed(err, f"reading IPVS in {where} failed: {os.strerror(err)}")


def settings_from(h: Any, path: str) -> Settings:
    """The Settings a handle on `path`'s namespace holds (its struct ipvs_settings)."""
    s = h.settings
    where = describe_namespace(path)
    problems: list[tuple[tuple[str, str, int], str]] = []

    def refused(what: str, err: int) -> None:
        why = os.strerror(err) + (": IPVS netlink requests need CAP_NET_ADMIN" if err == errno.EPERM else "")
        problems.append(((what, "", err), f"{what} in {where} failed ({why}): left out"))

    timeouts = None
    if s.config_err:
        refused("reading the IPVS timeouts", -s.config_err)
    else:
        timeouts = {"tcp": s.timeout_tcp, "tcp_fin": s.timeout_tcp_fin, "udp": s.timeout_udp}
    daemons = None
    if s.daemon_err:
        refused("reading the IPVS sync daemons", -s.daemon_err)
    else:
        daemons = tuple(
            SyncDaemon(
                DAEMON_STATES.get(d.state, str(d.state)),
                ffi.string(d.mcast_ifn).decode("ascii", "replace"),
                d.sync_id,
            )
            for d in s.daemons[0 : s.n_daemons]
        )
    sysctls = {}
    for i, name in enumerate(SYSCTLS):
        err = -s.sysctl_err[i]
        if not err:
            sysctls[name] = s.sysctl[i]
        elif err != errno.ENOENT:  # ENOENT: this kernel has no such setting
            problems.append(
                (
                    ("sysctl", name, err),
                    f"cannot read {SYSCTL_DIR}/{name} in {where} ({os.strerror(err)}): left out",
                )
            )
    return Settings(timeouts, daemons, sysctls, tuple(problems))


def _copy(ptr: Any, n: int, width: int) -> bytes:
    """A private copy of n items of `width` bytes from a shim array."""
    return bytes(ffi.buffer(ptr, n * width)) if n else b""


def format_addr(af: int, raw: bytes) -> str:
    """The text form of a 16-byte address slot (IPv4 uses the first 4 bytes)."""
    if af == socket.AF_INET6:
        return socket.inet_ntop(socket.AF_INET6, raw)
    if af == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    return ""


Column = Sequence[int]  # one value per row: a contiguous memoryview into a snapshot's block


def _u32_column(index: int, signed: bool = False) -> property:
    def get(self: _Rows) -> Column:
        n = self.count
        return (self._u32s if signed else self._u32)[index * n : (index + 1) * n]

    return property(get, doc=f"uint32 column {index} of each row" + (" (signed)" if signed else ""))


def _stat_column(index: int) -> property:
    def get(self: _Rows) -> Column:
        n = self.count
        return self._stats[index * n : (index + 1) * n]

    return property(get, doc=f"stats column {index} of each row")


class _Rows:
    """One block of rows (services or destinations): uint32 columns, 64-bit stats, addresses.
    Made from the shim's blocks, row by row; kept column by column."""

    __slots__ = ("_addr", "_stats", "_u32", "_u32s", "count")

    def __init__(self, count: int, ncols: int, u32: Any, stats: Any, addr: bytes) -> None:
        """u32, stats: count rows of ncols uint32 and of IPVS_NSTATS uint64, row by row (a
        shim array or bytes)."""
        self.count = count
        u32_cols = transposed(u32, count, ncols, 4)
        self._u32 = memoryview(u32_cols).cast("I")
        self._u32s = memoryview(u32_cols).cast("i")
        self._stats = memoryview(transposed(stats, count, _NSTATS, 8)).cast("Q")
        self._addr = addr

    # Kernel counters (totals since the entry was created) and rate estimates (per second).
    conns = _stat_column(lib.IPVS_ST_CONNS)
    inpkts = _stat_column(lib.IPVS_ST_INPKTS)
    outpkts = _stat_column(lib.IPVS_ST_OUTPKTS)
    inbytes = _stat_column(lib.IPVS_ST_INBYTES)
    outbytes = _stat_column(lib.IPVS_ST_OUTBYTES)
    cps = _stat_column(lib.IPVS_ST_CPS)
    inpps = _stat_column(lib.IPVS_ST_INPPS)
    outpps = _stat_column(lib.IPVS_ST_OUTPPS)
    inbps = _stat_column(lib.IPVS_ST_INBPS)
    outbps = _stat_column(lib.IPVS_ST_OUTBPS)

    def packed(self, *names: str) -> bytes:
        """The named columns as one bytes value: cheap to keep and compare across scrapes
        (it holds no reference to the snapshot)."""
        return b"".join(getattr(self, name).tobytes() for name in names)

    def addresses(self) -> list[str]:
        """Each row's address as text ("" where the row has none)."""
        afs, raw = self.af, self._addr  # type: ignore[attr-defined]
        return [format_addr(af, raw[i * _ADDR_LEN : (i + 1) * _ADDR_LEN]) for i, af in enumerate(afs)]


class ServiceRows(_Rows):
    """The virtual services of a dump, column by column. A service's destinations are the
    destination rows dest_first .. dest_first + dest_count - 1."""

    __slots__ = ("_sched",)

    af = _u32_column(lib.IPVS_SVC_AF)
    protocol = _u32_column(lib.IPVS_SVC_PROTOCOL)
    port = _u32_column(lib.IPVS_SVC_PORT)
    fwmark = _u32_column(lib.IPVS_SVC_FWMARK)
    flags = _u32_column(lib.IPVS_SVC_FLAGS)
    timeout = _u32_column(lib.IPVS_SVC_TIMEOUT)
    netmask = _u32_column(lib.IPVS_SVC_NETMASK)
    dest_first = _u32_column(lib.IPVS_SVC_DEST_FIRST)
    dest_count = _u32_column(lib.IPVS_SVC_DEST_COUNT)

    def __init__(self, count: int, u32: Any, stats: Any, addr: bytes, sched: bytes) -> None:
        super().__init__(count, _SVC_NCOLS, u32, stats, addr)
        self._sched = sched

    def schedulers(self) -> list[str]:
        raw = self._sched
        return [
            raw[i * _NAME_LEN : (i + 1) * _NAME_LEN].split(b"\0", 1)[0].decode("ascii", "replace")
            for i in range(self.count)
        ]

    def ids(self) -> list[ServiceId]:
        """What tells each service apart: a fwmark service by (af, fwmark), any other by
        (af, protocol, address, port); the address is "" for fwmark services."""
        addrs = self.addresses()
        return [
            ServiceId(af, fw, proto, "" if fw else addr, port)
            for af, fw, proto, addr, port in zip(self.af, self.fwmark, self.protocol, addrs, self.port)
        ]

    def shape(self) -> bytes:
        """Everything about the services that series labels depend on, packed."""
        return (
            self.packed("af", "protocol", "port", "fwmark", "flags", "dest_count") + self._addr + self._sched
        )


class DestinationRows(_Rows):
    """The real servers of a dump, column by column; `service` is the owning service's row."""

    __slots__ = ()

    service = _u32_column(lib.IPVS_DST_SVC)
    af = _u32_column(lib.IPVS_DST_AF)
    port = _u32_column(lib.IPVS_DST_PORT)
    fwd = _u32_column(lib.IPVS_DST_FWD)
    weight = _u32_column(lib.IPVS_DST_WEIGHT, signed=True)  # a signed int in the kernel
    u_threshold = _u32_column(lib.IPVS_DST_U_THRESH)
    l_threshold = _u32_column(lib.IPVS_DST_L_THRESH)
    active = _u32_column(lib.IPVS_DST_ACTIVE)
    inactive = _u32_column(lib.IPVS_DST_INACTIVE)
    persist = _u32_column(lib.IPVS_DST_PERSIST)

    def __init__(self, count: int, u32: Any, stats: Any, addr: bytes) -> None:
        super().__init__(count, _DST_NCOLS, u32, stats, addr)

    def shape(self) -> bytes:
        """Everything about the destinations that series labels depend on, packed."""
        return self.packed("service", "af", "port", "fwd") + self._addr


class ServiceId(NamedTuple):
    """A virtual service's identity in the kernel: a fwmark, or protocol, address and port."""

    af: int
    fwmark: int
    protocol: int
    address: str
    port: int


class Snapshot:
    """One dump of IPVS: `services` and `dests` as named columns (see ServiceRows and
    DestinationRows). Built from a live handle (tests build one from Python values with
    testing.build_snapshot())."""

    __slots__ = ("dests", "services", "stats64")

    def __init__(self, services: ServiceRows, dests: DestinationRows, stats64: bool = True) -> None:
        self.services, self.dests, self.stats64 = services, dests, stats64

    @classmethod
    def from_handle(cls, h: Any) -> Snapshot:
        ns, nd = h.n_svc, h.n_dst
        return cls(
            ServiceRows(
                ns,
                h.svc_u32,
                h.svc_stats,
                _copy(h.svc_addr, ns, _ADDR_LEN),
                _copy(h.svc_sched, ns, _NAME_LEN),
            ),
            DestinationRows(
                nd,
                h.dst_u32,
                h.dst_stats,
                _copy(h.dst_addr, nd, _ADDR_LEN),
            ),
            bool(h.stats64),
        )

    @property
    def n_svc(self) -> int:
        return self.services.count

    @property
    def n_dst(self) -> int:
        return self.dests.count

    def fwmarks(self) -> set[int]:
        return {f for f in self.services.fwmark if f}


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

    def _raise_if_lost(self, rc: int) -> None:
        if rc == -errno.ENOTRECOVERABLE:
            raise ThreadLost(
                f"could not return from {describe_namespace(self.path)} to the exporter's own "
                "network namespace; exiting"
            )

    def _open(self) -> None:
        out = ffi.new("struct ipvs_handle **")
        rc = lib.ipvs_open(os.fsencode(self.path), out)  # the path's own bytes
        self._raise_if_lost(rc)
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

    def _call(self, fn: Callable[..., int], *args: Any) -> None:
        self._ensure_open()
        rc = fn(self._h, *args)
        self._raise_if_lost(rc)  # ipvs_get_settings enters the namespace too
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

    def settings(self) -> Settings:
        """The namespace's timeouts, sync daemons and IPVS sysctls now. A query the kernel
        refuses or a setting that cannot be read is in Settings.problems; raises only when
        the socket failed."""
        with self._lock:
            self._call(lib.ipvs_get_settings)
            return settings_from(self._h, self.path)

    def __enter__(self) -> Handle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self._close()


def libnl_version() -> str:
    return str(ffi.string(lib.ipvs_libnl_version()).decode())
