"""The `ingress_ipvs_exporter` command: its flags (parsed and checked by typer) and the wiring.

Flags, defaults and usage text follow the original Go exporter so it can be swapped in.
Usage errors print one line and exit 2 (a bad number in an environment variable too, as a
log line); runtime failures to start print one line and exit 1. Once serving, IPVS or
namespace trouble never stops the process: it shows as `ipvs_up 0` and one log line. The
one exception is a thread the shim could not bring back from a namespace (ipvs.ThreadLost),
in any thread: one critical line and exit 70.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
import threading
from typing import NoReturn, Optional

import typer

from . import __version__, flags, memory
from .collector import exporter_collectors
from .ipvs import NotANamespace, ThreadLost
from .logs import PROG, LogFormat, LogLevel, setup_logging
from .namespaces import Namespaces, opener
from .render import gzipstream
from .render.exposition import MetricsApp
from .render.metrics import Options
from .swarm.names import DockerServices
from .usage import HELP as H
from .usage import OriginalUsageCommand
from .web import apps, server
from .web.webconfig import WebConfig

log = logging.getLogger(__name__)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"{PROG} {__version__}")
        raise typer.Exit()


NETNS = "/var/run/docker/netns/ingress_sbox"
CONTEXT = {"help_option_names": ["--help", "-h"]}
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, context_settings=CONTEXT)


# B008: typer reads its options from these defaults
@app.command(cls=OriginalUsageCommand)
def run(
    listen_address: list[flags.ListenAddress] = typer.Option(  # noqa: B008
        [":9100"], "--listen-address", "--web.listen-address", parser=flags.listen_address, help=H["listen"]
    ),
    telemetry_path: str = typer.Option(
        "/metrics", "--telemetry-path", "--web.telemetry-path", callback=flags.telemetry_path, help=H["path"]
    ),
    namespace_path: list[str] = typer.Option([NETNS], "--namespace-path", help=H["ns"]),  # noqa: B008
    destination_labels: Options = typer.Option(  # noqa: B008
        flags.DEFAULT_DESTINATION_LABELS,
        "--destination-labels",
        parser=flags.destination_labels,
        help=H["labels"],
    ),
    docker_host: str = typer.Option("", "--docker-host", callback=flags.docker_host, help=H["docker"]),
    backend_metrics: bool = typer.Option(False, "--backend-metrics", help=H["backend"]),
    original_only: bool = typer.Option(False, "--original-metrics-only", help=H["original"]),
    no_rates: bool = typer.Option(False, "--no-rate-metrics", help=H["rates"]),
    web_config_file: WebConfig = typer.Option(  # noqa: B008
        "", "--web.config.file", parser=flags.web_config, help=H["web"]
    ),
    web_max_requests: int = typer.Option(40, "--web.max-requests", min=0, help=H["max"]),
    web_max_connections: int = typer.Option(512, "--web.max-connections", min=0, help=H["conns"]),
    no_self: bool = typer.Option(False, "--web.disable-exporter-metrics", help=H["self"]),
    systemd_socket: bool = typer.Option(False, "--web.systemd-socket", help=H["systemd"]),
    log_level: LogLevel = typer.Option(LogLevel.info, "--log.level", "--log-level", help=H["level"]),  # noqa: B008
    log_format: LogFormat = typer.Option(  # noqa: B008
        LogFormat.logfmt, "--log.format", "--log-format", help=H["format"]
    ),
    version: Optional[bool] = typer.Option(
        None, "--version", callback=_version, is_eager=True, help="print the version and exit"
    ),
) -> None:
    setup_logging(log_level, log_format)
    try:
        # read now, not at import: a bad value is said in the log format just set up
        client_timeout = max(
            0.1, flags.env_number(server.CLIENT_TIMEOUT_ENV, server.CLIENT_TIMEOUT, "seconds")
        )
        cache_mb = flags.env_number(gzipstream.CACHE_ENV, gzipstream.CACHE_MB, "MB", whole=True)
    except ValueError as e:
        log.error("%s", e)
        raise typer.Exit(2) from None
    gzipstream.CACHE_BUDGET = int(cache_mb) << 20
    threading.excepthook = _thread_ended
    memory.tune()
    options = dataclasses.replace(
        destination_labels, backends=backend_metrics, original_only=original_only, rates=not no_rates
    )
    swarm = DockerServices(docker_host, timeout=10.0) if docker_host else None

    namespaces = Namespaces(namespace_path, opener(options, swarm), options)
    metrics = MetricsApp(namespaces, exporter_collectors(exporter_metrics=not no_self), memory.release)
    try:
        startup_error = namespaces.check()
    except NotANamespace as e:
        raise typer.BadParameter(str(e.strerror), param_hint="--namespace-path") from None

    web = web_config_file
    wsgi = apps.build_app(metrics, telemetry_path, web.users, web.headers, web_max_requests)
    descriptors = server.descriptor_limit()
    bound = server.connection_bound(web_max_connections, descriptors)
    if bound != web_max_connections:
        log.info(
            "--web.max-connections %d lowered to %d: half the %d file descriptors this process may open",
            web_max_connections,
            bound,
            descriptors,
        )
    try:
        addresses = [(a.host, a.port) for a in listen_address]
        connections = server.Connections(bound)
        servers = server.listen(addresses, systemd_socket, wsgi, web.tls, connections, client_timeout)
    except server.ListenError as e:
        log.error("%s", e)
        raise typer.Exit(1) from None
    where = ", ".join(flags.ListenAddress.of(s.server_address) for s in servers)
    scheme = "https" if web.tls else "http"
    log.info(
        "%s %s listening on %s (%s%s), telemetry path %s, namespace %s",
        *(PROG, __version__, where, scheme, ", basic auth" if web.users else "", telemetry_path),
        ", ".join(p or "(current)" for p in namespaces.patterns),
    )
    if startup_error is not None:
        # the error names the namespace path and --namespace-path: what a node's operator checks
        log.warning("%s. Serving ipvs_up 0 until IPVS is readable.", startup_error.strerror)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stop)
    try:
        server.serve_all(servers)
    except _Stopped as e:
        # a stop asked for is a clean exit (0), as node_exporter's; one line says why
        log.info("received %s, shutting down", e.signal_name)
    finally:
        namespaces.close()
        if swarm is not None:
            swarm.close()


class _Stopped(BaseException):
    """Not an Exception: socketserver's request handling catches those and would swallow a stop."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name


def _stop(signum: int, frame: object) -> None:
    """SIGTERM and SIGINT: leave serve_all (in the main thread) through its finally."""
    raise _Stopped(signal.Signals(signum).name)


def _lost(e: ThreadLost) -> NoReturn:
    """One line and exit 70 (EX_SOFTWARE) at once: os._exit, so that no other thread goes on
    with a thread that lives in another namespace, and no clean-up runs in one."""
    log.critical("%s", e)
    logging.shutdown()
    os._exit(70)


def _thread_ended(args: threading.ExceptHookArgs) -> None:
    """threading.excepthook: a lost thread ends the process; anything else as Python does."""
    if isinstance(args.exc_value, ThreadLost):
        _lost(args.exc_value)
    threading.__excepthook__(args)


def main(argv: Optional[list[str]] = None) -> None:
    """Entry point: one line and exit 2 for usage errors, exit 1 for runtime failures."""
    try:
        rc = app(args=argv, prog_name=PROG, standalone_mode=False)
    except typer.Exit as e:
        rc = e.exit_code
    except typer.Abort:
        rc = 130
    except ThreadLost as e:  # at start-up, in this thread
        _lost(e)
    except typer.TyperException as e:  # click's ClickException (UsageError: exit_code 2)
        message = " ".join(e.format_message().split())
        hint = f" (see '{PROG} --help')" if e.exit_code == 2 else ""
        typer.echo(f"{PROG}: error: {message}{hint}", err=True)
        rc = e.exit_code
    except OSError as e:  # --help or --version into a full disk or a closed pipe
        rc = _output_failed(e)
    try:
        sys.stdout.flush()
    except OSError as e:
        rc = _output_failed(e)
    sys.exit(rc or 0)


def _output_failed(e: OSError) -> int:
    """One line on stderr, exit 1; stdout goes to /dev/null so the exit flush cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    print(f"{PROG}: error: cannot write to standard output: {e.strerror or e}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    main()
