"""The packaging tests' wheels: scripts/build-wheel's, built once per run (or dist/'s when
newer than every source)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from packaging_lib import ARCHES, BUILD_WHEEL, REPO, fresh_wheels, run


@pytest.fixture(scope="session")
def wheels() -> dict[str, Path]:
    """architecture -> its manylinux wheel."""
    found = fresh_wheels()
    if found:
        return found
    res = run([BUILD_WHEEL, *ARCHES], cwd=REPO, env=dict(os.environ, COLUMNS="1000"), timeout=1800)
    assert res.returncode == 0, f"scripts/build-wheel failed:\n{res.stdout}\n{res.stderr}"
    built = {}
    for line in res.stdout.split():
        path = Path(line)
        assert path.is_file(), f"scripts/build-wheel printed {line!r}, which is not a file"
        built[next(a for a in ARCHES if path.name.endswith(f"_{a}.whl"))] = path
    assert set(built) == set(ARCHES), res.stdout
    return built
