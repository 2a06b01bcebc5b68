"""What the exporter's modules may contain: test-only helpers live in testing.py alone, and
nothing else in the package imports it (so what a node runs is what the exporter needs)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import ingress_ipvs_exporter

PACKAGE = Path(ingress_ipvs_exporter.__file__).parent

# Names that only tests and bench tools want; testing.py has them as functions.
TEST_ONLY = {"wait_idle", "last_error", "as_services", "blocks", "build_snapshot"}
# Methods that were test-only on these classes (a name alone is too common to ban everywhere).
TEST_ONLY_METHODS = {
    "Snapshot": {"build", "service", "destination"},
    "_Rows": {"stats"},
    "Renderer": {"render"},
    "MetricsApp": {"body"},
}
TEST_ONLY_CLASSES = {"Stats", "Destination", "Service"}  # testing.py's NamedTuples


def imports_testing(node: ast.AST) -> bool:
    """Whether an import statement imports the testing module or something from it."""
    if isinstance(node, ast.Import):
        return any(a.name.split(".")[-1] == "testing" for a in node.names)
    if isinstance(node, ast.ImportFrom):
        module = (node.module or "").split(".")
        return module[-1] == "testing" or (
            module[0] in ("", "ingress_ipvs_exporter") and any(a.name == "testing" for a in node.names)
        )
    return False


def offences(root: Path) -> list[str]:
    """Every place in the package below root that imports testing or holds a test-only helper."""
    found = []
    for path in sorted(root.rglob("*.py")):
        name = path.relative_to(root).as_posix()
        if name == "testing.py":
            continue
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            where = f"{name}:{getattr(node, 'lineno', 0)}"
            if imports_testing(node):
                found.append(f"{where} imports testing")
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in TEST_ONLY:
                found.append(f"{where} defines {node.name}")
            elif isinstance(node, ast.Attribute) and node.attr in TEST_ONLY:
                found.append(f"{where} uses .{node.attr}")
            elif isinstance(node, ast.ClassDef):
                if node.name in TEST_ONLY_CLASSES:
                    found.append(f"{where} defines class {node.name}")
                banned = TEST_ONLY_METHODS.get(node.name, set())
                found += [
                    f"{name}:{f.lineno} defines {node.name}.{f.name}"
                    for f in node.body
                    if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) and f.name in banned
                ]
    return found


def test_no_module_but_testing_holds_or_imports_test_helpers():
    assert offences(PACKAGE) == []


@pytest.mark.parametrize(
    "source, offence",
    [
        ("from .testing import build_snapshot\n", "imports testing"),
        ("from .. import testing\n", "imports testing"),
        ("import ingress_ipvs_exporter.testing\n", "imports testing"),
        ("class Snapshot:\n    @classmethod\n    def build(cls, s): ...\n", "defines Snapshot.build"),
        ("class MetricsApp:\n    def body(self, accept): ...\n", "defines MetricsApp.body"),
        ("class Cache:\n    @property\n    def last_error(self): ...\n", "defines last_error"),
        ("def f(cache):\n    return cache.wait_idle(1)\n", "uses .wait_idle"),
        ("from typing import NamedTuple\nclass Stats(NamedTuple): ...\n", "defines class Stats"),
    ],
)
def test_the_check_finds_a_helper_back_in_src(tmp_path, source, offence):
    (tmp_path / "testing.py").write_text("def wait_idle(c, t): ...\n")  # allowed there
    (tmp_path / "web").mkdir()
    (tmp_path / "web" / "mod.py").write_text(source)
    assert [o.split(" ", 1)[1] for o in offences(tmp_path)] == [offence]
