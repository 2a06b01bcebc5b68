"""The real-swarm fixture: one swarm per iptables backend, shared by every swarm module."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from ipvs_testlib import in_vm, unavailable
from swarmlib import BACKENDS, LAB, LAB_SOURCE, STATE, Lab, _lab_cmd


@pytest.fixture(scope="session", params=BACKENDS)
def lab(request):
    """A single-node swarm with service_1..3, the iptables alternative set to the param
    before dockerd starts; torn down when the session moves on to the other backend.

    A lab takes minutes to come up under emulation, so the modules share it: the ones that
    leave it as it came up run first on it, and the ones that change it are marked
    swarm_lab_order (see pytest_collection_modifyitems)."""
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


def _lab_order(item) -> tuple[int, int] | None:
    """(backend, order on that backend's lab) of a test on a lab, None for any other test."""
    callspec = getattr(item, "callspec", None)
    if callspec is None or "lab" not in callspec.params:
        return None
    mark = item.get_closest_marker("swarm_lab_order")
    return BACKENDS.index(callspec.params["lab"]), mark.args[0] if mark else 0


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items):
    """After pytest has grouped the tests by lab (a session-scoped parameter), order each
    lab's tests: a test marked swarm_lab_order(n) runs after those with a lower n (default 0),
    file order otherwise, so that what changes the lab or stops its dockerd comes last."""
    slots = [i for i, item in enumerate(items) if _lab_order(item) is not None]
    ordered = sorted((items[i] for i in slots), key=_lab_order)
    for i, item in zip(slots, ordered):
        items[i] = item


def pytest_runtest_setup(item):
    """swarm2 (the two-node swarm) follows the kernel/swarm policy of tests/conftest.py."""
    if item.get_closest_marker("swarm2") and not in_vm():
        unavailable("swarm2 test needs the IPVS VM: run it with 'make test-swarm-2node'")
