"""exporter-toolkit's habits, over real HTTP on loopback: its flag spellings, several listen
addresses, systemd socket activation (the socket handed over as systemd does: fd 3 and
LISTEN_PID/LISTEN_FDS), no exporter self-metrics on request, and its kind of landing page.
The real systemd is in tests/kernel/test_capabilities_kernel.py."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request

import pytest
from ipvs_testlib import exporter_command, free_port, running_exporter, stop_process

NS = "/nonexistent/ns"


def get(url: str) -> tuple[int, str, str]:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.status, r.headers.get("Content-Type", ""), r.read().decode()


def test_toolkit_log_spellings_and_the_old_ones():
    for flags in (
        ["--log.level", "warn", "--log.format", "json"],
        ["--log-level", "warning", "--log-format", "json"],
    ):
        with running_exporter("--namespace-path", NS, *flags) as (url, proc):
            get(url)
        # at warn, the "listening" info line is not logged; the namespace warning is, in JSON
        out = open(f"/tmp/exporter-{url.split(':')[2].split('/')[0]}.log").read()
        assert '"level": "warn"' in out and "listening on" not in out, out


def test_bad_log_level_is_a_usage_error():
    res = subprocess.run(
        [exporter_command(), "--log.level", "loud"], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "--log.level" in res.stderr


def test_every_listen_address_given_serves():
    second = free_port()
    with running_exporter("--namespace-path", NS, "--web.listen-address", f"[::1]:{second}") as (url, _):
        assert get(url)[0] == 200
        status, _, body = get(f"http://[::1]:{second}/metrics")
        assert status == 200 and f'ipvs_up{{namespace="{NS}"}} 0.0' in body


def test_one_unusable_listen_address_stops_start_up():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        res = subprocess.run(
            [
                exporter_command(),
                "--listen-address",
                f"127.0.0.1:{free_port()}",
                "--listen-address",
                f"127.0.0.1:{taken}",
                "--namespace-path",
                NS,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert f"127.0.0.1:{taken}" in res.stderr and "Traceback" not in res.stderr


def test_systemd_socket_is_served():
    """The socket is made and bound here, as systemd does, and passed as fd 3 with
    LISTEN_PID set to the exporter's own pid (sh's exec keeps it) and LISTEN_FDS=1."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    # the socket comes in as stdin and sh moves it to fd 3, then gives stdin /dev/null
    cmd = (
        f"export LISTEN_PID=$$ LISTEN_FDS=1; exec {exporter_command()} --web.systemd-socket "
        f"--namespace-path {NS} 3<&0 0</dev/null"
    )
    proc = subprocess.Popen(
        ["sh", "-c", cmd], stdin=listener, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    listener.close()
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                status, _, body = get(f"http://127.0.0.1:{port}/metrics")
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read().decode()
                time.sleep(0.2)
        assert status == 200 and f'ipvs_up{{namespace="{NS}"}} 0.0' in body
    finally:
        stop_process(proc)


def test_systemd_socket_without_systemd_is_one_line_and_exit_1():
    res = subprocess.run(
        [exporter_command(), "--web.systemd-socket", "--namespace-path", NS],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 1, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "--web.systemd-socket" in lines[0] and "Traceback" not in res.stderr


@pytest.mark.parametrize("disabled", [False, True])
def test_exporter_metrics_can_be_disabled(disabled):
    flags = ["--web.disable-exporter-metrics"] if disabled else []
    with running_exporter("--namespace-path", NS, *flags) as (url, _):
        body = get(url)[2]
    assert ("\nprocess_cpu_seconds_total " in body) is not disabled
    assert ("\nipvs_exporter_build_info{" in body) is not disabled
    assert f'ipvs_up{{namespace="{NS}"}} 0.0' in body


def test_landing_page_names_the_exporter_its_version_and_links():
    from ingress_ipvs_exporter import __version__

    with running_exporter("--namespace-path", NS, "--telemetry-path", "/x/metrics") as (url, _):
        root = url[: -len("/metrics")]
        status, ctype, page = get(root + "/")
        assert status == 200 and ctype.startswith("text/html")
        assert "<h1>ingress_ipvs_exporter</h1>" in page and f"Version {__version__}" in page
        assert '<a href="/x/metrics">Metrics</a>' in page


def test_no_documentation_route():
    """The README's relative links cannot work from the exporter: the landing page links to the
    metrics only, and /docs is a 404 like any other path."""
    from ingress_ipvs_exporter.web.apps import landing_page, make_router

    assert b"/docs" not in landing_page("/metrics") and b"<a href=" in landing_page("/metrics")
    seen = []
    router = make_router(None, "/metrics")  # type: ignore[arg-type]  # /metrics is not asked for
    body = b"".join(router({"REQUEST_METHOD": "GET", "PATH_INFO": "/docs"}, lambda s, h: seen.append(s)))
    assert seen == ["404 Not Found"] and body == b"404: try /metrics\n"
