"""System calls of the netlink shim that fail, and what the exporter makes of it.

- What setting up the socket returns is checked: a close-on-exec flag or a receive timeout
  that did not take is an error of ipvs_open, not a socket that could block a dump (with the
  binding's lock held) for as long as the kernel stays silent.
- A thread the shim cannot setns() back to the exporter's own namespace ends the process:
  one critical line and exit 70, whether at start-up or in a scrape's thread.

The calls are made to fail by an LD_PRELOAD interposer, in a process of its own, armed
(through ctypes, or by a file appearing) just before the call: the shim's calls resolve to
it, the rest of the process never meets a failing call. The real shim, the real libnl;
nothing here needs IPVS: every call comes before the IPVS family is resolved, and the
namespace entered is the exporter's own.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from ipvs_testlib import exporter_command, exporter_log, running_exporter, unavailable

INTERPOSER = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <sched.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

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

/* Once the file $SETNS_FAIL_FILE exists, every second setns() of a thread fails: the shim's
 * way back out of the namespace it entered. */
int setns(int fd, int type)
{
    static int (*real)(int, int);
    static __thread int calls;
    const char *file = getenv("SETNS_FAIL_FILE");
    if (file && access(file, F_OK) == 0 && ++calls % 2 == 0) {
        errno = EINVAL;
        return -1;
    }
    if (!real)
        real = (int (*)(int, int))dlsym(RTLD_NEXT, "setns");
    return real(fd, type);
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


LOST = "could not return from network namespace /proc/self/ns/net to the exporter's own network namespace; exiting"


def _said_once(log: str) -> None:
    """The exit's one line, at the highest level (go-kit's "error"), and no traceback."""
    lines = [line for line in log.splitlines() if "could not return from" in line]
    assert len(lines) == 1 and LOST in lines[0] and "level=error" in lines[0], log
    assert "Traceback" not in log, log


@pytest.fixture
def as_root():
    if os.geteuid() != 0:
        unavailable("setns() needs CAP_SYS_ADMIN: run as root")


def test_a_thread_lost_at_start_up_exits_70_with_one_line(interposer, as_root, tmp_path):
    armed = tmp_path / "armed"
    armed.touch()
    res = subprocess.run(
        [exporter_command(), "--namespace-path", "/proc/self/ns/net", "--listen-address", "127.0.0.1:0"],
        env={**os.environ, "LD_PRELOAD": str(interposer), "SETNS_FAIL_FILE": str(armed)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 70, res
    _said_once(res.stderr)


def test_a_thread_lost_in_a_scrape_exits_70_with_one_line(interposer, as_root, tmp_path):
    armed = tmp_path / "armed"
    env = {"LD_PRELOAD": str(interposer), "SETNS_FAIL_FILE": str(armed)}
    with running_exporter("--namespace-path", "/proc/self/ns/net", env=env) as (url, proc):
        armed.touch()
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            urllib.request.urlopen(url, timeout=60).read()
        assert proc.wait(timeout=60) == 70
        with open(exporter_log(url)) as f:
            _said_once(f.read())
