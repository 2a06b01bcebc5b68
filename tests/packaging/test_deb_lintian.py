"""lintian on make deb's package: only the tags docs/systemd.md lists, each explained there."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from packaging_lib import REPO


def _documented_tags() -> set[str]:
    """The tags named in docs/systemd.md's list after "`lintian` reports these"."""
    text = (REPO / "docs/systemd.md").read_text()
    section = text.split("`lintian` reports these", 1)[1].split("\n\n", 2)[1]
    return set(re.findall(r"^- `([a-z0-9-]+)[ `]", section, re.M))


def test_lintian_reports_only_the_documented_tags(deb: Path):
    lintian = shutil.which("lintian")
    assert lintian, "lintian is missing: scripts/install-deps test"
    res = subprocess.run(
        [lintian, "--tag-display-limit", "0", "--fail-on", "none", str(deb)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    # errors and warnings, "E: pkg: tag [context]"; --fail-on none: exit 0 unless lintian broke
    found = set(re.findall(r"^[EW]: [^:]+: ([a-z0-9-]+)", res.stdout, re.M))
    assert res.returncode == 0, res.stdout + res.stderr
    documented = _documented_tags()
    assert documented, "docs/systemd.md lists no lintian tags"
    assert found <= documented, f"undocumented lintian tags {sorted(found - documented)}:\n{res.stdout}"
