"""Fixtures for kernel tests: throw-away network namespaces inside the IPVS VM."""

import itertools
import os

import pytest
from ipvs_testlib import sh

_ids = itertools.count()


@pytest.fixture
def netns():
    """A fresh named network namespace; yields its path under /run/netns."""
    name = f"t{os.getpid()}_{next(_ids)}"
    sh("ip", "netns", "add", name)
    sh("ip", "link", "set", "lo", "up", ns=name)
    try:
        yield name, f"/run/netns/{name}"
    finally:
        sh("ip", "netns", "del", name, check=False)
