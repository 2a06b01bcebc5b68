"""Fixtures of the integration tests (the exporter run as a process, real HTTP over loopback)."""

from __future__ import annotations

import subprocess

import pytest


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    """A folder holding a self-signed key.pem and cert.pem for 127.0.0.1 and localhost."""
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout",
            str(d / "key.pem"),
            "-out",
            str(d / "cert.pem"),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return d
