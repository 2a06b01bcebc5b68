"""The netlink shim checks what setting up its socket returns: a close-on-exec flag or a receive
timeout that did not take is an error of ipvs_open, not a socket that could block a dump (with
the binding's lock held) for as long as the kernel stays silent.

The system calls are made to fail by an LD_PRELOAD interposer armed (through ctypes) just
before ipvs_open, in a Python of its own: the shim's calls resolve to it, the rest of the
process never meets a failing call. The real shim, the real libnl; nothing here needs IPVS,
since both calls come before the IPVS family is resolved.
"""

from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path

import pytest

INTERPOSER = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <sys/socket.h>

static int armed; /* 1: fcntl(F_SETFD) fails; 2: setsockopt(SO_RCVTIMEO) fails */

void interposer_arm(int which) { armed = which; }

int fcntl(int fd, int cmd, ...)
{
    static int (*real)(int, int, ...);
    va_list ap;
    long arg;
    va_start(ap, cmd);
    arg = va_arg(ap, long);
    va_end(ap);
    if (armed == 1 && cmd == F_SETFD) {
        errno = ENOLCK;
        return -1;
    }
    if (!real)
        real = (int (*)(int, int, ...))dlsym(RTLD_NEXT, "fcntl");
    return real(fd, cmd, arg);
}

int setsockopt(int fd, int level, int name, const void *value, socklen_t len)
{
    static int (*real)(int, int, int, const void *, socklen_t);
    if (armed == 2 && level == SOL_SOCKET && name == SO_RCVTIMEO) {
        errno = ENOPROTOOPT;
        return -1;
    }
    if (!real)
        real = (int (*)(int, int, int, const void *, socklen_t))dlsym(RTLD_NEXT, "setsockopt");
    return real(fd, level, name, value, len);
}
"""

# ipvs_open on the caller's own namespace with one call armed to fail; prints its return and
# whether a descriptor was left behind
PROBE = """
import ctypes, os, sys
from ingress_ipvs_exporter._ipvs_cffi import ffi, lib
before = set(os.listdir("/proc/self/fd"))
ctypes.CDLL(None).interposer_arm(int(sys.argv[1]))
out = ffi.new("struct ipvs_handle **")
rc = lib.ipvs_open(b"", out)
ctypes.CDLL(None).interposer_arm(0)
if rc == 0:
    lib.ipvs_close(out[0])
print(rc, sorted(set(os.listdir("/proc/self/fd")) - before))
"""


@pytest.fixture(scope="module")
def interposer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("interposer")
    (d / "fail.c").write_text(INTERPOSER)
    res = subprocess.run(
        ["gcc", "-shared", "-fPIC", "-O1", "-o", d / "fail.so", d / "fail.c", "-ldl"],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    return d / "fail.so"


def _open_with(interposer: Path, which: int) -> tuple[int, str]:
    res = subprocess.run(
        [sys.executable, "-c", PROBE, str(which)],
        env={"LD_PRELOAD": str(interposer), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    rc, leaked = res.stdout.split(" ", 1)
    return int(rc), leaked.strip()


@pytest.mark.parametrize(
    "which, err",
    [(1, errno.ENOLCK), (2, errno.ENOPROTOOPT)],
    ids=["fcntl-cloexec", "setsockopt-rcvtimeo"],
)
def test_a_socket_option_that_did_not_take_fails_the_open(interposer, which, err):
    rc, leaked = _open_with(interposer, which)
    assert rc == -err, (
        f"ipvs_open returned {rc} ({errno.errorcode.get(-rc, rc)}), not -{errno.errorcode[err]}"
    )
    assert leaked == "[]", f"descriptors left open: {leaked}"


def test_unarmed_the_open_gets_past_both(interposer):
    # the same probe without a failure reaches the family lookup: 0 where ip_vs is loaded,
    # -EPROTONOSUPPORT where it is not; never one of the injected errors
    rc, leaked = _open_with(interposer, 0)
    assert rc in (0, -errno.EPROTONOSUPPORT), rc
    assert leaked == "[]", leaked
