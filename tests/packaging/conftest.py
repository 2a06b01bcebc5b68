"""The packaging tests' wheels and Debian package: dist/'s when newer than every source
(make test-packaging makes the package first), else scripts/build-wheel's and
scripts/build-deb's, built once per run. make test runs these tests beside the VM, whose
lifecycle test installs dist/'s package: they must not rebuild it then."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from packaging_lib import ARCHES, BUILD_WHEEL, REPO, fresh_deb, fresh_wheels, run


@pytest.fixture(scope="session")
def wheels() -> dict[str, Path]:
    """architecture -> its manylinux wheel."""
    found = fresh_wheels()
    missing = [a for a in ARCHES if a not in found]
    if not missing:
        return found
    res = run([BUILD_WHEEL, *missing], cwd=REPO, env=dict(os.environ, COLUMNS="1000"), timeout=1800)
    assert res.returncode == 0, f"scripts/build-wheel failed:\n{res.stdout}\n{res.stderr}"
    for line in res.stdout.split():
        path = Path(line)
        assert path.is_file(), f"scripts/build-wheel printed {line!r}, which is not a file"
        found[next(a for a in ARCHES if path.name.endswith(f"_{a}.whl"))] = path
    assert set(found) == set(ARCHES), res.stdout
    return found


@pytest.fixture(scope="session")
def deb() -> Path:
    """make deb's package (dist/ingress-ipvs-exporter_*_amd64.deb), built here only when it
    is missing or stale; the kernel suite's lifecycle test (tests/kernel/test_deb_kernel.py)
    installs this file."""
    found = fresh_deb()
    if found:
        return found
    res = subprocess.run(
        [REPO / "scripts/build-deb"], capture_output=True, text=True, timeout=1800, check=False
    )
    assert res.returncode == 0, res.stdout + res.stderr
    path = Path(res.stdout.split()[-1])
    assert path.is_file(), res.stdout
    return path
