"""The packaging tests' shared helpers: where the wheels come from, and subprocesses run in
an environment free of this venv."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUILD_WHEEL = REPO / "scripts" / "build-wheel"
ARCHES = ("x86_64", "aarch64")
# What the wheels are built from: a newer one of these makes dist/'s wheels stale.
SOURCES = [
    "pyproject.toml",
    "setup.py",
    "build_ipvs.py",
    "scripts/build-wheel",
    "csrc/*",
    "src/ingress_ipvs_exporter/**/*.py",
    "LICENSE",
    "LICENSES/*",
]
# What the Debian package is built from besides: make deb's package is used when newer.
DEB_SOURCES = [*SOURCES, "scripts/build-deb", "packaging/deb/*", "packaging/systemd/*"]
TIMEOUT = 600


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without this venv's traces, so a new venv stands alone."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(str(REPO / ".venv"))
    )
    env["COLUMNS"] = "1000"  # pip renders build errors with rich: no wrapping of long lines
    env.update(extra)
    return env


def run(argv, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("env", clean_env())
    kw.setdefault("timeout", TIMEOUT)
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=False, **kw)


def project_version() -> str:
    text = (REPO / "pyproject.toml").read_text()
    return re.search(r'(?m)^version\s*=\s*"([^"]+)"', text).group(1)


def _newest(patterns: list[str]) -> float:
    return max(p.stat().st_mtime for pattern in patterns for p in REPO.glob(pattern))


def fresh_deb() -> Path | None:
    """dist/'s one Debian package when it is newer than every source, else None."""
    debs = list((REPO / "dist").glob("ingress-ipvs-exporter_*_amd64.deb"))
    if len(debs) != 1 or debs[0].stat().st_mtime <= _newest(DEB_SOURCES):
        return None
    return debs[0]


def fresh_wheels() -> dict[str, Path]:
    """dist/'s newest manylinux wheel per architecture, for each architecture whose wheel is newer
    than every source (make deb builds only x86_64's: the rest is built by the caller)."""
    newest_source = _newest(SOURCES)
    found = {}
    for arch in ARCHES:
        wheels = sorted(
            (REPO / "dist").glob(f"ingress_ipvs_exporter-{project_version()}-*manylinux*_{arch}.whl"),
            key=lambda p: p.stat().st_mtime,
        )
        if wheels and wheels[-1].stat().st_mtime > newest_source:
            found[arch] = wheels[-1]
    return found
