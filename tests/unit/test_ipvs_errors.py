"""ipvs.error_for: each errno the shim returns becomes the error a user can act on.

Which errno each missing capability gives was measured against the real kernel by
tests/kernel/test_capabilities_kernel.py (the exporter as nobody, one capability taken away):
  no CAP_DAC_READ_SEARCH  open() of /var/run/docker/... -> EACCES
  no CAP_SYS_ADMIN        setns()                       -> EPERM while entering
  no CAP_NET_ADMIN        IPVS genetlink commands       -> EPERM on the request
"""

import errno
import os
import socket
import stat
import threading

import pytest

from ingress_ipvs_exporter.ipvs import (
    DumpFailed,
    Handle,
    IPVSUnavailable,
    NamespaceNotFound,
    NotANamespace,
    NotPermitted,
    error_for,
)

CAPS = ("CAP_SYS_ADMIN", "CAP_NET_ADMIN", "CAP_DAC_READ_SEARCH")


@pytest.mark.parametrize(
    "err, entering, cap",
    [
        (errno.EACCES, True, "CAP_DAC_READ_SEARCH"),
        (errno.EPERM, True, "CAP_SYS_ADMIN"),
        (errno.EPERM, False, "CAP_NET_ADMIN"),
    ],
)
def test_permission_errors_name_the_one_missing_capability(err, entering, cap):
    e = error_for(err, "/var/run/docker/netns/ingress_sbox", entering=entering)
    assert isinstance(e, NotPermitted) and e.reason == "permission" and e.errno == err
    assert e.strerror.startswith(
        "not permitted to read IPVS in network namespace /var/run/docker/netns/ingress_sbox"
    )
    assert [c for c in CAPS if c in e.strerror] == [cap], e.strerror
    assert "run it as root" in e.strerror and "\n" not in e.strerror


def test_missing_namespace():
    e = error_for(errno.ENOENT, "/no/such/ns", entering=True)
    assert isinstance(e, NamespaceNotFound) and e.reason == "namespace_missing"
    assert "/no/such/ns" in e.strerror and "--namespace-path" in e.strerror


def _open_error(path, timeout=10.0):
    """The error the real shim's ipvs_open gives for path (nothing here needs IPVS: every
    check runs before the netlink socket); fails instead of hanging when open() blocks."""
    result = []

    def run():
        try:
            Handle(str(path)).snapshot()
        except Exception as exc:  # the test looks at what it was
            result.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        if stat.S_ISFIFO(os.stat(path).st_mode):  # free the stuck open() for the next tests
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail(f"opening {path} as a namespace still blocks after {timeout:g}s")
    (exc,) = result
    return exc


def test_empty_file_is_a_namespace_not_mounted_yet(tmp_path):
    """Docker creates an empty file at the netns path, then bind-mounts the namespace on it:
    in between, setns() refuses it. That is 'not there yet', not a wrong path."""
    placeholder = tmp_path / "ingress_sbox"
    placeholder.write_text("")
    e = _open_error(placeholder)
    assert isinstance(e, NamespaceNotFound) and e.reason == "namespace_missing"
    assert str(placeholder) in e.strerror and "not yet a network namespace" in e.strerror


def _unix_socket(path):
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    return sock  # kept open by the caller's fixture list


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda p: p.write_text("not a namespace\n"), id="file-with-content"),
        pytest.param(lambda p: p.mkdir(), id="directory"),
        pytest.param(lambda p: os.mkfifo(p), id="fifo"),  # open() would wait for a writer
        pytest.param(_unix_socket, id="socket"),  # open() says ENXIO
        pytest.param(lambda p: p.symlink_to("/dev/null"), id="device"),
        pytest.param(lambda p: p.symlink_to(f"/proc/{os.getpid()}/ns/mnt"), id="mnt-namespace"),
        pytest.param(lambda p: p.symlink_to(f"/proc/{os.getpid()}/ns/pid"), id="pid-namespace"),
    ],
)
def test_anything_else_that_is_not_a_namespace_is_a_usage_error(tmp_path, make):
    """Whatever the path is, opening it returns at once, and only an empty regular file that is
    no namespace means "wait": a namespace of another type (also an empty regular file to
    stat) is a wrong --namespace-path, which the exporter reports at start-up with exit 2."""
    path = tmp_path / "wrong"
    keep = make(path)
    try:
        e = _open_error(path)
    finally:
        if isinstance(keep, socket.socket):
            keep.close()
    assert isinstance(e, NotANamespace) and e.reason == "not_a_namespace", e
    assert f"{path} is not a network namespace" in e.strerror and "--namespace-path" in e.strerror


def test_no_ipvs_and_other_errors():
    e = error_for(errno.EPROTONOSUPPORT, "")
    assert isinstance(e, IPVSUnavailable) and "the current network namespace" in e.strerror
    assert "modprobe ip_vs" in e.strerror
    e = error_for(errno.ENOBUFS, "/ns")
    assert isinstance(e, DumpFailed) and e.reason == "netlink" and "/ns" in e.strerror
