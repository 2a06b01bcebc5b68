"""Shared test policy: suites that need the real kernel run inside the project's VM.

Outside the VM (IN_IPVS_VM unset) kernel and swarm tests are skipped for a developer,
but under CI=true a kernel suite that cannot run is a failure, never a skip.
"""

import os

from ipvs_testlib import unavailable

IN_VM = os.environ.get("IN_IPVS_VM") == "1"


def pytest_runtest_setup(item):
    for mark in ("kernel", "swarm"):
        if item.get_closest_marker(mark) and not IN_VM:
            unavailable(f"{mark} test needs the IPVS VM: run it with 'make test'")
