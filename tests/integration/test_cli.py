"""CLI parsing and usage (no kernel): the original Go exporter's flags, defaults and one-line errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from ingress_ipvs_exporter.flags import listen_address


def run(*args, env=None, timeout=60):
    """The exporter run to its end; env: variables added to this process's environment."""
    return subprocess.run(
        [sys.executable, "-m", "ingress_ipvs_exporter.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=None if env is None else {**os.environ, **env},
    )


def test_help_shows_the_original_usage():
    for flag in ("--help", "-h"):
        res = run(flag)
        assert res.returncode == 0
        out = res.stdout
        assert out.startswith("Usage: ingress_ipvs_exporter")
        for line in (
            "[--listen-address LISTEN-ADDRESS]",
            "[--telemetry-path TELEMETRY-PATH]",
            "[--namespace-path NAMESPACE-PATH]",
            "address to set the http server to listen to",
            "[default: :9100]",
            "endpoint to receive scrape requests from prometheus",
            "[default: /metrics]",
            "absolute path to the network namespace where ipvs is configured",
            "[default: /var/run/docker/netns/ingress_sbox]",
            "--help, -h             display this help and exit",
        ):
            assert line in out, line


def test_no_shell_completion_options():
    """typer's --install-completion/--show-completion are off: not in --help, refused as any unknown flag."""
    assert "completion" not in run("--help").stdout
    for flag in ("--install-completion", "--show-completion"):
        res = run(flag)
        assert res.returncode == 2 and flag in res.stderr and "Traceback" not in res.stderr, res.stderr


@pytest.mark.parametrize(
    "value,expected",
    [
        (":9100", ("", 9100)),
        ("127.0.0.1:9100", ("127.0.0.1", 9100)),
        ("[::1]:80", ("::1", 80)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_listen_address_forms(value, expected):
    parsed = listen_address(value)
    assert (parsed.host, parsed.port) == expected


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--listen-address", "9100"], "--listen-address"),
        (["--listen-address", ":99999"], "--listen-address"),
        (["--listen-address", "::1:80"], "brackets"),
        (["--telemetry-path", "metrics"], "--telemetry-path"),
        (["--telemetry-path", "/my metrics"], "can never match"),
        (["--telemetry-path", "/metrics?x=1"], "can never match"),
        (["--telemetry-path", "/metrics#top"], "can never match"),
        (["--telemetry-path", "/m%20x"], "can never match"),
        (["--telemetry-path", "/métrics"], "can never match"),
        (["--no-such-flag"], "--no-such-flag"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(args, needle):
    res = run(*args)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in res.stderr, res.stderr


def test_port_in_use_is_one_line_and_exit_1():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        res = run("--listen-address", f"127.0.0.1:{port}", "--namespace-path", "/nonexistent")
    assert res.returncode == 1
    errors = [l for l in res.stderr.splitlines() if "level=error" in l]
    assert len(errors) == 1 and "cannot listen on" in errors[0] and "--listen-address" in errors[0]
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("fmt", ["logfmt", "json"])
@pytest.mark.parametrize(
    "name, value",
    [("INGRESS_IPVS_EXPORTER_HTTP_TIMEOUT", "sixty"), ("INGRESS_IPVS_EXPORTER_CACHE_MB", "-1")],
)
def test_a_bad_number_in_the_environment_is_one_log_line_and_exit_2(fmt, name, value):
    """Not a silent default: read once logging is set up, so one error line in the format
    --log.format asks for names the variable, and the exporter exits 2 as for a bad flag.
    (Before, the exporter went on serving: the timeout ends the run and fails the test.)"""
    args = ("--listen-address", "127.0.0.1:0", "--namespace-path", "/nonexistent/ns", "--log.format", fmt)
    res = run(*args, env={name: value}, timeout=20)
    lines = res.stderr.splitlines()
    assert res.returncode == 2 and len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    if fmt == "json":
        record = json.loads(lines[0])
        level, msg = record["level"], record["msg"]
    else:
        m = re.fullmatch(r'ts=\S+ level=(\w+) logger=\S+ msg="(.*)"', lines[0])
        assert m, lines[0]
        level, msg = m.groups()
    assert level == "error" and msg.startswith(f"{name}=") and "is not a" in msg, lines[0]


def test_version():
    res = run("--version")
    assert res.returncode == 0 and res.stdout.startswith("ingress_ipvs_exporter ")


def test_serves_only_the_telemetry_path_over_http():
    import urllib.error
    import urllib.request

    from ipvs_testlib import running_exporter, scrape

    with running_exporter("--namespace-path", "/nonexistent/ns", "--telemetry-path", "/ipvs") as (url, proc):
        base = url.rsplit("/", 1)[0]
        scraped = scrape(base + "/ipvs")
        assert scraped[("ipvs_up", frozenset({("namespace", "/nonexistent/ns")}))] == 0
        assert b'href="/ipvs"' in urllib.request.urlopen(base + "/").read()
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(base + "/metrics")
        assert e.value.code == 404
        req = urllib.request.Request(
            base + "/ipvs", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
        )
        with urllib.request.urlopen(req) as r:
            assert r.headers["Content-Type"].startswith("application/openmetrics-text")
            assert r.read().decode().rstrip().endswith("# EOF")
        assert proc.poll() is None


def test_documented_usage_is_the_real_help():
    import pathlib

    doc = (pathlib.Path(__file__).parents[2] / "docs/configuration.md").read_text()
    shown = "\n".join(line.rstrip() for line in run("--help").stdout.splitlines())
    assert shown in doc, "docs/configuration.md's usage block differs from --help: regenerate it"


def test_namespace_path_that_is_not_a_namespace_is_a_usage_error(tmp_path):
    plain = tmp_path / "plain-file"
    plain.write_text("some text\n")
    res = run("--listen-address", "127.0.0.1:0", "--namespace-path", str(plain))
    assert res.returncode == 2, res.stderr
    lines = [l for l in res.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "--namespace-path" in lines[0] and "not a network namespace" in lines[0]


def test_an_empty_file_is_a_namespace_not_there_yet(tmp_path):
    """Docker creates an empty file at the netns path and then bind-mounts the namespace on it.
    An exporter started in between keeps serving ipvs_up 0 (reason namespace_missing) and retries,
    instead of taking the path for a wrong one (exit 2)."""
    from ipvs_testlib import exporter_log, running_exporter, scrape

    placeholder = tmp_path / "ingress_sbox"
    placeholder.write_text("")
    path = str(placeholder)
    with running_exporter("--namespace-path", path) as (url, proc):
        for _ in range(3):
            scraped = scrape(url)
        assert proc.poll() is None
    assert scraped[("ipvs_up", frozenset({("namespace", path)}))] == 0
    assert (
        scraped[
            ("ipvs_scrape_errors_total", frozenset({("namespace", path), ("reason", "namespace_missing")}))
        ]
        == 3
    )
    said = [line for line in open(exporter_log(url)) if "not yet a network namespace" in line]
    assert len(said) == 1 and "level=warn " in said[0] and path in said[0], said


def test_json_logs_and_the_missing_namespace_is_logged_once():
    import json
    import time
    import urllib.request

    from ipvs_testlib import exporter_log, running_exporter

    with running_exporter("--namespace-path", "/nonexistent/ns", "--log-format", "json") as (url, proc):
        for _ in range(3):
            urllib.request.urlopen(url).read()
        time.sleep(0.2)
    log_path = exporter_log(url)
    records = [json.loads(line) for line in open(log_path) if line.strip()]
    assert {r["level"] for r in records} <= {"info", "warn"}
    missing = [r for r in records if "does not exist" in r["msg"]]
    assert len(missing) == 1 and "--namespace-path" in missing[0]["msg"]


def _one_error(res) -> str:
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 1 and len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    return lines[0]


@pytest.mark.parametrize("flag", ["--help", "--version"])
def test_output_into_a_full_disk_is_one_line_and_exit_1(flag):
    with open("/dev/full", "w") as full:
        res = subprocess.run(
            [sys.executable, "-m", "ingress_ipvs_exporter.cli", flag],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    assert "cannot write to standard output: No space left on device" in _one_error(res)


@pytest.mark.parametrize(
    "fds,redirect,needle",
    [
        ("1", "", "descriptor 3 is not open"),
        ("1", "3</dev/null", "descriptor 3 is not a socket"),
        ("2", "3</dev/null", "descriptor 3 is not a socket"),
    ],
)
def test_systemd_descriptors_that_are_not_sockets_are_one_line(fds, redirect, needle):
    """LISTEN_FDS naming a descriptor that is closed or a plain file (LISTEN_PID set by the
    shell to the pid the exporter keeps through exec)."""
    script = f'LISTEN_PID=$$ LISTEN_FDS={fds} exec "$0" -m ingress_ipvs_exporter.cli "$@" {redirect}'
    res = subprocess.run(
        ["sh", "-c", script, sys.executable, "--web.systemd-socket", "--namespace-path", "/nonexistent"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    line = _one_error(res)
    assert "level=error" in line and needle in line


def _privileged_port() -> int:
    with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as f:
        start = int(f.read())
    assert start > 1, "every port is unprivileged on this host: EACCES cannot be shown"
    return start - 1


def _unprivileged() -> list[str]:
    import os

    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []


@pytest.mark.parametrize(
    "address,said,unsaid",
    [
        ("privileged", "Permission denied (a port below 1024 needs root", "another exporter"),
        ("nosuchhost.invalid:9100", "cannot resolve listen host 'nosuchhost.invalid'", "another exporter"),
        ("192.0.2.1:9100", "(no interface of this host has that address)", "another exporter"),
    ],
)
def test_listen_errors_say_what_failed(address, said, unsaid):
    from ipvs_testlib import exporter_command

    if address == "privileged":
        address = f"127.0.0.1:{_privileged_port()}"
    res = subprocess.run(
        [
            *_unprivileged(),
            exporter_command(),
            "--listen-address",
            address,
            "--namespace-path",
            "/nonexistent",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    line = _one_error(res)
    assert f"cannot listen on {address}" in line and said in line and unsaid not in line, line


def test_server_header_names_the_exporter_not_python():
    import socket
    import urllib.error
    import urllib.request

    from ipvs_testlib import running_exporter

    from ingress_ipvs_exporter import __version__

    with running_exporter("--namespace-path", "/nonexistent/ns") as (url, proc):
        base = url.rsplit("/", 1)[0]
        with urllib.request.urlopen(url) as r:
            served = [r.headers["Server"]]
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(base + "/nowhere")
        served.append(e.value.headers["Server"])
        port = int(base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:  # an error before the app
            s.sendall(b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n")
            head = s.makefile("rb").read().decode("latin-1")
        assert head.startswith("HTTP/1.0 414"), head[:100]
        served += [line.split(":", 1)[1].strip() for line in head.splitlines() if line.startswith("Server:")]
    assert served == [f"ingress_ipvs_exporter/{__version__}"] * 3


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_stop_signal_is_logged_once_and_exits_0(sig):
    import signal

    from ipvs_testlib import exporter_log, running_exporter

    with running_exporter("--namespace-path", "/nonexistent/ns") as (url, proc):
        proc.send_signal(getattr(signal, sig))
        rc = proc.wait(timeout=60)
    assert rc == 0
    log_text = open(exporter_log(url)).read()
    said = [line for line in log_text.splitlines() if f"received {sig}" in line]
    assert len(said) == 1 and said[0].startswith("ts=") and "level=info" in said[0], log_text
    assert "Traceback" not in log_text


@pytest.mark.parametrize("fmt", ["logfmt", "json"])
def test_log_levels_are_named_as_go_names_them(fmt):
    """warn, not Python's warning: the level names of the original exporter's logs."""
    from ipvs_testlib import exporter_log, running_exporter

    with running_exporter(
        "--namespace-path", "/nonexistent/ns", "--log.level", "warn", "--log.format", fmt
    ) as (
        url,
        proc,
    ):
        pass
    lines = [line for line in open(exporter_log(url)) if "does not exist" in line]
    assert len(lines) == 1, lines
    assert ("level=warn " if fmt == "logfmt" else '"level": "warn"') in lines[0], lines


def test_a_missing_namespace_says_what_to_check_not_a_source_tree():
    from ipvs_testlib import exporter_log, running_exporter

    with running_exporter("--namespace-path", "/nonexistent/ns") as (url, proc):
        pass
    said = [line for line in open(exporter_log(url)) if "does not exist" in line]
    assert len(said) == 1, said
    assert "source tree" not in said[0] and "make demo" not in said[0]
    assert "/nonexistent/ns" in said[0] and "--namespace-path" in said[0], said
