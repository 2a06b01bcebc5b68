#!/usr/bin/env python3
"""Capture the kernel's real IPVS generic-netlink replies as fuzzer seeds.

Run as root where IPVS is configured (inside the project's VM: fuzz/capture-vm.sh sets
up the services). Talks to the kernel with a raw AF_NETLINK socket - no libnl, no shim -
so the seeds are exactly what the kernel sends:

  1. CTRL_CMD_GETFAMILY "IPVS" -> the family id;
  2. IPVS_CMD_GET_SERVICE dump  -> one message per service;
  3. IPVS_CMD_GET_DEST dump for each service -> one message per destination.

Writes, in OUTDIR, files in fuzz/fuzz_parse.c's input format:
  svc-<name>.bin        0x00 + one service message
  dst-<name>-<i>.bin    0x01 + one destination message
  set-<name>.bin        0x80 + records: the service, then its destinations
  dump-all-x<P>.bin     0x80|(P-1) + records of the whole dump, fed P times (array growth)
and OUTDIR/manifest.json: what this script decoded from each message on its own (used by
tests/fuzz/test_parse_corpus.py to check the shim's rows).

    python3 fuzz/capture.py OUTDIR
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys

NETLINK_GENERIC = 16
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
GENL_ID_CTRL, CTRL_CMD_GETFAMILY, CTRL_ATTR_FAMILY_ID, CTRL_ATTR_FAMILY_NAME = 0x10, 3, 1, 2
IPVS_CMD_GET_SERVICE, IPVS_CMD_GET_DEST = 4, 8
IPVS_CMD_ATTR_SERVICE, IPVS_CMD_ATTR_DEST = 1, 2
SVC = {
    1: "af",
    2: "protocol",
    3: "addr",
    4: "port",
    5: "fwmark",
    6: "sched",
    7: "flags",
    8: "timeout",
    9: "netmask",
    10: "stats",
    11: "pe",
    12: "stats64",
}
DST = {
    1: "addr",
    2: "port",
    3: "fwd",
    4: "weight",
    5: "u_thresh",
    6: "l_thresh",
    7: "active",
    8: "inactive",
    9: "persist",
    10: "stats",
    11: "af",
    12: "stats64",
    13: "tun_type",
    14: "tun_port",
    15: "tun_flags",
}
STATS = ["conns", "inpkts", "outpkts", "inbytes", "outbytes", "cps", "inpps", "outpps", "inbps", "outbps"]
PROTO = {0: "fwm", 6: "tcp", 17: "udp", 132: "sctp"}


def align(n: int) -> int:
    return (n + 3) & ~3


def attr(t: int, payload: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(payload), t) + payload + b"\0" * (align(len(payload)) - len(payload))


def attrs(buf: bytes) -> list[tuple[int, bytes]]:
    out, off = [], 0
    while off + 4 <= len(buf):
        n, t = struct.unpack_from("=HH", buf, off)
        if n < 4 or off + n > len(buf):
            break
        out.append((t & 0x3FFF, buf[off + 4 : off + n]))
        off += align(n)
    return out


class Genl:
    def __init__(self):
        self.sk = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
        self.sk.bind((0, 0))
        self.seq = 1

    def request(self, family: int, cmd: int, flags: int, payload: bytes = b"") -> list[bytes]:
        """Send one request; return every reply message (raw, header included) until
        DONE (dumps) or the ACK/error (plain requests)."""
        self.seq += 1
        body = struct.pack("=BBH", cmd, 1, 0) + payload
        self.sk.send(struct.pack("=IHHII", 16 + len(body), family, NLM_F_REQUEST | flags, self.seq, 0) + body)
        replies = []
        while True:
            data = self.sk.recv(1 << 20)
            off = 0
            while off + 16 <= len(data):
                n, typ, _flags, seq, _pid = struct.unpack_from("=IHHII", data, off)
                msg = data[off : off + n]
                off += align(n)
                if seq != self.seq:
                    continue
                if typ == NLMSG_DONE:
                    return replies
                if typ == NLMSG_ERROR:
                    err = struct.unpack_from("=i", msg, 16)[0]
                    if err:
                        raise OSError(-err, f"netlink request {cmd} failed: {os.strerror(-err)}")
                    return replies
                replies.append(msg)

    def family(self, name: str) -> int:
        (msg,) = self.request(
            GENL_ID_CTRL, CTRL_CMD_GETFAMILY, NLM_F_ACK, attr(CTRL_ATTR_FAMILY_NAME, name.encode() + b"\0")
        )
        for t, v in attrs(msg[20:]):
            if t == CTRL_ATTR_FAMILY_ID:
                return struct.unpack("=H", v[:2])[0]
        raise OSError("no family id in the reply")


def nested(msg: bytes, cmd_attr: int) -> list[tuple[int, bytes]]:
    for t, v in attrs(msg[20:]):
        if t == cmd_attr:
            return attrs(v)
    raise ValueError("message without the expected nested attribute")


def decode(kind: str, msg: bytes) -> dict:
    names = SVC if kind == "svc" else DST
    a = {
        names.get(t, str(t)): v
        for t, v in nested(msg, IPVS_CMD_ATTR_SERVICE if kind == "svc" else IPVS_CMD_ATTR_DEST)
    }
    out: dict = {}
    for k in ("af", "protocol"):
        if k in a:
            out[k] = struct.unpack("=H", a[k][:2])[0]
    if "port" in a:
        out["port"] = struct.unpack("!H", a["port"][:2])[0]
    for k in (
        "fwmark",
        "timeout",
        "netmask",
        "fwd",
        "weight",
        "u_thresh",
        "l_thresh",
        "active",
        "inactive",
        "persist",
    ):
        if k in a:
            out[k] = struct.unpack("=I", a[k][:4])[0]
    if "weight" in out and out["weight"] >= 1 << 31:
        out["weight"] -= 1 << 32
    if "fwd" in out:
        out["fwd"] &= 7
    if "flags" in a:
        out["flags"] = struct.unpack("=I", a["flags"][:4])[0]
    if "sched" in a:
        out["sched"] = a["sched"].split(b"\0", 1)[0].decode()
    if "addr" in a:
        raw = a["addr"]
        fam = out.get("af", socket.AF_INET)
        out["addr"] = (
            socket.inet_ntop(socket.AF_INET6, raw[:16])
            if fam == socket.AF_INET6
            else socket.inet_ntop(socket.AF_INET, raw[:4])
        )
    block = a.get("stats64") or a.get("stats")
    if block is not None:
        st = [0] * 10
        for t, v in attrs(block):
            if 1 <= t <= 10 and len(v) in (4, 8):
                st[t - 1] = struct.unpack("=Q" if len(v) == 8 else "=I", v)[0]
        out["stats"] = dict(zip(STATS, st))
    return out


def svc_name(d: dict) -> str:
    fam = "6" if d["af"] == socket.AF_INET6 else "4"
    if d.get("fwmark"):
        return f"fwm{fam}-{d['fwmark']}"
    addr = d["addr"].replace(":", "_").replace(".", "_")
    return f"{PROTO.get(d.get('protocol', 0), d.get('protocol'))}{fam}-{addr}-{d['port']}"


def dest_request(msg: bytes) -> bytes:
    """The GET_DEST payload naming the service of a GET_SERVICE reply, as ipvsadm does."""
    keep = (1, 2, 3, 4, 5)  # af, protocol, addr, port, fwmark
    inner = b"".join(attr(t, v) for t, v in nested(msg, IPVS_CMD_ATTR_SERVICE) if t in keep)
    return attr(IPVS_CMD_ATTR_SERVICE, inner)


def records(items: list[tuple[int, bytes]]) -> bytes:
    return b"".join(struct.pack("<BH", kind, len(m)) + m for kind, m in items)


def main(outdir: str) -> int:
    os.makedirs(outdir, exist_ok=True)
    g = Genl()
    fam = g.family("IPVS")
    manifest: dict = {}
    everything: list[tuple[int, bytes]] = []
    n_dst = 0
    for smsg in g.request(fam, IPVS_CMD_GET_SERVICE, NLM_F_DUMP):
        sd = decode("svc", smsg)
        name = svc_name(sd)
        dmsgs = g.request(fam, IPVS_CMD_GET_DEST, NLM_F_DUMP, dest_request(smsg))
        with open(os.path.join(outdir, f"svc-{name}.bin"), "wb") as f:
            f.write(b"\x00" + smsg)
        manifest[f"svc-{name}.bin"] = {"kind": "service", "service": sd}
        dds = []
        for i, dmsg in enumerate(dmsgs):
            dd = decode("dst", dmsg)
            dds.append(dd)
            with open(os.path.join(outdir, f"dst-{name}-{i}.bin"), "wb") as f:
                f.write(b"\x01" + dmsg)
            manifest[f"dst-{name}-{i}.bin"] = {"kind": "destination", "destination": dd}
        items = [(0, smsg)] + [(1, m) for m in dmsgs]
        with open(os.path.join(outdir, f"set-{name}.bin"), "wb") as f:
            f.write(b"\x80" + records(items))
        manifest[f"set-{name}.bin"] = {"kind": "set", "passes": 1, "services": [dict(sd, destinations=dds)]}
        everything += items
        n_dst += len(dmsgs)
    n_svc = sum(1 for k, _ in everything if k == 0)
    # Enough passes that the rows outgrow the shim's first capacities (64 / 256).
    passes = max(2, min(128, max(65 // max(n_svc, 1), 257 // max(n_dst, 1)) + 1))
    name = f"dump-all-x{passes}.bin"
    with open(os.path.join(outdir, name), "wb") as f:
        f.write(bytes([0x80 | (passes - 1)]) + records(everything))
    manifest[name] = {"kind": "dump", "passes": passes, "n_svc": n_svc, "n_dst": n_dst}
    with open(os.path.join(outdir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"capture: {n_svc} services, {n_dst} destinations, {len(manifest)} files in {outdir}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1]))
