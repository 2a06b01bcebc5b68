"""ipvs.error_for: each errno the shim returns becomes the error a user can act on.

Which errno each missing capability gives was measured against the real kernel by
tests/kernel/test_capabilities_kernel.py (the exporter as nobody, one capability taken away):
  no CAP_DAC_READ_SEARCH  open() of /var/run/docker/... -> EACCES
  no CAP_SYS_ADMIN        setns()                       -> EPERM while entering
  no CAP_NET_ADMIN        IPVS genetlink commands       -> EPERM on the request
"""

import errno

import pytest

from ingress_ipvs_exporter.ipvs import (
    DumpFailed,
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


def test_empty_file_is_a_namespace_not_mounted_yet(tmp_path):
    """Docker creates an empty file at the netns path, then bind-mounts the namespace on it:
    in between, setns() says EINVAL. That is 'not there yet', not a wrong path."""
    placeholder = tmp_path / "ingress_sbox"
    placeholder.write_text("")
    e = error_for(errno.EINVAL, str(placeholder), entering=True)
    assert isinstance(e, NamespaceNotFound) and e.reason == "namespace_missing"
    assert str(placeholder) in e.strerror and "not yet a network namespace" in e.strerror


@pytest.mark.parametrize(
    "make",
    [
        lambda p: p.write_text("not a namespace\n"),  # a file with content
        lambda p: p.mkdir(),  # a directory
    ],
)
def test_anything_else_that_is_not_a_namespace_is_a_usage_error(tmp_path, make):
    path = tmp_path / "wrong"
    make(path)
    e = error_for(errno.EINVAL, str(path), entering=True)
    assert isinstance(e, NotANamespace) and e.reason == "not_a_namespace"
    assert "is not a network namespace" in e.strerror and "--namespace-path" in e.strerror


def test_no_ipvs_and_other_errors():
    e = error_for(errno.EPROTONOSUPPORT, "")
    assert isinstance(e, IPVSUnavailable) and "the current network namespace" in e.strerror
    assert "modprobe ip_vs" in e.strerror
    e = error_for(errno.ENOBUFS, "/ns")
    assert isinstance(e, DumpFailed) and e.reason == "netlink" and "/ns" in e.strerror
