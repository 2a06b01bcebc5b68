"""scripts/install-deps never removes, replaces or restarts what a node runs: it simulates the
install first and refuses with one line when apt would. The package state is simulated: fake
dpkg-query, apt-get and id on PATH stand for the host's, and record what the script asked of them.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "install-deps"

# apt-get -s output on a Docker CE node asked for docker.io (Debian 12's apt, trimmed)
DOCKER_CE = """\
NOTE: This is only a simulation!
Reading package lists...
The following packages will be REMOVED:
  containerd.io docker-ce docker-ce-cli
Remv docker-ce [5:27.3.1-1~debian.12~bookworm]
Remv containerd.io [1.7.22-1]
Remv docker-ce-cli [5:27.3.1-1~debian.12~bookworm]
Inst runc (1.1.5+ds1-1+deb12u1 Debian:12.8/stable [amd64])
Inst containerd (1.6.20~ds1-1+b1 Debian:12.8/stable [amd64])
Inst docker.io (20.10.24+dfsg1-1+b3 Debian:12.8/stable [amd64])
Conf runc (1.1.5+ds1-1+deb12u1 Debian:12.8/stable [amd64])
"""
# the same, on a node that runs Debian's docker.io already: its containerd would be upgraded
ENGINE_UPGRADE = """\
Inst containerd [1.6.20~ds1-1] (1.6.20~ds1-1+b1 Debian:12.8/stable [amd64])
Inst valgrind (1:3.19.0-1 Debian:12.8/stable [amd64])
"""
CLEAN = """\
Inst libfoo1 [1.0-1] (1.0-2 Debian:12.8/stable [amd64])
Inst valgrind (1:3.19.0-1 Debian:12.8/stable [amd64])
Conf valgrind (1:3.19.0-1 Debian:12.8/stable [amd64])
"""
UNSOLVABLE = """\
Reading package lists...
E: Unable to correct problems, you have held broken packages.
"""


def _fake_host(tmp_path: Path, installed: set[str], simulation: str, sim_status: int = 0) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "apt.log"
    (tmp_path / "installed").write_text("\n".join(sorted(installed)) + "\n")
    (tmp_path / "simulation").write_text(simulation)
    fakes = {
        "dpkg-query": f'for p; do :; done; grep -qxF "$p" {tmp_path}/installed && printf "install ok installed"; exit 0',
        "apt-get": (
            f'echo "$*" >> {log}\n'
            f'case " $* " in *" -s "*) cat {tmp_path}/simulation; exit {sim_status};; esac\nexit 0'
        ),
        "id": "echo 0",
    }
    for name, body in fakes.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    return dict(os.environ, PATH=f"{bin_dir}:/usr/bin:/bin")


def _run(tmp_path: Path, purpose: str, installed: set[str], simulation: str, status: int = 0):
    env = _fake_host(tmp_path, installed, simulation, status)
    res = subprocess.run(
        [str(SCRIPT), purpose], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    log = tmp_path / "apt.log"
    calls = log.read_text().splitlines() if log.exists() else []
    return res, calls


def _all_but(*absent: str) -> set[str]:
    out = subprocess.run(
        [str(SCRIPT), "--print", "test"], capture_output=True, text=True, check=True, timeout=30
    ).stdout.split()
    return set(out) - set(absent)


def _installs(calls: list[str]) -> list[str]:
    """The apt-get calls that would really install (not the simulation)."""
    return [c for c in calls if "install" in c.split() and "-s" not in c.split()]


def test_refuses_to_replace_docker_ce_with_one_line(tmp_path):
    res, calls = _run(tmp_path, "test", _all_but("docker.io"), DOCKER_CE)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    line = lines[0]
    assert line.startswith("install-deps: refusing:"), line
    for pkg in ("docker-ce", "containerd.io", "docker-ce-cli", "docker.io"):
        assert pkg in line, line
    assert "docs/testing.md" in line
    assert "-s install" in " ".join(calls)  # it did simulate
    assert not _installs(calls), calls  # and changed nothing


def test_refuses_to_upgrade_a_running_engine(tmp_path):
    res, calls = _run(tmp_path, "test", _all_but("valgrind"), ENGINE_UPGRADE)
    assert res.returncode == 1 and "refusing" in res.stderr and "containerd" in res.stderr, res.stderr
    assert "valgrind" not in res.stderr.split("installed ")[1].split(";")[0]
    assert not _installs(calls), calls


def test_installs_when_nothing_installed_is_touched(tmp_path):
    res, calls = _run(tmp_path, "test", _all_but("valgrind"), CLEAN)
    assert res.returncode == 0, res.stderr
    assert "refusing" not in res.stderr
    real = _installs(calls)
    assert len(real) == 1 and real[0].split()[-1] == "valgrind", calls


def test_unsolvable_install_is_one_line(tmp_path):
    res, calls = _run(tmp_path, "test", _all_but("docker.io"), UNSOLVABLE, status=100)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [
        "install-deps: apt cannot install docker.io here: "
        "E: Unable to correct problems, you have held broken packages."
    ]
    assert not _installs(calls), calls


def test_nothing_missing_asks_apt_nothing(tmp_path):
    res, calls = _run(tmp_path, "test", _all_but(), DOCKER_CE)
    assert res.returncode == 0 and res.stderr == "" and calls == []
