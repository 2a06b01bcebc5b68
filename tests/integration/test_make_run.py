"""make run reinstalls the exporter into its venv whenever a file it is built from is newer than
the last install, wherever that file sits in the package's tree. Asked of make itself with -q
(is the target up to date?) and -W (treat this file as just changed): nothing is built.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "src" / "ingress_ipvs_exporter"
SOURCES = sorted(
    [
        *PACKAGE.rglob("*.py"),
        *(REPO / "csrc").glob("*.[ch]"),
        REPO / "build_ipvs.py",
        REPO / "setup.py",
        REPO / "pyproject.toml",
    ]
)


def _up_to_date(stamp: Path, changed: Path | None) -> bool:
    argv = ["make", "-q", "-C", str(REPO), f"RUN_STAMP={stamp}", str(stamp)]
    if changed is not None:
        argv.append(f"-W{changed.relative_to(REPO)}")
    res = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode in (0, 1), res.stderr
    return res.returncode == 0


def test_a_fresh_install_is_up_to_date(tmp_path):
    stamp = tmp_path / "installed"
    stamp.touch()
    assert _up_to_date(stamp, None)


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_a_changed_source_reinstalls(tmp_path, source):
    stamp = tmp_path / "installed"
    stamp.touch()
    assert not _up_to_date(stamp, source), f"make run would not reinstall after {source} changed"
