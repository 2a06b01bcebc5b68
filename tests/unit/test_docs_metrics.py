"""docs/metrics.md lists every family the exporter defines, with its type and help text verbatim."""

from __future__ import annotations

import pathlib
import re

from ingress_ipvs_exporter.render import metrics

ROOT = pathlib.Path(__file__).parents[2]
SRC = ROOT / "src/ingress_ipvs_exporter"


def documented() -> dict[str, tuple[str, str]]:
    """family -> (type, help) from the reference's table rows."""
    rows = re.findall(
        r"^\| `(ipvs_\w+)` \| (\w+) \| [^|]* \| (.+?) \|", (ROOT / "docs/metrics.md").read_text(), re.M
    )
    return {name: (kind, help_text) for name, kind, help_text in rows}


def defined() -> dict[str, tuple[str, str]]:
    """family -> (type, help) from the definitions in code: metrics.py's data and the
    families built with prometheus_client in the collectors (a counter's name gains _total)."""
    found = {d.name: (d.kind.value, d.help) for d in metrics.METRICS}
    found |= {d.name: ("gauge", d.help) for d in vars(metrics).values() if isinstance(d, metrics.GaugeDef)}
    pattern = re.compile(r'(Gauge|Counter)MetricFamily\(\s*"(ipvs_\w+)",\s*"([^"]+)"')
    for path in SRC.rglob("*.py"):
        for kind, name, help_text in pattern.findall(path.read_text()):
            suffix = "_total" if kind == "Counter" else ""
            found[name + suffix] = (kind.lower(), help_text)
    return found


def test_every_family_is_documented_with_its_type_and_help():
    code, docs = defined(), documented()
    assert len(code) >= 50
    assert {n: code[n] for n in code if docs.get(n) != code[n]} == {}
    assert set(docs) == set(code), set(docs) ^ set(code)
