"""The real-swarm fixture: one swarm per iptables backend, shared by a module's tests."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from ipvs_testlib import in_vm, unavailable
from swarmlib import LAB, LAB_SOURCE, STATE, Lab, _lab_cmd


@pytest.fixture(scope="module", params=["nft", "legacy"])
def lab(request):
    """A single-node swarm with service_1..3, the iptables alternative set to the param
    before dockerd starts; torn down after the module's tests for that backend."""
    backend = request.param
    shutil.copyfile(LAB_SOURCE, LAB)
    try:
        up = _lab_cmd("up", "--backend", backend, "--state", STATE, timeout=1200)
    except subprocess.TimeoutExpired:
        _lab_cmd("down", "--state", STATE, timeout=600)
        pytest.fail("swarm-lab up did not finish in 1200 s")
    if up.returncode != 0:
        _lab_cmd("down", "--state", STATE, timeout=600)
        pytest.fail(f"swarm-lab up failed (exit {up.returncode}); see its log in the captured stderr")
    env = dict(line.split("=", 1) for line in up.stdout.splitlines() if "=" in line)
    try:
        yield Lab(env)
    finally:
        _lab_cmd("down", "--state", STATE, timeout=600)


def pytest_runtest_setup(item):
    """swarm2 (the two-node swarm) follows the kernel/swarm policy of tests/conftest.py."""
    if item.get_closest_marker("swarm2") and not in_vm():
        unavailable("swarm2 test needs the IPVS VM: run it with 'make test-swarm-2node'")
