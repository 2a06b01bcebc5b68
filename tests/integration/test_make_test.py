"""make test builds the Debian package once, before the VM that installs it, and the host's
suites after (or beside) the VM read that package: a second build would cost a minute and,
with TEST_JOBS=2, replace the file while the VM may be reading it. Asked of make itself with
-n (print the commands, run none but the recursive makes, which print theirs).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_make_test_builds_the_debian_package_once(jobs):
    res = subprocess.run(
        ["make", "-n", "-C", str(REPO), f"TEST_JOBS={jobs}", "test"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    builds = [line for line in res.stdout.splitlines() if line.strip() == "scripts/build-deb"]
    assert len(builds) == 1, res.stdout
