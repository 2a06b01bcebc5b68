"""Several namespaces in one scrape, on injected snapshots: globs re-evaluated, empty and
vanished matches left out, a slow namespace reported without holding up the others, the
body byte-identical to prometheus_client's rendering of every namespace's families, and
fwmark services labelled with their VIP."""

from __future__ import annotations

import gzip
import logging
import threading
import time

import pytest
from ipvs_testlib import EVERY_KIND, PORTS
from reference import render as reference

from ingress_ipvs_exporter import testing
from ingress_ipvs_exporter.collector import NamespaceReader
from ingress_ipvs_exporter.ipvs import DumpFailed, NamespaceNotFound, NotANamespace
from ingress_ipvs_exporter.namespaces import Namespaces
from ingress_ipvs_exporter.render.exposition import MetricsApp, View
from ingress_ipvs_exporter.render.metrics import Options, service_labels
from ingress_ipvs_exporter.swarm.marks import PublishedPort, parse_marks

VIPS = {256: ["10.0.1.2", "fd00::2"], 257: ["10.0.1.3"]}
LB_RULES = """*mangle
:INPUT ACCEPT [0:0]
-A INPUT -d 10.0.1.2/32 -j MARK --set-xmark 0x100/0xffffffff
-A INPUT -d 10.0.1.3/32 -j MARK --set-xmark 0x101/0xffffffff
-A INPUT -d 10.0.0.0/24 -j MARK --set-xmark 0x102/0xffffffff
-A INPUT ! -d 10.0.1.9/32 -j MARK --set-xmark 0x103/0xffffffff
-A PREROUTING -p tcp -m tcp --dport 30000 -j MARK --set-xmark 0x100/0xffffffff
COMMIT
"""


def test_input_rules_give_each_mark_its_vip():
    marks = parse_marks(LB_RULES + LB_RULES.replace("10.0.1.2/32", "fd00::2/128"))
    assert marks.vips == {0x100: ["10.0.1.2", "fd00::2"], 0x101: ["10.0.1.3"]}  # no networks, no negation
    assert marks.ports == {0x100: [PublishedPort("tcp", 30000)]}


def test_a_fwmark_service_is_labelled_with_the_vip_of_its_family():
    svc = service_labels(testing.build_snapshot(EVERY_KIND), PORTS, VIPS)
    fwmark = [(s.family, s.fwmark, s.vip) for s in svc if s.fwmark != "0"]
    assert fwmark == [("ipv4", "256", "10.0.1.2"), ("ipv4", "257", "10.0.1.3"), ("ipv4", "999", "")] + [
        ("ipv6", "256", "fd00::2")
    ]
    assert [s.vip for s in service_labels(testing.build_snapshot(EVERY_KIND), PORTS)][:3] == ["", "", ""]


class Fake:
    """Namespaces' world: which paths exist, what each one's read gives."""

    def __init__(self, tmp_path):
        self.dir = tmp_path
        self.snaps: dict[str, object] = {}
        self.opened: list[str] = []
        self.closed: list[str] = []

    def add(self, name, snap=None):
        path = str(self.dir / name)
        (self.dir / name).write_text("")
        self.snaps[path] = snap if snap is not None else testing.build_snapshot(EVERY_KIND)
        return path

    def remove(self, name):
        (self.dir / name).unlink()

    def open(self, path, globbed):
        self.opened.append(path)

        def read():
            snap = self.snaps.get(path)
            if isinstance(snap, Exception):
                raise snap
            if snap is None or not (self.dir / path.rsplit("/", 1)[-1]).exists():
                raise NamespaceNotFound(2, f"network namespace {path} does not exist")
            return snap() if callable(snap) else snap

        collector = NamespaceReader(
            path, read, lambda m: PORTS, Options(), vips=lambda m: VIPS, optional=globbed
        )
        return collector, lambda: self.closed.append(path)


def namespaces_of(fake, *patterns, deadline=5.0):
    return Namespaces(list(patterns), fake.open, Options(), deadline=deadline)


def up_lines(body: str) -> list[str]:
    return [line for line in body.splitlines() if line.startswith("ipvs_up{")]


def held(release: threading.Event):
    """A namespace read that hangs until `release` is set (at most 30 s)."""
    snap = testing.build_snapshot(EVERY_KIND)

    def read():
        release.wait(30)
        return snap

    return read


def test_glob_matches_are_found_and_dropped_at_every_scrape(tmp_path):
    fake = Fake(tmp_path)
    a = fake.add("lb_a")
    ns = namespaces_of(fake, str(tmp_path / "lb_*"))
    app = MetricsApp(ns)
    assert up_lines(testing.body(app, "")[0].decode()) == [f'ipvs_up{{namespace="{a}"}} 1.0']
    b = fake.add("lb_b")
    assert len(up_lines(testing.body(app, "")[0].decode())) == 2  # no restart needed
    fake.remove("lb_a")
    body = testing.body(app, "")[0].decode()
    assert f'namespace="{a}"' not in body and up_lines(body) == [f'ipvs_up{{namespace="{b}"}} 1.0']
    assert fake.closed == [a]
    assert list(app.renderer._shapes) == [b]  # the dropped namespace's shape is let go


def test_several_namespaces_render_byte_identical_to_the_reference(tmp_path):
    fake = Fake(tmp_path)
    one = fake.add("ingress_sbox")
    changed = list(EVERY_KIND)
    changed[0] = changed[0]._replace(fwmark=300)
    two = fake.add("lb_x", testing.build_snapshot(changed))
    ns = namespaces_of(fake, one, str(tmp_path / "lb_*"))
    app = MetricsApp(ns)
    views = [View(one, fake.snaps[one], PORTS, VIPS), View(two, fake.snaps[two], PORTS, VIPS)]
    for accept in ("", "application/openmetrics-text; version=1.0.0"):
        openmetrics = bool(accept)
        want = reference(None, None, None, Options(), openmetrics, views=views)
        for _ in range(2):  # built, then from the shapes' caches
            body = testing.body(app, accept)[0].decode()
            assert body.startswith(want)
            chunks, _ = app.stream(accept, gzip=True)
            assert gzip.decompress(b"".join(chunks)).decode().startswith(want)
        rest = body[len(want) :]
        assert rest.count("# HELP ipvs_up ") == 1 and len(up_lines(rest)) == 2  # one family, two series
    assert 'vip="10.0.1.2"' in body


def test_empty_and_vanished_matches_cost_nothing_but_a_debug_line(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    fake = Fake(tmp_path)
    full = fake.add("lb_full")
    fake.add("lb_empty", testing.build_snapshot([]))
    fake.add("lb_stale", NotANamespace(22, "not a network namespace"))
    (tmp_path / "lb_dir").mkdir()
    body = testing.body(MetricsApp(namespaces_of(fake, str(tmp_path / "lb_*"))), "")[0].decode()
    assert "lb_empty" not in body and "lb_stale" not in body and "lb_dir" not in body
    assert up_lines(body) == [f'ipvs_up{{namespace="{full}"}} 1.0']
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("holds no IPVS service" in r.getMessage() for r in caplog.records)


def test_a_literal_path_is_always_reported_a_broken_match_too(tmp_path):
    fake = Fake(tmp_path)
    missing = str(tmp_path / "ingress_sbox")
    fake.add("lb_gone", NamespaceNotFound(2, "gone between the glob and the read"))  # left out
    fake.add("lb_broken", DumpFailed(5, "the dump failed"))  # reported
    body = testing.body(MetricsApp(namespaces_of(fake, missing, str(tmp_path / "lb_*"))), "")[0].decode()
    assert up_lines(body) == [
        f'ipvs_up{{namespace="{missing}"}} 0.0',
        f'ipvs_up{{namespace="{tmp_path / "lb_broken"}"}} 0.0',
    ]
    assert 'reason="netlink"' in body and 'reason="namespace_missing"' in body


def test_a_slow_namespace_does_not_hold_up_the_others(tmp_path):
    fake = Fake(tmp_path)
    release = threading.Event()
    slow_path = fake.add("lb_slow", held(release))
    fast = fake.add("lb_fast")
    ns = namespaces_of(fake, str(tmp_path / "lb_*"), deadline=0.5)
    app = MetricsApp(ns)
    calls = []
    slow_read = ns.members()[1].collector._snapshot
    ns.members()[1].collector._snapshot = lambda: calls.append(1) or slow_read()
    for _ in range(2):  # the second scrape does not start another read of the slow one
        body = testing.body(app, "")[0].decode()
        assert f'ipvs_up{{namespace="{slow_path}"}} 0.0' in body
        assert f'ipvs_up{{namespace="{fast}"}} 1.0' in body
        assert f'ipvs_connections_total{{fwmark="256",namespace="{fast}"' in body
        assert f'namespace="{slow_path}",port' not in body
    assert f'ipvs_scrape_errors_total{{namespace="{slow_path}",reason="timeout"}} 2.0' in body
    assert calls == [1]
    release.set()
    ns._members[slow_path].running.result(timeout=10)
    body = testing.body(app, "")[0].decode()  # read afresh
    assert f'ipvs_up{{namespace="{slow_path}"}} 1.0' in body
    ns.close()


def test_the_scrapers_timeout_sets_the_deadline_less_a_margin(tmp_path, monkeypatch):
    """Prometheus' X-Prometheus-Scrape-Timeout-Seconds: a slow namespace is reported at the
    scraper's timeout less SCRAPE_TIMEOUT_MARGIN rather than at the fixed deadline, and a
    longer timeout is waited for; both within bounds."""
    from ingress_ipvs_exporter import namespaces

    fake = Fake(tmp_path)
    release = threading.Event()
    slow_path = fake.add("lb_slow", held(release))
    fast = fake.add("lb_fast")
    ns = namespaces_of(fake, str(tmp_path / "lb_*"), deadline=30.0)
    assert ns.deadline(None) == 30.0
    assert ns.deadline(10.0) == 10.0 - namespaces.SCRAPE_TIMEOUT_MARGIN
    assert ns.deadline(0.5) == namespaces.SHORTEST_DEADLINE
    assert ns.deadline(1e9) == namespaces.LONGEST_DEADLINE
    app = MetricsApp(ns)
    waited = []  # how long each scrape waited for the reads: recorded, not timed
    real_wait = namespaces.wait
    monkeypatch.setattr(
        namespaces, "wait", lambda fs, timeout: waited.append(timeout) or real_wait(fs, timeout)
    )
    chunks, _ = app.stream("", scrape_timeout=namespaces.SCRAPE_TIMEOUT_MARGIN + 0.3)
    body = b"".join(chunks).decode()
    assert waited == [pytest.approx(0.3)]  # not the fixed 30 s
    assert f'ipvs_up{{namespace="{slow_path}"}} 0.0' in body
    assert f'ipvs_up{{namespace="{fast}"}} 1.0' in body
    assert f'ipvs_scrape_errors_total{{namespace="{slow_path}",reason="timeout"}} 1.0' in body
    threading.Timer(0.5, release.set).start()
    chunks, _ = app.stream("", scrape_timeout=namespaces.SCRAPE_TIMEOUT_MARGIN + 20)
    body = b"".join(chunks).decode()  # the read in flight returns within the longer wait
    assert f'ipvs_up{{namespace="{slow_path}"}} 1.0' in body
    ns.close()


def test_a_match_gone_during_its_read_is_closed_after_the_read_without_holding_up_scrapes(tmp_path):
    fake = Fake(tmp_path)
    release = threading.Event()
    stuck_path = fake.add("lb_stuck", held(release))
    fast = fake.add("lb_fast")
    app = MetricsApp(namespaces_of(fake, str(tmp_path / "lb_*"), deadline=0.3))
    assert f'ipvs_up{{namespace="{stuck_path}"}} 0.0' in testing.body(app, "")[0].decode()
    fake.remove("lb_stuck")  # Docker removed the network while its read hangs
    # were the scrape to wait for the hung read it would see it end (and the handle closed)
    # only when this lets it go, instead of hanging the test
    safety = threading.Timer(60, release.set)
    safety.start()
    body = testing.body(app, "")[0].decode()
    assert up_lines(body) == [f'ipvs_up{{namespace="{fast}"}} 1.0']
    assert fake.closed == [] and not release.is_set()  # the scrape did not wait for the read
    safety.cancel()
    release.set()
    deadline = time.monotonic() + 10
    while not fake.closed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fake.closed == [stuck_path]


def test_concurrent_scrapes_share_the_reads_in_flight(tmp_path):
    fake = Fake(tmp_path)
    gate = threading.Barrier(2, timeout=10)
    reads = []

    def read():
        reads.append(1)
        if len(reads) == 1:
            gate.wait()  # the first scrape's read holds until the second scrape waits on it too
        return testing.build_snapshot(EVERY_KIND)

    paths = [fake.add("lb_a", read), fake.add("lb_b")]
    app = MetricsApp(namespaces_of(fake, str(tmp_path / "lb_*")))
    bodies = []
    first = threading.Thread(target=lambda: bodies.append(testing.body(app, "")[0].decode()))
    first.start()
    while not reads:
        pass
    second = threading.Thread(target=lambda: bodies.append(testing.body(app, "")[0].decode()))
    second.start()
    time.sleep(0.2)
    gate.wait()
    first.join(10)
    second.join(10)
    assert len(bodies) == 2
    for body in bodies:
        assert [line.split("}")[1] for line in up_lines(body)] == [" 1.0", " 1.0"], body
    assert len(reads) == 1 and paths


@pytest.mark.parametrize("given", [[], ["/a", "/a"]])
def test_patterns_are_kept_once_in_order(tmp_path, given):
    assert namespaces_of(Fake(tmp_path), *given).patterns == list(dict.fromkeys(given))


def test_a_match_another_scrape_dropped_meanwhile_is_not_read_again(tmp_path):
    """Scrape A lists the matches; before it reads them, scrape B sees lb_a gone and closes
    it. A read it anyway, which reopened the closed handle (a netlink socket nothing would
    close) and showed a namespace no longer there."""
    fake = Fake(tmp_path)
    a, b = fake.add("lb_a"), fake.add("lb_b")
    reads: list[str] = []
    for path in (a, b):
        snap = fake.snaps[path]
        fake.snaps[path] = lambda path=path, snap=snap: reads.append(path) or snap
    ns = namespaces_of(fake, str(tmp_path / "lb_*"))
    listed_by_a = ns.members()
    fake.remove("lb_a")
    assert [m.path for m in ns.members()] == [b] and fake.closed == [a]  # scrape B
    done = ns._read_all(listed_by_a, 5.0)  # scrape A goes on with what it listed
    assert list(done) == [b] and reads == [b]
    ns.close()
