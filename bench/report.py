#!/usr/bin/env python3
"""bench.json -> bench.md (markdown table + target checks) and bench.png (log-log plot).

    python bench/report.py build/vm/bench        # reads DIR/bench.json, writes DIR/bench.md, DIR/bench.png

bench/run.py calls this at the end of a run too; running it again (on the host, say)
re-renders the same files. The plot needs matplotlib (bench/requirements.txt); without it
only the markdown is written.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

# (key, label) in table order
CONTENDERS = [
    ("exporter_gzip", "exporter, full scrape (gzip)"),
    ("exporter_gzip_nocache", "exporter, gzip, family cache off"),
    ("exporter_plain", "exporter, full scrape (plain)"),
    ("cdump", "C floor: bare libnl dump"),
    ("shim_dump", "shim bare dump (in-process)"),
    ("ipvsadm", "ipvsadm -Ln --stats --exact"),
    ("node_exporter_gzip", "node_exporter ipvs (gzip)"),
    ("pyroute2", "pyroute2 IPVS dump"),
]
LABELS = dict(CONTENDERS)
PRIMARY = "exporter_gzip"  # what Prometheus does: Accept-Encoding: gzip
# The live rows (counters moving between scrapes): key live{percent}_{contender}.
LIVE_CONTENDERS = [
    ("exporter_gzip", "exporter (gzip)"),
    ("cdump", "C floor"),
    ("shim_dump", "bare dump"),
    ("ipvsadm", "ipvsadm"),
    ("node_exporter_gzip", "node_exporter (gzip)"),
]


def live_shares(doc: dict) -> list[int]:
    return list(doc.get("config", {}).get("live_shares_percent") or [])


def _ok(c: dict | None) -> bool:
    return bool(c) and c.get("status") == "ok" and c.get("median_s") is not None


def _get(doc: dict, n: int, key: str) -> dict | None:
    for r in doc.get("results", []):
        if r.get("n_services") == n:
            return r.get("contenders", {}).get(key)
    return None


def _ratio(c: dict | None, base: dict | None) -> float | None:
    return c["median_s"] / base["median_s"] if _ok(c) and _ok(base) and base["median_s"] > 0 else None


def add_ratios(doc: dict) -> None:
    """ratio_to_ipvsadm (median / ipvsadm's median) and ratio_to_cdump (to the C floor's) on
    every contender with a time, and on the live rows ratio_to_dump too; a live row is
    compared with the same share's rows."""
    for r in doc.get("results", []):
        cs = r.get("contenders", {})
        for key, c in cs.items():
            prefix = key.split("_", 1)[0] + "_" if key.startswith("live") else ""
            for name, base in (
                ("ratio_to_ipvsadm", "ipvsadm"),
                ("ratio_to_cdump", "cdump"),
                ("ratio_to_dump", "shim_dump"),
            ):
                ratio = _ratio(c, cs.get(prefix + base)) if prefix or name != "ratio_to_dump" else None
                if ratio is None:
                    c.pop(name, None)
                else:
                    c[name] = ratio


def checks(doc: dict) -> list[dict]:
    """The targets, each {name, result: PASS|FAIL|SKIP, detail}, for the exporter as it runs,
    then its time targets again with the cache of compressed families off. Informational only."""
    out = _checks(doc, PRIMARY)
    if any(_get(doc, n, NOCACHE) for n in (1000, 10000)):
        out += [c for c in _checks(doc, NOCACHE, "cache off: ") if "RSS" not in c["name"]]
    return out + _live_checks(doc)


def _live_checks(doc: dict) -> list[dict]:
    """The targets with counters moving (the realistic case)."""
    out = []
    for n, percent, base, limit in (
        (10000, 10, "shim_dump", 1.5),
        (10000, 100, "shim_dump", 2.0),
        (1000, 100, "ipvsadm", 1.0),
    ):
        what = "bare dump" if base == "shim_dump" else "ipvsadm"
        name = f"live {n}x10, {percent}% moving: exporter scrape <= {limit:g}x {what}"
        e, b = _get(doc, n, f"live{percent}_exporter_gzip"), _get(doc, n, f"live{percent}_{base}")
        r = _ratio(e, b)
        if r is None:
            out.append({"name": name, "result": "SKIP", "detail": f"no live data at {n}, {percent}%"})
        else:
            detail = f"{_fmt_t(e['median_s'])} vs {_fmt_t(b['median_s'])} = {r:.2f}x"
            out.append({"name": name, "result": "PASS" if r <= limit else "FAIL", "detail": detail})
    e = _get(doc, 10000, f"live{max(live_shares(doc) or [100])}_exporter_gzip")
    if e and e.get("rss_mb") is not None:
        ok = e["rss_mb"] <= 100
        out.append(
            {
                "name": "live 10000x10: exporter RSS <= 100 MB",
                "result": "PASS" if ok else "FAIL",
                "detail": f"{e['rss_mb']:.1f} MB after the live scrapes",
            }
        )
    return out


NOCACHE = "exporter_gzip_nocache"

# The targets against the C floor of the same run: (size, row prefix, limit) for the gzip
# scrape's time; idle is the row without traffic, liveP_ the row with P% of services moving.
FLOOR_TIME_TARGETS = [
    (10000, "", 1.1),
    (10000, "live10_", 1.2),
    (10000, "live100_", 1.5),
    (50000, "", 2.0),
]
RSS_TARGETS_MB = [(10000, 100.0), (50000, 400.0)]
CPU_PER_DUMP_S = 1.0  # CPU seconds of the exporter per second of the C floor's dump
VS_IPVSADM = (1000, "live100_", 0.5)


def _row_name(prefix: str) -> str:
    return f"{prefix[4:-1]}% moving" if prefix else "idle"


def floor_targets(doc: dict) -> list[dict]:
    """The scrape targets, each {name, result: met | not met | no data, detail}: the
    exporter's gzip scrape against the C floor (bare libnl dump) of the same run and size,
    its CPU per scrape against that dump's time, its RSS, and 1000 x 10 against ipvsadm.
    Informational: a run on a busy machine says what it saw, it does not fail."""
    out = []

    def add(name, value, limit, detail):
        result = "no data" if value is None else ("met" if value <= limit else "not met")
        out.append({"name": name, "result": result, "detail": detail if value is not None else ""})

    for n, prefix, limit in FLOOR_TIME_TARGETS:
        e, f = _get(doc, n, prefix + PRIMARY), _get(doc, n, prefix + "cdump")
        r = _ratio(e, f)
        detail = f"{_fmt_t(e['median_s'])} vs {_fmt_t(f['median_s'])} = {r:.2f}x" if r is not None else ""
        add(f"{n}x10 {_row_name(prefix)}: gzip scrape <= {limit:g}x the C floor", r, limit, detail)
    for n, prefix, _ in FLOOR_TIME_TARGETS:
        if n != 10000:
            continue
        e, f = _get(doc, n, prefix + PRIMARY), _get(doc, n, prefix + "cdump")
        cpu = e.get("cpu_s_per_run") if _ok(e) else None
        per = cpu / f["median_s"] if cpu is not None and _ok(f) and f["median_s"] > 0 else None
        detail = (
            f"{cpu:.3f} CPU s per scrape / {_fmt_t(f['median_s'])} dump = {per:.2f}"
            if per is not None
            else ""
        )
        add(
            f"{n}x10 {_row_name(prefix)}: <= {CPU_PER_DUMP_S:g} CPU-second per second of the C floor's dump",
            per,
            CPU_PER_DUMP_S,
            detail,
        )
    for n, limit in RSS_TARGETS_MB:
        e = _get(doc, n, PRIMARY)
        rss = e.get("rss_mb") if _ok(e) else None
        add(f"{n}x10: exporter RSS <= {limit:g} MB", rss, limit, f"{rss:.1f} MB" if rss is not None else "")
    n, prefix, limit = VS_IPVSADM
    e, a = _get(doc, n, prefix + PRIMARY), _get(doc, n, prefix + "ipvsadm")
    r = _ratio(e, a)
    add(
        f"{n}x10 {_row_name(prefix)}: gzip scrape <= {limit:g}x ipvsadm",
        r,
        limit,
        f"{_fmt_t(e['median_s'])} vs {_fmt_t(a['median_s'])} = {r:.2f}x" if r is not None else "",
    )
    return out


GROWTH_KEYS = [(PRIMARY, "exporter gzip"), ("cdump", "C floor"), ("shim_dump", "shim dump")]


def growth(doc: dict, base_n: int = 1000) -> list[dict]:
    """How time and the exporter's RSS grow with size, from base_n services up (idle rows):
    per size >= base_n, {n, KEY: {median_s, x_time}, rss_mb, x_rss}, x_* relative to base_n."""
    rows = []
    sizes = sorted(r["n_services"] for r in doc.get("results", []) if r["n_services"] >= base_n)
    if base_n not in sizes or len(sizes) < 2:
        return []
    for n in sizes:
        row: dict = {"n": n}
        for key, _ in GROWTH_KEYS:
            c, b = _get(doc, n, key), _get(doc, base_n, key)
            row[key] = {"median_s": c["median_s"] if _ok(c) else None, "x_time": _ratio(c, b)}
        e, b = _get(doc, n, PRIMARY), _get(doc, base_n, PRIMARY)
        rss = e.get("rss_mb") if _ok(e) else None
        base_rss = b.get("rss_mb") if _ok(b) else None
        row["rss_mb"] = rss
        row["x_rss"] = rss / base_rss if rss is not None and base_rss else None
        rows.append(row)
    return rows


def growth_table(doc: dict) -> list[str]:
    rows = growth(doc)
    if not rows:
        return []
    head = " | ".join(f"{label} | x" for _, label in GROWTH_KEYS)
    lines = [
        "",
        f"Growth with size (idle rows; x = relative to {rows[0]['n']} x 10):",
        "",
        f"| N services x 10 dests | {head} | exporter RSS | x |",
        "|---:|" + "---:|---:|" * (len(GROWTH_KEYS) + 1),
    ]

    def x(v):
        return "" if v is None else f"{v:.2f}x"

    for row in rows:
        cells = " | ".join(f"{_fmt_t(row[k]['median_s'])} | {x(row[k]['x_time'])}" for k, _ in GROWTH_KEYS)
        rss = "" if row["rss_mb"] is None else f"{row['rss_mb']:.1f} MB"
        lines.append(f"| {row['n']} | {cells} | {rss} | {x(row['x_rss'])} |")
    return lines


def _cpu(c: dict) -> str:
    return f"{c['cpu_s_per_run']:.3f} s" if c.get("cpu_s_per_run") is not None else ""


def _checks(doc: dict, key: str, prefix: str = "") -> list[dict]:
    out = []

    def add(name, ok, detail):
        out.append(
            {
                "name": prefix + name,
                "result": "SKIP" if ok is None else ("PASS" if ok else "FAIL"),
                "detail": detail,
            }
        )

    e1k, a1k, n1k = _get(doc, 1000, key), _get(doc, 1000, "ipvsadm"), _get(doc, 1000, "node_exporter_gzip")
    p1k = _get(doc, 1000, "exporter_plain") if key == PRIMARY else None
    if _ok(e1k) and _ok(a1k):
        r = e1k["median_s"] / a1k["median_s"]
        extra = f"; plain {p1k['median_s'] / a1k['median_s']:.2f}x" if _ok(p1k) else ""
        add(
            "1000x10: exporter scrape <= 2x ipvsadm",
            r <= 2,
            f"{e1k['median_s'] * 1e3:.1f} ms vs {a1k['median_s'] * 1e3:.1f} ms = {r:.2f}x{extra}",
        )
    else:
        add("1000x10: exporter scrape <= 2x ipvsadm", None, "no data at 1000")
    if _ok(e1k) and _ok(n1k):
        add(
            "1000x10: exporter scrape < node_exporter",
            e1k["median_s"] < n1k["median_s"],
            f"{e1k['median_s'] * 1e3:.1f} ms vs {n1k['median_s'] * 1e3:.1f} ms (both gzip)",
        )
    else:
        add("1000x10: exporter scrape < node_exporter", None, "no data at 1000")
    e10k = _get(doc, 10000, key)
    if _ok(e10k) and _ok(e1k):
        r = e10k["median_s"] / e1k["median_s"]
        add(
            "exporter time(10000)/time(1000) <= 11",
            r <= 11,
            f"{e10k['median_s']:.2f} s / {e1k['median_s']:.3f} s = {r:.1f}",
        )
    else:
        add("exporter time(10000)/time(1000) <= 11", None, "no data at 1000 and 10000")
    if e10k and e10k.get("rss_mb") is not None:
        peak = max(e10k["rss_mb"], e10k.get("rss_after_extra_mb") or 0)
        add(
            "10000x10: exporter RSS <= 100 MB",
            peak <= 100,
            f"{e10k['rss_mb']:.1f} MB after the timed scrapes, "
            f"{e10k.get('rss_after_extra_mb') or 0:.1f} MB after {e10k.get('extra_scrapes')} more",
        )
        g = e10k.get("rss_growth_mb")
        add(
            "10000x10: exporter RSS flat (< 1 MB growth)",
            None if g is None else g < 1,
            f"{g:+.2f} MB over {e10k.get('extra_scrapes')} extra scrapes" if g is not None else "no reading",
        )
    else:
        add("10000x10: exporter RSS <= 100 MB", None, "no data at 10000")
        add("10000x10: exporter RSS flat (< 1 MB growth)", None, "no data at 10000")
    s10k = _get(doc, 10000, "shim_dump")
    if _ok(e10k) and _ok(s10k):
        r = e10k["median_s"] / s10k["median_s"]
        add(
            "10000x10: exporter scrape <= 3x bare dump",
            r <= 3,
            f"{e10k['median_s']:.2f} s vs {s10k['median_s']:.2f} s = {r:.1f}x",
        )
    else:
        add("10000x10: exporter scrape <= 3x bare dump", None, "no data at 10000")
    return out


def check_lines(doc: dict) -> list[str]:
    return [f"{c['result']} {c['name']}: {c['detail']}" for c in doc.get("checks") or checks(doc)]


def _fmt_t(s):
    if s is None:
        return ""
    return f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s"


def machine_line(doc: dict) -> str:
    m = doc.get("machine", {})
    parts = [
        f"kernel {m.get('kernel')}",
        f"{m.get('cpus')} vCPU ({m.get('cpu_model')})",
        f"{m.get('mem_total_mb')} MB",
        m.get("emulation", ""),
    ]
    if m.get("host_cpu_model"):
        parts.append(f"host CPU {m['host_cpu_model']}")
    if m.get("host_loadavg_at_start"):
        parts.append(f"host load average at start {m['host_loadavg_at_start']}")
    if m.get("note"):
        parts.append(m["note"])
    tools = [
        f"ipvsadm {m.get('ipvsadm') or '?'}",
        f"{m.get('node_exporter') or 'node_exporter ?'}",
        f"pyroute2 {m.get('pyroute2') or '?'}",
        f"Python {m.get('python')}",
    ]
    return "; ".join(p for p in parts if p) + ". Tools: " + ", ".join(tools) + "."


def live_table(doc: dict) -> list[str]:
    """The live rows: per size and share of moving services, each contender's median and
    the ratio to the bare dump (the headline) and to ipvsadm."""
    rows = []
    for r in doc.get("results", []):
        n, cs = r["n_services"], r.get("contenders", {})
        for percent in live_shares(doc):
            for key, label in LIVE_CONTENDERS:
                c = cs.get(f"live{percent}_{key}")
                if c is None:
                    continue
                if not _ok(c):
                    rows.append(f"| {n} | {percent}% | {label} | {c.get('status')} | | | | | |")
                    continue
                ratios = " | ".join(
                    "" if c.get(k) is None else f"{c[k]:.2f}x"
                    for k in ("ratio_to_cdump", "ratio_to_dump", "ratio_to_ipvsadm")
                )
                rows.append(
                    f"| {n} | {percent}% | {label} | {_fmt_t(c['median_s'])} | {_cpu(c)} | {c['runs']} | {ratios} |"
                )
    if not rows:
        return []
    return [
        "Live: counters moving between every two scrapes (a round of traffic through IPVS to the "
        "share of services, untimed, before each run).",
        "",
        "| N services x 10 dests | moving | contender | median | CPU/run | runs | x C floor | x shim dump "
        "| x ipvsadm |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        "Idle (no traffic; the exporter's cache of compressed families serves unchanged families):",
        "",
    ]


def namespaces_table(doc: dict) -> list[str]:
    """The namespaces row: K namespaces of N services in one scrape, beside the bare dumps of
    all K and beside the size row of K*N services in one namespace (same run, if made)."""
    ns = doc.get("namespaces")
    if not ns:
        return []
    k, n, total = ns["namespaces"], ns["n_services"], ns["n_services_total"]
    cs = ns.get("contenders", {})
    one = next((r.get("contenders", {}) for r in doc.get("results", []) if r["n_services"] == total), {})
    dump = cs.get("shim_dump")
    rows = []
    for key, label in (
        ("exporter_gzip", "exporter gzip"),
        ("exporter_gzip_nocache", "gzip, cache off"),
        ("shim_dump", "bare dumps"),
    ):
        c = cs.get(key)
        if c is None:
            continue
        if not _ok(c):
            rows.append(f"| {label} | {c.get('status')} | | | | |")
            continue
        to_dump = _ratio(c, dump)
        to_one = _ratio(c, one.get(key))
        rss = f"{c['rss_mb']:.1f} MB" if c.get("rss_mb") is not None else ""
        if c.get("rss_after_extra_mb") is not None and key == PRIMARY:
            rss += f" -> {c['rss_after_extra_mb']:.1f}"
        rows.append(
            f"| {label} | {_fmt_t(c['median_s'])} | {c['runs']} | "
            f"{'' if to_dump is None else f'{to_dump:.2f}x'} | {'' if to_one is None else f'{to_one:.2f}x'} | {rss} |"
        )
    return [
        "",
        f"Several namespaces: {k} namespaces of {n} services x 10 dests, one exporter reading them "
        f"through one glob, one scrape; beside the bare dumps of all {k} and the {total} x 10 row "
        "in one namespace:",
        "",
        f"| contender | median | runs | x bare dumps | x one namespace of {total} | RSS |",
        "|---|---:|---:|---:|---:|---:|",
        *rows,
    ]


def markdown(doc: dict) -> str:
    rows = [
        "| N services x 10 dests | contender | median | min | CPU/run | runs | x C floor | x ipvsadm | samples "
        "| RSS |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    notes = []
    for r in doc.get("results", []):
        n = r["n_services"]
        cs = r.get("contenders", {})
        for key, label in CONTENDERS:
            c = cs.get(key)
            if c is None:
                continue
            if c.get("status") != "ok":
                rows.append(f"| {n} | {label} | {c.get('status')} | | | | | | | |")
                continue
            samples = c.get("samples")
            if samples is not None and c.get("samples_ipvs") is not None:
                samples = f"{samples} ({c['samples_ipvs']} ipvs)"
            rss = c.get("rss_mb")
            rss_s = ""
            if rss is not None:
                rss_s = f"{rss:.1f} MB"
                if c.get("rss_after_extra_mb") is not None and key == PRIMARY:
                    rss_s += f" -> {c['rss_after_extra_mb']:.1f}"
            ratios = " | ".join(
                "" if c.get(k) is None else f"{c[k]:.2f}x" for k in ("ratio_to_cdump", "ratio_to_ipvsadm")
            )
            rows.append(
                f"| {n} | {label} | {_fmt_t(c['median_s'])} | {_fmt_t(c['min_s'])} | {_cpu(c)} | {c['runs']} | "
                f"{ratios} | {'' if samples is None else samples} | {rss_s} |"
            )
            if c.get("runs_note"):
                notes.append(f"- N={n}, {label}: {c['runs_note']}")
    lines = [
        f"Machine: {machine_line(doc)}",
        "",
        *live_table(doc),
        *rows,
        *growth_table(doc),
        *namespaces_table(doc),
        "",
    ]
    lines.append(
        "Times are per scrape or dump, wall-clock, median and min of `runs` after one warm-up. "
        "RSS is VmRSS after the timed scrapes; on the exporter's gzip row `-> X` is after "
        f"{doc.get('config', {}).get('extra_scrapes', 20)} more scrapes. samples = non-comment lines "
        "of the (decoded) body; node_exporter: all of them, then its `node_ipvs_*` ones. "
        "CPU/run: the process's user + system CPU seconds (its process_cpu_seconds_total) over the "
        "timed runs, per run. C floor: bench/cdump.c, one bare libnl dump, timed inside its process."
    )
    setup = []
    for r in doc.get("results", []):
        if not r.get("setup"):
            continue
        e = r.get("contenders", {}).get(PRIMARY) or {}
        answer = (
            f", exporter answered {e['start_to_answer_s']:.0f} s after its start"
            if e.get("start_to_answer_s") is not None
            else ""
        )
        st = r["setup"]
        restore = st.get("iptables_restore_s", st.get("iptables_nft_restore_s", 0.0))
        setup.append(
            f"N={r['n_services']}: ipvsadm -R {st['ipvsadm_restore_s']:.1f} s, "
            f"iptables-{st.get('mangle', 'nft')}-restore ({st.get('proto', 'tcp')}) {restore:.1f} s{answer}, "
            f"whole size {r.get('wall_s', 0):.0f} s"
        )
    if setup:
        lines += [
            "",
            "Set-up and wall time per size (the exporter starts while the namespace is filled): "
            + "; ".join(setup)
            + ".",
        ]
    if notes:
        lines += ["", "Fewer runs:", *notes]
    lines += ["", "Targets (informational):", "", *[f"- {line}" for line in check_lines(doc)]]
    targets = doc.get("targets") or floor_targets(doc)
    lines += [
        "",
        "Scrape targets against the C floor of this run (informational):",
        "",
        *[f"- {t['result']}: {t['name']}" + (f" ({t['detail']})" if t["detail"] else "") for t in targets],
    ]
    if doc.get("duration_s") is not None:
        total = doc.get("make_bench_total_s")
        lines += [
            "",
            f"Bench duration inside the VM: {doc['duration_s']:.0f} s"
            + (f"; whole `make bench` (VM boot included): {total:.0f} s." if total else "."),
        ]
    if doc.get("error"):
        lines += ["", f"**Error:** {doc['error']}"]
    return "\n".join(lines) + "\n"


def plot(doc: dict, path: Path) -> bool:
    home_cfg = Path.home() / ".config"
    if "MPLCONFIGDIR" not in os.environ and not os.access(
        home_cfg if home_cfg.exists() else Path.home(), os.W_OK
    ):
        os.environ["MPLCONFIGDIR"] = tempfile.mkdtemp(prefix="mpl-")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(
            "report: matplotlib not installed, no plot (pip install -r bench/requirements.txt)",
            file=sys.stderr,
        )
        return False
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    markers = "osD^v<>"
    for i, (key, label) in enumerate(CONTENDERS):
        xs, ys, lo = [], [], []
        for r in doc.get("results", []):
            c = r.get("contenders", {}).get(key)
            if _ok(c):
                xs.append(r["n_services"])
                ys.append(c["median_s"])
                lo.append(c["median_s"] - c["min_s"])
        if not xs:
            continue
        style = "-" if key.endswith("gzip") or key in ("shim_dump", "ipvsadm", "pyroute2") else "--"
        ax.errorbar(
            xs,
            ys,
            yerr=[lo, [0] * len(lo)],
            marker=markers[i % len(markers)],
            linestyle=style,
            capsize=3,
            label=label,
        )
    for j, percent in enumerate(live_shares(doc)):
        key = f"live{percent}_exporter_gzip"
        pts = [
            (r["n_services"], r["contenders"][key]["median_s"])
            for r in doc.get("results", [])
            if _ok(r.get("contenders", {}).get(key))
        ]
        if pts:
            ax.plot(
                *zip(*pts),
                marker="x",
                linestyle=":",
                label=f"exporter (gzip), {percent}% moving",
                color=f"C{7 + j}",
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("IPVS services (x 10 destinations each)")
    ax.set_ylabel("time per scrape / dump, median (s); bar down to min")
    m = doc.get("machine", {})
    ax.set_title(
        f"IPVS scrape time vs size - {m.get('emulation', '')}, kernel {m.get('kernel', '')}", fontsize=9
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def write_all(doc: dict, outdir: Path, plot_too: bool = True) -> None:
    outdir = Path(outdir)
    (outdir / "bench.md").write_text(markdown(doc))
    if plot_too:
        plot(doc, outdir / "bench.png")


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="bench.json -> bench.md + bench.png")
    ap.add_argument("dir", help="the directory holding bench.json (bench/run.py --out)")
    ap.add_argument(
        "--total-s",
        type=float,
        help="the whole `make bench` duration (VM boot included), recorded in bench.json",
    )
    args = ap.parse_args(argv)
    outdir = Path(args.dir)
    src = outdir / "bench.json" if outdir.is_dir() else outdir
    outdir = src.parent
    doc = json.loads(src.read_text())
    add_ratios(doc)
    doc["checks"] = checks(doc)
    if args.total_s is not None:
        doc["make_bench_total_s"] = args.total_s
        src.write_text(json.dumps(doc, indent=2) + "\n")
    write_all(doc, outdir)
    print(markdown(doc), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
