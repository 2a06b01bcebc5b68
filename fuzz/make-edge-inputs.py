#!/usr/bin/env python3
"""Write the hand-made hostile inputs tests/fuzz/regressions/edge-*.bin (fuzz_parse.c's
input format): framing and attribute edge cases that real kernels never send. They seed
the fuzzer and tests/fuzz/test_parse_corpus.py pins what the shim does with each.

    python3 fuzz/make-edge-inputs.py      (from the repository root)
"""

import os
import struct

out = "tests/fuzz/regressions"  # relative to the repository root


def A(t, p):
    return struct.pack("=HH", 4 + len(p), t) + p + b"\0" * ((-len(p)) % 4)


def msg(attrs, nlmsg_len=None, cmd=1):
    body = struct.pack("=BBH", cmd, 1, 0) + attrs
    n = 16 + len(body) if nlmsg_len is None else nlmsg_len
    return struct.pack("=IHHII", n, 0x1A, 2, 1, 0) + body


def rec(kind, m):
    return struct.pack("<BH", kind, len(m)) + m


def daemon(state, ifname, sync_id):
    """A GET_DAEMON reply: one daemon, nested in IPVS_CMD_ATTR_DAEMON."""
    inner = A(1, struct.pack("=I", state)) + A(2, ifname) + A(3, struct.pack("=I", sync_id))
    return msg(A(3 | 0x8000, inner), cmd=16)


AF4 = A(1, struct.pack("=H", 2))
svc_min = msg(A(1, AF4))
dst_min = msg(A(2, b""), cmd=5)
real = open("tests/fuzz/corpus/svc-tcp4-192_0_2_10-80.bin", "rb").read()[1:]
files = {
    # header claims more than the buffer holds: must be refused before libnl sees it
    "edge-nlmsg-len-beyond-buffer.bin": b"\x00" + struct.pack("=I", len(real) + 64) + real[4:],
    # the service nest claims more bytes than the message has
    "edge-nested-len-overflow.bin": b"\x00" + msg(struct.pack("=HH", 200, 1) + AF4),
    # attribute lengths below the header size, zero-length and odd lengths
    "edge-attr-len-below-header.bin": b"\x00" + msg(struct.pack("=HH", 2, 1) + AF4),
    "edge-zero-and-odd-lengths.bin": b"\x00"
    + msg(
        A(
            1,
            AF4
            + A(2, b"")
            + A(3, b"\x01\x02\x03\x04\x05")
            + A(4, b"\x01")
            + A(5, b"")
            + A(7, b"\x01\x02\x03"),
        )
    ),
    # scheduler name of 20 bytes without a NUL (libnl rejects an unterminated NLA_STRING)
    "edge-sched-unterminated.bin": b"\x00" + msg(A(1, AF4 + A(6, b"x" * 20))),
    "edge-sched-long-terminated.bin": b"\x00" + msg(A(1, AF4 + A(6, b"y" * 40 + b"\0"))),
    # stats blocks with every width, type 0 and types past IPVS_NSTATS, and an empty block
    "edge-stats-odd-widths.bin": b"\x00"
    + msg(
        A(
            1,
            AF4
            + A(
                10,
                A(0, b"\1" * 8)
                + A(1, b"\2" * 4)
                + A(2, b"\3" * 8)
                + A(3, b"\4" * 3)
                + A(4, b"\5" * 12)
                + A(11, b"\6" * 8)
                + A(0x3FFF, b"\7" * 8),
            ),
        )
    ),
    # an empty 64-bit stats block beside a full 32-bit one: the 64-bit block wins (zeros)
    "edge-empty-stats64.bin": b"\x00" + msg(A(1, AF4 + A(10, A(1, b"\2" * 4)) + A(12, b""))),
    # a 16-byte IPv6 address on an IPv4 service and a 40-byte address
    "edge-oversized-address.bin": b"\x00" + msg(A(1, AF4 + A(3, b"\xaa" * 40))),
    # destinations before any service, then a service and more destinations
    "edge-dest-before-service.bin": b"\x80"
    + rec(1, dst_min)
    + rec(1, dst_min)
    + rec(0, svc_min)
    + rec(1, dst_min),
    # tiny messages, 70 passes: 70 services and 280 destinations (past both first capacities)
    "edge-tiny-growth-x70.bin": bytes([0x80 | 69])
    + rec(0, svc_min)
    + b"".join(rec(1, dst_min) for _ in range(4)),
    # a message that is only a netlink header, and one cut inside the genetlink header
    "edge-header-only.bin": b"\x00" + struct.pack("=IHHII", 16, 0x1A, 2, 1, 0),
    "edge-short-genl-header.bin": b"\x01" + struct.pack("=IHHII", 18, 0x1A, 2, 1, 0) + b"\x05\x01",
    # nested flag and byte-order flag set on the outer and inner types
    "edge-type-flag-bits.bin": b"\x00"
    + msg(struct.pack("=HH", 4 + 8, 1 | 0x8000) + struct.pack("=HH", 6, 1 | 0x4000) + b"\x02\x00\x00\x00"),
    # a GET_CONFIG reply (100 20 30) and GET_DAEMON replies: three daemons (the shim holds two;
    # the second's name is longer than its slot), one without a state, an unterminated name
    "edge-config.bin": b"\x02"
    + msg(A(4, struct.pack("=I", 100)) + A(5, struct.pack("=I", 20)) + A(6, struct.pack("=I", 30)), cmd=13),
    "edge-daemons-three.bin": b"\x80"
    + rec(3, daemon(1, b"eth0\0", 1))
    + rec(3, daemon(2, b"x" * 30 + b"\0", 2))
    + rec(3, daemon(1, b"eth1\0", 3)),
    "edge-daemon-without-state.bin": b"\x03"
    + msg(A(3 | 0x8000, A(2, b"eth0\0") + A(3, struct.pack("=I", 1))), cmd=16),
    "edge-daemon-ifname-unterminated.bin": b"\x03" + daemon(1, b"eth0eth0", 1),
}
for name, data in files.items():
    open(os.path.join(out, name), "wb").write(data)
print(f"wrote {len(files)} edge inputs to {out}")
