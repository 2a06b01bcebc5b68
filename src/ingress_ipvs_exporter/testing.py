"""Helpers for tests and bench tools: IPVS services as Python values and snapshots built from
them, a rendering or a body as one value, a swarm cache's background refresh waited for and
its error read. Production code never imports this module (tests/unit/test_layers.py checks).

They live here, not as methods of the classes they serve, so that what the exporter runs is
only what it needs. In exchange they reach into those classes' private parts: the rows of a
`Snapshot` (`_u32`, `_stats`, `_addr`, `_sched`), the swarm caches' `_cache`, and
`Refreshing`'s `_idle` and `error`. `build_snapshot` also knows the shim's row layout
(`lib.IPVS_*`): with ipvs.py, the only module that does.
"""

from __future__ import annotations

import socket
from array import array
from collections.abc import Sequence
from typing import Any, NamedTuple, Union

from ._ipvs_cffi import lib
from .ipvs import DestinationRows, ServiceRows, Snapshot, format_addr
from .logs import one_line
from .render.exposition import MetricsApp, Renderer, View
from .render.metrics import Options, Ports
from .speedups import transposed
from .swarm.marks import SwarmMarks
from .swarm.names import DockerServices
from .swarm.refresh import Refreshing

_SVC_NCOLS: int = lib.IPVS_SVC_NCOLS
_DST_NCOLS: int = lib.IPVS_DST_NCOLS
_NSTATS: int = lib.IPVS_NSTATS
_ADDR_LEN: int = lib.IPVS_ADDR_LEN
_NAME_LEN: int = lib.IPVS_NAME_LEN


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


def _pack_addr(af: int, address: str) -> bytes:
    """An address in the shim's 16-byte slot (all zeros for none)."""
    return socket.inet_pton(af, address).ljust(_ADDR_LEN, b"\0") if address else bytes(_ADDR_LEN)


def build_snapshot(services: Sequence[Service]) -> Snapshot:
    """The snapshot the shim would produce for these services, their destinations in order."""
    svc_u32, dst_u32 = array("I"), array("I")
    svc_stats, dst_stats = array("Q"), array("Q")
    svc_addr, dst_addr, sched = bytearray(), bytearray(), bytearray()
    for i, s in enumerate(services):
        row = [0] * _SVC_NCOLS
        row[lib.IPVS_SVC_AF], row[lib.IPVS_SVC_PROTOCOL] = s.af, s.protocol
        row[lib.IPVS_SVC_PORT], row[lib.IPVS_SVC_FWMARK] = s.port, s.fwmark
        row[lib.IPVS_SVC_FLAGS], row[lib.IPVS_SVC_TIMEOUT] = s.flags, s.timeout
        row[lib.IPVS_SVC_NETMASK] = s.netmask
        row[lib.IPVS_SVC_DEST_FIRST] = len(dst_u32) // _DST_NCOLS
        row[lib.IPVS_SVC_DEST_COUNT] = len(s.destinations)
        svc_u32.extend(row)
        svc_stats.extend(s.stats)
        svc_addr += _pack_addr(s.af, s.address)
        sched += s.scheduler.encode()[: _NAME_LEN - 1].ljust(_NAME_LEN, b"\0")
        for d in s.destinations:
            r = [0] * _DST_NCOLS
            r[lib.IPVS_DST_SVC], r[lib.IPVS_DST_AF], r[lib.IPVS_DST_PORT] = i, d.af, d.port
            r[lib.IPVS_DST_FWD], r[lib.IPVS_DST_WEIGHT] = d.fwd_method, d.weight & 0xFFFFFFFF
            r[lib.IPVS_DST_U_THRESH], r[lib.IPVS_DST_L_THRESH] = d.u_threshold, d.l_threshold
            r[lib.IPVS_DST_ACTIVE], r[lib.IPVS_DST_INACTIVE] = d.active_conns, d.inactive_conns
            r[lib.IPVS_DST_PERSIST] = d.persist_conns
            dst_u32.extend(r)
            dst_stats.extend(d.stats)
            dst_addr += _pack_addr(d.af, d.address)
    return Snapshot(
        ServiceRows(len(services), svc_u32.tobytes(), svc_stats.tobytes(), bytes(svc_addr), bytes(sched)),
        DestinationRows(len(dst_u32) // _DST_NCOLS, dst_u32.tobytes(), dst_stats.tobytes(), bytes(dst_addr)),
    )


Rows = Union[ServiceRows, DestinationRows]


def _stats(rows: Rows, i: int) -> Stats:
    return Stats(*rows._stats[i :: rows.count])


def destination(snap: Snapshot, j: int) -> Destination:
    """Destination row j as Python values."""
    d = snap.dests
    return Destination(
        af=d.af[j],
        address=format_addr(d.af[j], d._addr[j * _ADDR_LEN : (j + 1) * _ADDR_LEN]),
        port=d.port[j],
        fwd_method=d.fwd[j],
        weight=d.weight[j],
        u_threshold=d.u_threshold[j],
        l_threshold=d.l_threshold[j],
        active_conns=d.active[j],
        inactive_conns=d.inactive[j],
        persist_conns=d.persist[j],
        stats=_stats(d, j),
    )


def service(snap: Snapshot, i: int) -> Service:
    """Service row i with its destinations as Python values: what build_snapshot() takes."""
    s = snap.services
    sid = s.ids()[i]
    first = s.dest_first[i]
    return Service(
        af=sid.af,
        protocol=sid.protocol,
        address=sid.address,
        port=sid.port,
        fwmark=sid.fwmark,
        scheduler=s.schedulers()[i],
        flags=s.flags[i],
        timeout=s.timeout[i],
        netmask=s.netmask[i],
        stats=_stats(s, i),
        destinations=tuple(destination(snap, j) for j in range(first, first + s.dest_count[i])),
    )


def as_services(snap: Snapshot) -> list[Service]:
    """Every service of the snapshot, as service() gives it."""
    return [service(snap, i) for i in range(snap.n_svc)]


def blocks(rows: Rows) -> tuple[bytes, bytes]:
    """The uint32 and stats blocks row by row, as the rows' constructor takes them (to make
    rows with other values, or another version's rows of the same layout)."""
    n, u32, stats = rows.count, rows._u32, rows._stats
    ncols = _SVC_NCOLS if isinstance(rows, ServiceRows) else _DST_NCOLS
    return bytes(transposed(u32, ncols, n, 4)), bytes(transposed(stats, _NSTATS, n, 8))


def render(
    renderer: Renderer,
    snap: Snapshot,
    namespace: str,
    ports: Ports,
    options: Options,
    openmetrics: bool = False,
) -> str:
    """The IPVS families of one namespace's snapshot as one string."""
    return b"".join(renderer.chunks([View(namespace, snap, ports)], options, openmetrics)).decode()


def body(app: MetricsApp, accept: str) -> tuple[bytes, str]:
    """A whole plain telemetry body for this Accept header, and its content type."""
    chunks, content_type = app.stream(accept)
    return b"".join(chunks), content_type


Cache = Union[Refreshing[Any, Any], SwarmMarks, DockerServices]


def _refreshing(cache: Cache) -> Refreshing[Any, Any]:
    return cache if isinstance(cache, Refreshing) else cache._cache


def wait_idle(cache: Cache, timeout: float) -> bool:
    """Wait until no background load of the cache runs; False if one still runs after timeout."""
    return _refreshing(cache)._idle.wait(timeout)


def last_error(cache: Cache) -> str | None:
    """Why the cache's last load failed, in one line; None after a load that worked."""
    error = _refreshing(cache).error
    return None if error is None else one_line(str(error) or type(error).__name__, 400)
