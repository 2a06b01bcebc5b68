"""Unit tests of the bench's pure logic: the report's targets against the C floor, its growth
table, and run.py's addressing of sizes past one port range (no VM, injected results)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import report
import run


def row(median, **extra):
    return {"status": "ok", "median_s": median, "min_s": median, "runs": 5, **extra}


def doc_with(sizes: dict) -> dict:
    return {"results": [{"n_services": n, "contenders": cs} for n, cs in sizes.items()]}


def target(doc, start):
    [t] = [t for t in report.floor_targets(doc) if t["name"].startswith(start)]
    return t


def test_time_targets_are_ratios_to_the_c_floor_of_the_same_row():
    doc = doc_with(
        {
            10000: {
                "exporter_gzip": row(1.05, rss_mb=90.0),
                "cdump": row(1.0),
                "live10_exporter_gzip": row(1.3),
                "live10_cdump": row(1.0),
            }
        }
    )
    assert target(doc, "10000x10 idle: gzip scrape")["result"] == "met"
    live = target(doc, "10000x10 10% moving: gzip scrape")
    assert live["result"] == "not met" and "1.30x" in live["detail"]
    assert target(doc, "10000x10 100% moving: gzip scrape")["result"] == "no data"
    assert target(doc, "10000x10: exporter RSS")["result"] == "met"
    assert target(doc, "50000x10: exporter RSS")["result"] == "no data"


def test_cpu_target_is_cpu_seconds_per_second_of_the_c_floor():
    doc = doc_with(
        {
            10000: {
                "exporter_gzip": row(2.0, cpu_s_per_run=0.9),
                "cdump": row(1.0),
                "live100_exporter_gzip": row(2.0, cpu_s_per_run=1.2),
                "live100_cdump": row(1.0),
            }
        }
    )
    assert target(doc, "10000x10 idle: <= 1 CPU-second")["result"] == "met"
    assert target(doc, "10000x10 100% moving: <= 1 CPU-second")["result"] == "not met"


def test_a_failed_floor_gives_no_data_not_a_verdict():
    doc = doc_with({10000: {"exporter_gzip": row(1.0), "cdump": {"status": "failed: x"}}})
    assert target(doc, "10000x10 idle: gzip scrape")["result"] == "no data"


def test_growth_is_relative_to_1000_services():
    doc = doc_with(
        {
            100: {"exporter_gzip": row(0.01, rss_mb=30.0)},
            1000: {"exporter_gzip": row(0.1, rss_mb=40.0), "cdump": row(0.05)},
            50000: {"exporter_gzip": row(6.0, rss_mb=200.0), "cdump": row(2.5)},
        }
    )
    rows = report.growth(doc)
    assert [r["n"] for r in rows] == [1000, 50000]
    assert rows[1]["exporter_gzip"]["x_time"] == 60.0
    assert rows[1]["cdump"]["x_time"] == 50.0
    assert rows[1]["x_rss"] == 5.0
    assert rows[1]["shim_dump"]["x_time"] is None
    assert "Growth with size" in "\n".join(report.growth_table(doc))


def test_no_growth_table_without_a_size_past_1000():
    assert report.growth(doc_with({1000: {"exporter_gzip": row(0.1)}})) == []


def test_ratios_to_the_c_floor_are_added_per_row():
    doc = doc_with(
        {
            1000: {
                "exporter_gzip": row(0.3),
                "cdump": row(0.1),
                "live10_exporter_gzip": row(0.4),
                "live10_cdump": row(0.2),
            }
        }
    )
    report.add_ratios(doc)
    cs = doc["results"][0]["contenders"]
    assert abs(cs["exporter_gzip"]["ratio_to_cdump"] - 3.0) < 1e-9
    assert abs(cs["live10_exporter_gzip"]["ratio_to_cdump"] - 2.0) < 1e-9
    assert "ratio_to_cdump" in cs["cdump"] and "ratio_to_dump" not in cs["exporter_gzip"]


def test_50000_services_get_unique_frontends_and_real_servers():
    n = 50000
    fronts = {run.frontend(i) for i in range(n)}
    assert len(fronts) == n and all(30000 <= port <= 65535 for _, port in fronts)
    servers = {run.real_server(1 + k) for k in range(n * run.DESTS_PER_SERVICE)}
    assert len(servers) == n * run.DESTS_PER_SERVICE
    rules = run.mangle_script(n, "udp").splitlines()
    assert len(rules) == n + 2  # *mangle, one rule per service, COMMIT
    # past the last port, a rule also matches the second balancer address
    assert rules[1 + 35536].startswith("-A PREROUTING -d 198.51.100.3/32 -p udp -m udp --dport 30000 ")
