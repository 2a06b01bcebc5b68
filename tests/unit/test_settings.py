"""A namespace's IPVS settings without a kernel: the shim's parser fed GET_CONFIG and GET_DAEMON
replies as the kernel builds them, the Settings made of its struct, and their families (the
kernel tests compare them with ipvsadm and sysctl)."""

from __future__ import annotations

import errno
import logging
import struct

from ingress_ipvs_exporter._ipvs_cffi import ffi, lib
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ingress_ipvs_exporter import testing
from ingress_ipvs_exporter.collector import NamespaceReader
from ingress_ipvs_exporter.ipvs import SYSCTLS, DumpFailed, Settings, SyncDaemon, settings_from
from ingress_ipvs_exporter.render.exposition import MetricsApp
from ingress_ipvs_exporter.render.metrics import Options
from ingress_ipvs_exporter.settings import settings_families

NS = "/run/netns/lab"
SETTINGS_FAMILIES = ("ipvs_timeout_seconds", "ipvs_sync_daemon_info", "ipvs_sync_daemons", "ipvs_sysctl")

# linux/ip_vs.h
CMD_SET_CONFIG, CMD_NEW_DAEMON = 13, 16
ATTR_DAEMON, ATTR_TIMEOUT_TCP, ATTR_TIMEOUT_TCP_FIN, ATTR_TIMEOUT_UDP = 3, 4, 5, 6
DAEMON_STATE, DAEMON_MCAST_IFN, DAEMON_SYNC_ID = 1, 2, 3
NLA_F_NESTED = 0x8000


def attr(kind: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return struct.pack("=HH", n, kind) + payload + b"\0" * (-n % 4)


def message(cmd: int, *attrs: bytes) -> bytes:
    body = struct.pack("=BBH", cmd, 1, 0) + b"".join(attrs)
    return struct.pack("=IHHII", 16 + len(body), 0x10, 0, 1, 0) + body


def config(tcp: int, tcp_fin: int, udp: int) -> bytes:
    u32 = struct.Struct("=I").pack
    return message(
        CMD_SET_CONFIG, attr(ATTR_TIMEOUT_TCP, u32(tcp)), attr(ATTR_TIMEOUT_TCP_FIN, u32(tcp_fin)),
        attr(ATTR_TIMEOUT_UDP, u32(udp)),
    )  # fmt: skip


def daemon(state: int | None, ifname: bytes, sync_id: int) -> bytes:
    inner = attr(DAEMON_MCAST_IFN, ifname + b"\0") + attr(DAEMON_SYNC_ID, struct.pack("=I", sync_id))
    if state is not None:
        inner = attr(DAEMON_STATE, struct.pack("=I", state)) + inner
    return message(CMD_NEW_DAEMON, attr(ATTR_DAEMON | NLA_F_NESTED, inner))


class Offline:
    """An offline shim handle whose settings the test fills; closed on exit."""

    def __enter__(self) -> Offline:
        out = ffi.new("struct ipvs_handle **")
        assert lib.ipvs_handle_new_offline(out) == 0
        self.h = out[0]
        return self

    def __exit__(self, *exc: object) -> None:
        lib.ipvs_close(self.h)

    def parse(self, kind: int, msg: bytes) -> int:
        buf = ffi.new("uint8_t[]", msg)
        return int(lib.ipvs_parse_message(self.h, kind, buf, len(msg)))

    def settings(self) -> Settings:
        return settings_from(self.h, NS)


def test_config_and_daemon_replies_fill_the_settings():
    with Offline() as h:
        assert h.parse(lib.IPVS_MSG_CONFIG, config(100, 20, 30)) == 0
        assert h.parse(lib.IPVS_MSG_DAEMON, daemon(1, b"dummy0", 7)) == 0
        assert h.parse(lib.IPVS_MSG_DAEMON, daemon(2, b"a-name-longer-than-ifnamsiz", 9)) == 0
        s = h.settings()
    assert s.timeouts == {"tcp": 100, "tcp_fin": 20, "udp": 30}
    # a name longer than the slot is cut, still NUL-terminated
    assert s.daemons == (SyncDaemon("master", "dummy0", 7), SyncDaemon("backup", "a-name-longer-t", 9))


def test_daemon_replies_past_two_or_without_state_are_refused():
    with Offline() as h:
        assert h.parse(lib.IPVS_MSG_DAEMON, daemon(None, b"dummy0", 7)) == -errno.EPROTO
        assert h.parse(lib.IPVS_MSG_DAEMON, message(CMD_NEW_DAEMON)) == -errno.EPROTO
        for state in (1, 2):
            assert h.parse(lib.IPVS_MSG_DAEMON, daemon(state, b"dummy0", 1)) == 0
        assert h.parse(lib.IPVS_MSG_DAEMON, daemon(1, b"dummy0", 1)) == -errno.E2BIG
        assert len(h.settings().daemons or ()) == 2
        for cut in range(len(daemon(1, b"x", 1))):  # every truncation: an errno, never a crash
            assert -4095 <= h.parse(lib.IPVS_MSG_DAEMON, daemon(1, b"x", 1)[:cut]) <= 0


def test_a_missing_sysctl_is_absent_an_unreadable_one_absent_and_said():
    with Offline() as h:
        s = h.settings()
        assert s.sysctls == {} and s.problems == ()  # an offline handle has every sysctl missing
        names = ffi.cast("int *", ffi.addressof(h.h.settings, "sysctl_err"))
        values = ffi.cast("int64_t *", ffi.addressof(h.h.settings, "sysctl"))
        at = {name: i for i, name in enumerate(SYSCTLS)}
        names[at["conn_reuse_mode"]], values[at["conn_reuse_mode"]] = 0, 0
        names[at["expire_nodest_conn"]], values[at["expire_nodest_conn"]] = 0, 1
        names[at["sloppy_tcp"]] = -errno.EACCES
        s = h.settings()
    assert s.sysctls == {"conn_reuse_mode": 0, "expire_nodest_conn": 1}
    [(key, said)] = s.problems
    assert key == ("sysctl", "sloppy_tcp", errno.EACCES)
    assert "/proc/sys/net/ipv4/vs/sloppy_tcp" in said and NS in said and "Permission denied" in said


def test_a_refused_query_leaves_its_part_out_and_says_why():
    with Offline() as h:
        assert h.parse(lib.IPVS_MSG_CONFIG, config(900, 120, 300)) == 0
        h.h.settings.daemon_err = -errno.EPERM
        s = h.settings()
        assert s.timeouts == {"tcp": 900, "tcp_fin": 120, "udp": 300} and s.daemons is None
        assert s.problems[0][0] == ("reading the IPVS sync daemons", "", errno.EPERM)
        assert "CAP_NET_ADMIN" in s.problems[0][1]
        h.h.settings.config_err, h.h.settings.daemon_err = -errno.ENOENT, 0
        s = h.settings()
    assert s.timeouts is None and s.daemons == ()
    assert "No such file or directory" in s.problems[0][1] and NS in s.problems[0][1]


def test_shim_names_every_issue_sysctl():
    required = {
        "conn_reuse_mode",
        "expire_nodest_conn",
        "expire_quiescent_template",
        "conntrack",
        "sloppy_tcp",
    }
    required |= {"sloppy_sctp", "schedule_icmp", "ignore_tunneled", "run_estimation"}
    assert required <= set(SYSCTLS) and len(set(SYSCTLS)) == lib.IPVS_NSYSCTL
    assert ffi.string(lib.ipvs_sysctl_name(lib.IPVS_NSYSCTL)) == b""


FULL = Settings(
    {"tcp": 100, "tcp_fin": 20, "udp": 30},
    (SyncDaemon("master", "dummy0", 7), SyncDaemon("backup", "dummy1", 9)),
    {"expire_nodest_conn": 1, "conn_reuse_mode": 0},
)


def render(settings: Settings | None) -> str:
    class Families:
        def collect(self):
            return settings_families(NS, settings)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Families())
    return generate_latest(registry).decode()


def test_families_render_as_documented():
    lines = render(FULL).splitlines()
    expected = [
        f'ipvs_timeout_seconds{{namespace="{NS}",protocol="tcp"}} 100.0',
        f'ipvs_timeout_seconds{{namespace="{NS}",protocol="tcp_fin"}} 20.0',
        f'ipvs_timeout_seconds{{namespace="{NS}",protocol="udp"}} 30.0',
        f'ipvs_sync_daemon_info{{mcast_interface="dummy1",namespace="{NS}",state="backup",sync_id="9"}} 1.0',
        f'ipvs_sync_daemon_info{{mcast_interface="dummy0",namespace="{NS}",state="master",sync_id="7"}} 1.0',
        f'ipvs_sync_daemons{{namespace="{NS}"}} 2.0',
        f'ipvs_sysctl{{name="conn_reuse_mode",namespace="{NS}"}} 0.0',
        f'ipvs_sysctl{{name="expire_nodest_conn",namespace="{NS}"}} 1.0',
    ]
    assert [line for line in lines if not line.startswith("#")] == expected
    types = {f.name: f.type for f in text_string_to_metric_families("\n".join(lines) + "\n")}
    assert types == dict.fromkeys(SETTINGS_FAMILIES, "gauge")


def test_no_daemon_is_a_zero_count_a_refused_query_no_series():
    text = render(FULL._replace(daemons=()))
    assert f'ipvs_sync_daemons{{namespace="{NS}"}} 0.0' in text and "ipvs_sync_daemon_info{" not in text
    text = render(FULL._replace(daemons=None, timeouts=None, sysctls={}))
    assert not [line for line in text.splitlines() if not line.startswith("#")]
    assert render(None) == ""


def collector(settings, options: Options = Options()) -> NamespaceReader:
    return NamespaceReader(
        NS, lambda: testing.build_snapshot([]), lambda marks: {}, options, settings=settings
    )


def scrape(c: NamespaceReader) -> str:
    return testing.body(MetricsApp(c), "")[0].decode()


def test_a_refused_daemon_query_costs_no_other_family_and_is_said_once(caplog):
    refused = FULL._replace(daemons=None, problems=((("sync", "", errno.EPERM), "daemons refused"),))
    c = collector(lambda: refused)
    with caplog.at_level(logging.WARNING):
        texts = [scrape(c) for _ in range(3)]
    assert [r.getMessage() for r in caplog.records] == ["daemons refused"]
    for text in texts:
        assert f'ipvs_up{{namespace="{NS}"}} 1.0' in text
        assert f'ipvs_services_total{{namespace="{NS}"}} 0.0' in text
        assert f'ipvs_timeout_seconds{{namespace="{NS}",protocol="tcp"}} 100.0' in text
        assert f'ipvs_sysctl{{name="conn_reuse_mode",namespace="{NS}"}} 0.0' in text
        assert "ipvs_sync_daemon" not in text.replace("# HELP ipvs_sync", "").replace("# TYPE ipvs_sync", "")


def test_settings_that_cannot_be_read_cost_no_other_family(caplog):
    def broken() -> Settings:
        raise DumpFailed(errno.ETIMEDOUT, "reading IPVS in lab failed: timed out")

    c = collector(broken)
    with caplog.at_level(logging.WARNING):
        text, _ = scrape(c), scrape(c)
    assert [r.getMessage() for r in caplog.records] == ["reading IPVS in lab failed: timed out"]
    assert f'ipvs_up{{namespace="{NS}"}} 1.0' in text and "ipvs_timeout_seconds" not in text
    assert c.read().settings is None


def test_reading_carries_the_settings_and_original_only_reads_none():
    c = collector(lambda: FULL)
    assert c.read().settings == FULL
    asked = []
    c = collector(lambda: asked.append(1) or FULL, Options(original_only=True))
    text = scrape(c)
    assert asked == [] and c.read().settings is None
    assert not [f for f in SETTINGS_FAMILIES if f in text]
