"""The binding's dump of a namespace large enough to be read on two sockets, against ipvsadm.

From SPLIT_MIN_SERVICES services on, the shim asks for the second half's real servers on a
second socket in a second thread, then appends that half's rows to the first's. The rows
must be what one socket would have read: every service once, each real server under its
own service with its own values, the rows of each service's real servers where it says.
"""

from __future__ import annotations

import contextlib
import os

import pytest
from ipvs_testlib import ipvsadm, sh

from ingress_ipvs_exporter.ipvs import Handle

pytestmark = pytest.mark.kernel

N = 1201  # services: past the shim's SPLIT_MIN_SERVICES (512), an odd count (halves differ)
PROTOCOLS = {6: "TCP", 17: "UDP", 132: "SCTP"}


def _rules() -> str:
    """Every third service a fwmark one, then TCP over IPv4, then UDP over IPv6; service i
    has i % 4 real servers (none for some, in both halves), weights that tell them apart."""
    out = []
    for i in range(N):
        if i % 3 == 0:
            svc, dest = f"-f {1000 + i}", "198.51.100.{}:{}"
        elif i % 3 == 1:
            svc, dest = f"-t 10.50.{i // 250}.{i % 250 + 1}:80", "198.51.100.{}:{}"
        else:
            svc, dest = f"-u [2001:db8::{i:x}]:53", "[2001:db8:1::{}]:{}"
        out.append(f"-A {svc} -s wlc")
        out += [f"-a {svc} -r {dest.format(j + 1, 8000 + j)} -m -w {(i + j) % 7 + 1}" for j in range(i % 4)]
    return "\n".join(out) + "\n"


def _socket_fds() -> int:
    """This process's open sockets (listdir's own descriptor is gone when it is looked at)."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):
            n += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    return n


def _key(af: int, fwmark: int, protocol: int, address: str, port: int) -> str:
    """The service as ipvs_testlib.ipvsadm() keys it."""
    if fwmark:
        return f"FWM {fwmark}" + (" IPv6" if af == 10 else "")
    return f"{PROTOCOLS[protocol]} " + (f"[{address}]:{port}" if af == 10 else f"{address}:{port}")


def test_a_dump_read_on_two_sockets_equals_ipvsadm(netns):
    name, path = netns
    sh("ipvsadm", "-R", ns=name, input=_rules())
    adm = ipvsadm(path)
    assert len(adm) == N
    before = _socket_fds()
    with Handle(path) as h:
        h.info()  # opens the handle
        assert _socket_fds() == before + 1, "a handle opens one socket"
        snap = h.snapshot()
        assert _socket_fds() == before + 2, "a large dump adds the second half's socket"
        again = h.snapshot()
        assert _socket_fds() == before + 2, "and keeps it"
    assert _socket_fds() == before
    assert (again.services.shape(), again.dests.shape()) == (snap.services.shape(), snap.dests.shape())
    s, d = snap.services, snap.dests
    keys = [_key(i.af, i.fwmark, i.protocol, i.address, i.port) for i in s.ids()]
    assert len(set(keys)) == N and set(keys) == set(adm), "every service, once"
    dest_addrs = d.addresses()
    assert d.count == sum(len(a.dests) for a in adm.values())
    for i, key in enumerate(keys):
        first, count = s.dest_first[i], s.dest_count[i]
        assert first == (s.dest_first[i - 1] + s.dest_count[i - 1] if i else 0), key
        got = {(dest_addrs[j], d.port[j]): d.weight[j] for j in range(first, first + count)}
        assert got == {a: x.weight for a, x in adm[key].dests.items()}, key
        assert all(d.service[j] == i for j in range(first, first + count)), key
