"""Collector logic on injected snapshots (no kernel): names, help, types, labels, values."""

from __future__ import annotations

import socket

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from ingress_ipvs_exporter import testing
from ingress_ipvs_exporter.collector import NamespaceReader
from ingress_ipvs_exporter.ipvs import NamespaceNotFound
from ingress_ipvs_exporter.render.exposition import MetricsApp
from ingress_ipvs_exporter.render.metrics import METRICS, Kind, Level, Options
from ingress_ipvs_exporter.swarm.marks import PublishedPort
from ingress_ipvs_exporter.testing import Destination, Service, Stats

NS = "/var/run/docker/netns/ingress_sbox"

# The original exporter's README's metric list: name -> help, verbatim.
ORIGINAL_HELP = {
    "ipvs_bytes_in_total": "The total number of incoming bytes a virtual server",
    "ipvs_bytes_out_total": "The total number of outgoing bytes from a virtual server",
    "ipvs_connections_total": "The total number of connections made to a virtual server",
    "ipvs_destination_active_connections_total": "The total number of connections established to a destination server",
    "ipvs_destination_bytes_in_total": "The total number of incoming bytes to a real server",
    "ipvs_destination_bytes_out_total": "The total number of outgoing bytes to a real server",
    "ipvs_destination_connections_total": "The total number connections ever established to a destination",
    "ipvs_destination_inactive_connections_total": "The total number of connections inactive but established to a destination server",
    "ipvs_destination_total": "The total number of real servers that are destinations to the service",
    "ipvs_services_total": "The total number of services registered in ipvs",
}


def stats(conns=0, inbytes=0, outbytes=0):
    return Stats(conns, 1, 2, inbytes, outbytes, 3, 4, 5, 6, 7)


def dest(addr, conns=0, inb=0, outb=0, active=0, inactive=0, af=socket.AF_INET):
    return Destination(af, addr, 0, 0, 1, 0, 0, active, inactive, 0, stats(conns, inb, outb))


def fwm(mark, *dests, conns=0, inb=0, outb=0):
    return Service(
        socket.AF_INET, 0, "", 0, mark, "rr", 2, 0, 0xFFFFFFFF, stats(conns, inb, outb), tuple(dests)
    )


ORIGINAL_EXAMPLE = [
    fwm(260, dest("10.255.0.12", 10, 4510, 11190, 0, 10), conns=10, inb=4510, outb=11190),
    fwm(261, dest("10.255.0.14"), dest("10.255.0.15")),
    fwm(262),
]
PORTS = {260: [PublishedPort("tcp", 30000)], 261: [PublishedPort("tcp", 30002), PublishedPort("udp", 30001)]}


def scrape(collector: NamespaceReader) -> str:
    """What the exporter serves for this collector (no gzip)."""
    return testing.body(MetricsApp(collector), "")[0].decode()


def render(services, ports=PORTS, ns=NS, options=Options(backends=True)) -> str:
    return scrape(
        NamespaceReader(
            ns,
            lambda: testing.build_snapshot(services),
            lambda marks: {m: ports[m] for m in marks if m in ports},
            options,
        )
    )


def test_original_names_help_and_types():
    fams = {f.name: f for f in text_string_to_metric_families(render(ORIGINAL_EXAMPLE))}
    kinds = {d.name: d.kind for d in METRICS}
    assert set(ORIGINAL_HELP) <= set(kinds)
    original = (Level.ORIGINAL_SERVICE, Level.ORIGINAL_DESTINATION, Level.NAMESPACE)
    assert [d.name for d in METRICS if d.level in original] == sorted(ORIGINAL_HELP)
    for name, help_text in ORIGINAL_HELP.items():
        # the parser names a counter family without its _total suffix
        fam = fams[name[: -len("_total")]] if kinds[name] is Kind.COUNTER else fams[name]
        assert (fam.type, fam.documentation) == (kinds[name].value, help_text)
    assert (
        "# HELP ipvs_connections_total The total number of connections made to a virtual server"
        in render(ORIGINAL_EXAMPLE).splitlines()
    )


def test_original_example_lines_appear_verbatim():
    text = render(ORIGINAL_EXAMPLE)
    for line in (
        'ipvs_bytes_in_total{fwmark="260",namespace="/var/run/docker/netns/ingress_sbox",port="30000"} 4510.0',
        'ipvs_connections_total{fwmark="260",namespace="/var/run/docker/netns/ingress_sbox",port="30000"} 10.0',
        'ipvs_destination_inactive_connections_total{address="10.255.0.12",fwmark="260",namespace="/var/run/docker/netns/ingress_sbox",port="30000"} 10.0',
        'ipvs_destination_total{fwmark="260",namespace="/var/run/docker/netns/ingress_sbox",port="30000"} 1.0',
        'ipvs_services_total{namespace="/var/run/docker/netns/ingress_sbox"} 3.0',
        "# TYPE ipvs_connections_total counter",
        "# TYPE ipvs_destination_active_connections_total gauge",
    ):
        assert line in text.splitlines(), line


def test_port_is_lowest_published_port_and_empty_without_rule():
    text = render(ORIGINAL_EXAMPLE)
    assert f'ipvs_destination_total{{fwmark="261",namespace="{NS}",port="30001"}} 2.0' in text
    assert f'ipvs_destination_total{{fwmark="262",namespace="{NS}",port=""}} 0.0' in text


def test_large_counters_are_not_truncated_to_32_bits():
    big = 2**40 + 3
    text = render([fwm(300, dest("10.0.0.1", big, big, big), conns=big, inb=big, outb=big)])
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    assert fams["ipvs_bytes_in"].samples[0].value == big


def test_address_port_services_are_in_the_full_families_only():
    svc = Service(
        socket.AF_INET6,
        socket.IPPROTO_TCP,
        "2001:db8::1",
        443,
        0,
        "rr",
        0,
        0,
        128,
        stats(5),
        (dest("2001:db8::10", 5, af=socket.AF_INET6),),
    )
    text = render([svc] + ORIGINAL_EXAMPLE[:1])
    full = f'family="ipv6",fwmark="0",namespace="{NS}",port="443",protocol="tcp",vip="2001:db8::1"'
    assert f"ipvs_service_connections_total{{{full}}} 5.0" in text
    assert f'ipvs_backend_connections_total{{address="2001:db8::10",destination_port="0",{full}}} 5.0' in text
    # the original families stay as the original exporter had them: fwmark services only
    assert 'ipvs_connections_total{fwmark="0"' not in text
    assert f'ipvs_services_total{{namespace="{NS}"}} 2.0' in text
    fwm_full = f'family="ipv4",fwmark="260",namespace="{NS}",port="30000",protocol="",vip=""'
    assert f"ipvs_service_connections_total{{{fwm_full}}} 10.0" in text


def test_every_published_port_is_exported_and_info_metrics():
    text = render(ORIGINAL_EXAMPLE)
    for port, proto in (("30002", "tcp"), ("30001", "udp")):
        assert (
            f'ipvs_service_published_port_info{{fwmark="261",namespace="{NS}",port="{port}",protocol="{proto}"}} 1.0'
            in text
        )
    assert (
        f'ipvs_service_info{{family="ipv4",fwmark="260",hashed="true",namespace="{NS}",one_packet="false",'
        'persistent="false",port="30000",protocol="",scheduler="rr",vip=""} 1.0'
    ) in text
    assert (
        'ipvs_backend_info{address="10.255.0.12",destination_port="0",family="ipv4",forwarding="masq",'
        f'fwmark="260",namespace="{NS}",port="30000",protocol="",vip=""}} 1.0'
    ) in text


def test_negative_weight_and_rates():
    d = Destination(socket.AF_INET, "10.0.0.1", 80, 0, -1, 0, 0, 0, 0, 0, stats(1))
    text = render([fwm(300, d)])
    assert 'ipvs_backend_weight{address="10.0.0.1",destination_port="80",' in text
    assert [l for l in text.splitlines() if l.startswith("ipvs_backend_weight{")][0].endswith(" -1.0")
    assert [l for l in text.splitlines() if l.startswith("ipvs_backend_bytes_out_per_second{")][0].endswith(
        " 7.0"
    )


def test_backend_families_only_with_the_flag():
    assert "ipvs_backend_weight{" not in render(ORIGINAL_EXAMPLE, options=Options())
    assert "ipvs_backend_info{" not in render(ORIGINAL_EXAMPLE, options=Options())
    assert "ipvs_service_info{" in render(ORIGINAL_EXAMPLE, options=Options())
    assert "ipvs_backend_weight{" in render(ORIGINAL_EXAMPLE, options=Options(backends=True))


def test_cardinality_options_sum_merged_series_or_drop_them():
    svc = fwm(270, dest("10.0.0.1", 3, 100, 200), dest("10.0.0.2", 4, 10, 20))
    text = scrape(
        NamespaceReader(
            NS,
            lambda: testing.build_snapshot([svc]),
            lambda m: {},
            Options(destination_labels=("destination_port",), backends=True),
        )
    )
    assert f'ipvs_destination_connections_total{{fwmark="270",namespace="{NS}",port=""}} 7.0' in text
    assert (
        f'ipvs_backend_bytes_in_total{{destination_port="0",family="ipv4",fwmark="270",namespace="{NS}",port="",protocol="",vip=""}} 110.0'
        in text
    )
    assert "address=" not in text
    text = scrape(
        NamespaceReader(
            NS,
            lambda: testing.build_snapshot([svc]),
            lambda m: {},
            Options(destination_labels=(), per_destination=False),
        )
    )
    assert "ipvs_destination_connections_total{" not in text and "ipvs_backend_" not in text.replace("# ", "")
    assert f'ipvs_destination_total{{fwmark="270",namespace="{NS}",port=""}} 2.0' in text


def test_failed_read_gives_up_0_and_no_ipvs_series(caplog):
    def broken():
        raise NamespaceNotFound(2, "network namespace /x does not exist (yet)")

    app = MetricsApp(NamespaceReader("/x", broken, lambda m: {}))
    for _ in range(3):
        text = testing.body(app, "")[0].decode()
    assert 'ipvs_up{namespace="/x"} 0.0' in text
    assert 'ipvs_scrape_errors_total{namespace="/x",reason="namespace_missing"} 3.0' in text
    assert "ipvs_services_total{" not in text
    assert [r.getMessage() for r in caplog.records] == ["network namespace /x does not exist (yet)"]


def test_registering_does_no_io():
    calls = []
    reg = CollectorRegistry()
    reg.register(NamespaceReader(NS, lambda: calls.append(1), lambda m: {}))
    assert calls == []


def test_swarm_service_names_join_on_fwmark():
    from ingress_ipvs_exporter.swarm.names import SwarmService

    asked = []

    class FakeSwarm:
        up = True

        def names(self, namespace_path, marks, ports=None):
            marks = list(marks)
            asked.append((namespace_path, marks, dict(ports or {})))
            known = {
                260: SwarmService("id1", "web", "ingress"),
                261: SwarmService("id2", "api", "ingress"),
                262: SwarmService("", "client", "appnet"),
            }
            return {m: known[m] for m in marks if m in known}

    text = scrape(
        NamespaceReader(
            NS,
            lambda: testing.build_snapshot(ORIGINAL_EXAMPLE),
            lambda marks: {m: PORTS[m] for m in marks if m in PORTS},
            swarm=FakeSwarm(),
        )
    )
    [(path, marks, ports)] = asked
    assert path == NS and marks == [260, 261, 262] and ports == PORTS  # 262 has no ports: asked too
    # one series per fwmark even when it has several ports, labelled like its other series; a
    # VIP's mark (262): no published port, no ID (a worker answered), its network named
    assert [l for l in text.splitlines() if l.startswith("ipvs_swarm_service_info{")] == [
        f'ipvs_swarm_service_info{{fwmark="260",namespace="{NS}",network="ingress",port="30000",service_id="id1",service_name="web"}} 1.0',
        f'ipvs_swarm_service_info{{fwmark="261",namespace="{NS}",network="ingress",port="30001",service_id="id2",service_name="api"}} 1.0',
        f'ipvs_swarm_service_info{{fwmark="262",namespace="{NS}",network="appnet",port="",service_id="",service_name="client"}} 1.0',
    ]
    assert f'ipvs_docker_up{{namespace="{NS}"}} 1.0' in text


def test_same_fwmark_in_both_families_is_one_original_series_not_two():
    """The original families' labels cannot tell an IPv4 from an IPv6 fwmark service with the
    same mark: their values are summed into one series (a repeated series is invalid in the
    exposition format, and Prometheus drops all but one of its samples)."""
    v6 = Service(
        socket.AF_INET6,
        0,
        "",
        0,
        260,
        "rr",
        2,
        0,
        128,
        stats(5, 50, 70),
        (dest("2001:db8::9", af=socket.AF_INET6),),
    )
    text = render([*ORIGINAL_EXAMPLE, v6])
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert len(lines) == len(set(lines)) and len({line.rsplit(" ", 1)[0] for line in lines}) == len(lines)
    assert f'ipvs_connections_total{{fwmark="260",namespace="{NS}",port="30000"}} 15.0' in lines
    assert f'ipvs_destination_total{{fwmark="260",namespace="{NS}",port="30000"}} 2.0' in lines
    assert (
        f'ipvs_service_connections_total{{family="ipv6",fwmark="260",namespace="{NS}",port="30000",protocol="",vip=""}} 5.0'
        in lines
    )


def _series_count(n_services: int, n_dests: int, options: Options) -> int:
    services = [fwm(256 + i, *(dest(f"10.0.{i}.{j + 1}") for j in range(n_dests))) for i in range(n_services)]
    ports = {256 + i: [PublishedPort("tcp", 30000 + i)] for i in range(n_services)}
    text = render(services, ports=ports, options=options)
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


# Series per virtual service and per real server under each setting: docs/metrics.md's figures.
SERIES_PER = {
    "default": (Options(), 18, 5),
    "--backend-metrics": (Options(backends=True), 18, 22),
    "--original-metrics-only": (Options(original_only=True), 4, 5),
    "--no-rate-metrics": (Options(rates=False), 13, 5),
    "--no-rate-metrics --backend-metrics": (Options(rates=False, backends=True), 13, 17),
    "--destination-labels none": (Options(destination_labels=(), per_destination=False), 18, 0),
}


def test_series_per_service_and_per_real_server_as_documented():
    for setting, (options, per_service, per_dest) in SERIES_PER.items():
        fixed = _series_count(0, 0, options)
        assert _series_count(1, 0, options) - fixed == per_service, setting
        assert _series_count(1, 1, options) - _series_count(1, 0, options) == per_dest, setting
        assert _series_count(5, 3, options) == fixed + 5 * per_service + 15 * per_dest, setting


def test_exporter_metrics_can_be_left_out():
    from ingress_ipvs_exporter.collector import exporter_collectors

    collector = NamespaceReader(NS, lambda: testing.build_snapshot(ORIGINAL_EXAMPLE), lambda m: {})
    full = testing.body(MetricsApp(collector, exporter_collectors()), "")[0].decode()
    assert "\nipvs_exporter_build_info{" in full and "\nprocess_cpu_seconds_total " in full
    bare = testing.body(MetricsApp(collector, exporter_collectors(exporter_metrics=False)), "")[0].decode()
    assert "ipvs_exporter_build_info" not in bare and "process_" not in bare
    assert f'\nipvs_up{{namespace="{NS}"}} 1.0' in bare
