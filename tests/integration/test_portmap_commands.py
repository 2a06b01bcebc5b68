"""marks.read_mangle_rules running commands: fake iptables-*-save and nsenter scripts on the
system path it looks them up in (choosing backends, failures, time-outs, the path it trusts)."""

import os
import socket
import stat
import time

import pytest
from ipvs_testlib import LEGACY_SWARM, NFT_SWARM, fresh_portmap_warnings, portmap_warnings

from ingress_ipvs_exporter.swarm import marks
from ingress_ipvs_exporter.swarm.marks import (
    MarksError,
    PublishedPort,
    parse_marks,
    read_mangle_rules,
)

TCP = lambda port: PublishedPort("tcp", port)  # noqa: E731
UDP = lambda port: PublishedPort("udp", port)  # noqa: E731

# --- read_mangle_rules with fake iptables commands on PATH ---------------------------


def _fake(bindir, name, body):
    """Write an executable shell script named `name` into bindir."""
    path = bindir / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def _print(text):
    return "/bin/cat <<'EOF'\n" + text + "EOF"


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    fresh_portmap_warnings(monkeypatch)


_warnings = portmap_warnings


@pytest.fixture
def legacy_lists(tmp_path, monkeypatch):
    """Stand-ins for /proc/net/ip{,6}_tables_names, saying that a legacy mangle table exists."""
    lists = {family: tmp_path / f"{family}_names" for family in ("iptables", "ip6tables")}
    for path in lists.values():
        path.write_text("filter\nmangle\n")
    monkeypatch.setattr(marks, "_LEGACY_TABLE_LISTS", {family: str(p) for family, p in lists.items()})
    return lists


@pytest.fixture
def bindir(tmp_path, monkeypatch, legacy_lists):
    """An empty directory that is the whole system path the helpers are looked up in."""
    path = tmp_path / "bin"
    path.mkdir()
    monkeypatch.setattr(marks, "SYSTEM_PATH", str(path), raising=False)
    monkeypatch.setattr(marks, "_found", {}, raising=False)
    return path


def test_reads_every_backend_with_table_argument(bindir):
    _fake(bindir, "iptables-nft-save", '[ "$*" = "-t mangle" ] || exit 9\n' + _print(NFT_SWARM))
    _fake(bindir, "iptables-legacy-save", '[ "$*" = "-t mangle" ] || exit 9\n' + _print(LEGACY_SWARM))
    v6 = "*mangle\n-A PREROUTING -p udp --dport 9 -j MARK --set-mark 0x104\nCOMMIT\n"
    _fake(bindir, "ip6tables-nft-save", _print(v6))
    _fake(bindir, "iptables-save", "exit 7")  # not used when a backend-specific one exists
    ports = parse_marks(read_mangle_rules("")).ports
    assert ports[0x103] == [TCP(30005)] and ports[0x101] == [TCP(30000), UDP(30000)]
    assert ports[0x104] == [UDP(9)]


def test_falls_back_to_plain_iptables_save(bindir):
    _fake(bindir, "iptables-save", _print(LEGACY_SWARM))
    assert parse_marks(read_mangle_rules("")).ports[0x103] == [TCP(30005)]


def test_missing_table_is_not_an_error(bindir):
    _fake(
        bindir,
        "iptables-legacy-save",
        'echo "iptables-save v1.8.9 (legacy): Cannot initialize: Table does not exist '
        '(do you need to insmod?)" >&2; exit 1',
    )
    assert read_mangle_rules("") == ""


def test_one_failing_backend_is_not_an_error(bindir, caplog):
    _fake(bindir, "iptables-nft-save", "echo 'Failed to initialize nft: Protocol not supported' >&2; exit 1")
    _fake(bindir, "iptables-legacy-save", _print(LEGACY_SWARM))
    assert parse_marks(read_mangle_rules("")).ports[0x100] == [TCP(30002)]
    assert _warnings(caplog) == []  # a backend the kernel lacks is not the user's to fix


def test_a_backend_denied_its_capability_is_warned_once(bindir, caplog):
    """Legacy rules, no CAP_NET_RAW: iptables-nft-save answers, iptables-legacy-save is refused, so
    the ports published in legacy iptables lose their label: one warning that names the fix."""
    _fake(bindir, "iptables-nft-save", _print(NFT_SWARM))
    _fake(
        bindir,
        "iptables-legacy-save",
        "echo 'iptables-legacy-save v1.8.9 (legacy): Cannot initialize: "
        "Permission denied (you must be root)' >&2; exit 1",
    )
    for _ in range(3):
        assert parse_marks(read_mangle_rules("")).ports == parse_marks(NFT_SWARM).ports
    (said,) = _warnings(caplog)
    assert "iptables-legacy-save" in said and "empty port label" in said
    assert "CAP_NET_RAW" in said and "CAP_NET_ADMIN" in said and "CAP_SYS_ADMIN" not in said


def test_an_unreadable_legacy_table_list_is_warned_once(bindir, legacy_lists, caplog, tmp_path):
    """/proc/net/ip_tables_names is root's, 0440: without CAP_DAC_READ_SEARCH it cannot be opened.
    Legacy tables are then not read (reading could create one), and that is said once."""
    legacy_lists["iptables"].unlink()
    unopenable = socket.socket(socket.AF_UNIX)  # exists, but open() fails even for root
    unopenable.bind(str(legacy_lists["iptables"]))
    try:
        _fake(bindir, "iptables-nft-save", _print(NFT_SWARM))
        _fake(bindir, "iptables-legacy-save", "exit 9")  # must not run
        for _ in range(3):
            assert parse_marks(read_mangle_rules("")).ports == parse_marks(NFT_SWARM).ports
    finally:
        unopenable.close()
    (said,) = _warnings(caplog)
    assert str(legacy_lists["iptables"]) in said and "CAP_DAC_READ_SEARCH" in said
    assert str(legacy_lists["ip6tables"]) not in said  # that one was readable


def test_legacy_not_read_when_its_table_does_not_exist(bindir, legacy_lists):
    # Reading a legacy table would create it; /proc says whether it exists.
    legacy_lists["iptables"].write_text("filter\nnat\n")
    legacy_lists["ip6tables"].unlink()  # ip6_tables not even loaded
    _fake(bindir, "iptables-nft-save", _print(NFT_SWARM))
    _fake(bindir, "iptables-legacy-save", "exit 9")
    _fake(bindir, "ip6tables-legacy-save", "exit 9")
    assert parse_marks(read_mangle_rules("")).ports == parse_marks(NFT_SWARM).ports


def test_legacy_only_host_without_tables_is_empty_not_an_error(bindir, legacy_lists):
    legacy_lists["iptables"].write_text("")
    _fake(bindir, "iptables-legacy-save", "exit 9")
    assert read_mangle_rules("") == ""


def test_legacy_read_anyway_when_its_tables_are_unknown(bindir, legacy_lists, monkeypatch):
    monkeypatch.setattr(marks, "_legacy_mangle_families", lambda prefix, timeout: None)
    legacy_lists["iptables"].write_text("")
    _fake(bindir, "iptables-legacy-save", _print(LEGACY_SWARM))
    assert parse_marks(read_mangle_rules("")).ports[0x103] == [TCP(30005)]


def test_all_failing_raises_one_line_naming_each(bindir):
    _fake(
        bindir,
        "iptables-nft-save",
        "echo 'warming up' >&2; echo 'Permission denied (you must be root)' >&2; exit 4",
    )
    _fake(bindir, "iptables-legacy-save", "exit 3")
    with pytest.raises(MarksError) as err:
        read_mangle_rules("")
    message = str(err.value)
    assert "\n" not in message and "current network namespace" in message
    assert "iptables-nft-save: exit 4: Permission denied (you must be root)" in message
    assert "iptables-legacy-save: exit 3: no message" in message
    assert "CAP_NET_ADMIN" in message and "run it as root" in message


def test_no_iptables_says_install_iptables(bindir):
    with pytest.raises(MarksError, match="install iptables"):
        read_mangle_rules("")


def test_timeout_is_bounded(bindir):
    _fake(bindir, "iptables-nft-save", "exec /bin/sleep 30")
    with pytest.raises(MarksError, match=r"iptables-nft-save: timed out after 0\.5s"):
        read_mangle_rules("", timeout=0.5)


def test_missing_namespace_names_the_path(tmp_path):
    path = str(tmp_path / "no_such_netns")
    with pytest.raises(MarksError) as err:
        read_mangle_rules(path)
    assert path in str(err.value) and "does not exist" in str(err.value)
    assert isinstance(err.value, OSError)


def test_missing_nsenter_says_install_util_linux(bindir, tmp_path):
    _fake(bindir, "iptables-nft-save", _print(NFT_SWARM))
    namespace = tmp_path / "ns"
    namespace.write_text("")  # a regular file, as nsfs files are
    with pytest.raises(MarksError, match="install util-linux"):
        read_mangle_rules(str(namespace))


@pytest.mark.parametrize("make", [os.mkfifo, os.mkdir], ids=["fifo", "directory"])
def test_a_path_that_is_no_namespace_file_fails_at_once(tmp_path, bindir, make):
    """nsenter --net=FIFO would wait in open() for a writer: the file type is checked first."""
    path = tmp_path / "ns"
    make(path)
    ran = tmp_path / "ran"
    _fake(bindir, "nsenter", f"/usr/bin/touch {ran}; exec /bin/sleep 30")
    _fake(bindir, "iptables-nft-save", _print(NFT_SWARM))
    started = time.monotonic()
    with pytest.raises(MarksError) as info:
        read_mangle_rules(str(path), timeout=5)
    assert time.monotonic() - started < 2 and not ran.exists()
    message = str(info.value)
    assert f"{path} is not a network namespace" in message and "--namespace-path" in message
    assert "\n" not in message


def test_helpers_come_from_the_system_path_never_from_the_inherited_one(bindir, tmp_path, monkeypatch):
    """nsenter and iptables-*-save run with the exporter's capabilities: a directory early on
    the inherited $PATH (one someone else can write to) must not supply them."""
    planted, ran = tmp_path / "planted", tmp_path / "ran"
    planted.mkdir()
    for name in ("nsenter", "iptables-nft-save", "iptables-legacy-save", "iptables-save", "ip6tables-save"):
        _fake(planted, name, f"/usr/bin/touch {ran}; exit 1")
    monkeypatch.setenv("PATH", f"{planted}{os.pathsep}{os.environ.get('PATH', '')}")
    _fake(bindir, "nsenter", 'shift 2; exec "$@"')  # --net=PATH -- COMMAND...: run it right here
    _fake(bindir, "iptables-nft-save", _print(NFT_SWARM))
    namespace = tmp_path / "ns"
    namespace.write_text("")
    for _ in range(2):  # resolved at first use, and the same on the next read
        assert parse_marks(read_mangle_rules(str(namespace))).ports == parse_marks(NFT_SWARM).ports
    assert not ran.exists(), "a helper from the inherited PATH ran"
