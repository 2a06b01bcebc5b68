"""The `ingress_ipvs_exporter` command: flags, logging, HTTP serving.

Flags, defaults and usage text follow the original Go exporter so it can be swapped in.
Usage errors print one line and exit 2; runtime failures to start print one line and
exit 1. Once serving, IPVS or namespace trouble never stops the process: it shows as
`ipvs_up 0` and one log line.
"""

from __future__ import annotations

import errno
import json
import logging
import socket
import ssl
import sys
import time
from socketserver import ThreadingMixIn
from typing import Optional
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import typer

from . import __version__, memory, webconfig
from .collector import IPVSCollector, exporter_registry
from .docker import DockerServices, parse_docker_host
from .exposition import MetricsApp
from .ipvs import Handle, IPVSError, NamespaceNotFound, NotANamespace
from .metrics import DEST_LABEL_CHOICES, Options
from .portmap import PortMap

PROG = "ingress_ipvs_exporter"
log = logging.getLogger(PROG)

# ---- flags ------------------------------------------------------------------


def parse_listen_address(value: str) -> tuple[str, int]:
    """':9100' -> ('', 9100) (all interfaces); 'host:port'; '[v6]:port'."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise typer.BadParameter(
            f"'{value}' is not HOST:PORT (e.g. ':9100', '127.0.0.1:9100', '[::1]:9100')",
            param_hint="--listen-address",
        )
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise typer.BadParameter(
            f"'{value}': put an IPv6 host in brackets, e.g. '[::1]:9100'", param_hint="--listen-address"
        )
    return host, int(port)


def parse_destination_labels(value: str, backends: bool = False) -> Options:
    """'address,destination_port' (default), one of them, or 'none' (no per-destination series)."""
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    if names in ((), ("none",)):
        return Options(destination_labels=(), per_destination=False, backends=backends)
    bad = [n for n in names if n not in DEST_LABEL_CHOICES]
    if bad:
        raise typer.BadParameter(
            f"unknown label '{bad[0]}': use a comma list of {', '.join(DEST_LABEL_CHOICES)}, or 'none'",
            param_hint="--destination-labels",
        )
    return Options(destination_labels=names, backends=backends)


def check_telemetry_path(value: str) -> str:
    if not value.startswith("/"):
        raise typer.BadParameter(
            f"'{value}' must start with '/', e.g. /metrics", param_hint="--telemetry-path"
        )
    return value


# ---- usage text in the seed's style ------------------------------------------


class SeedStyleCommand(typer.core.TyperCommand):
    """Prints the original exporter's usage layout, generated from the declared options."""

    def format_help(self, ctx, formatter) -> None:
        opts = [p for p in self.get_params(ctx) if p.param_type_name == "option"]
        lines = [f"Usage: {PROG} "]
        for p in opts:
            if p.name in ("help", "version"):
                continue
            metavar = "" if p.is_flag else " " + p.name.upper().replace("_", "-")
            lines.append(f"\t[{p.opts[0]}{metavar}] ")
        lines += ["", "Options:"]
        for p in opts:
            if p.is_flag or p.name == "help":
                names = ", ".join(sorted(p.opts + p.secondary_opts, key=len, reverse=True))
                text = "display this help and exit" if p.name == "help" else p.help
                lines.append(f"  {names:<22} {text}")
            else:
                lines.append(f"  {p.opts[0]} {p.name.upper().replace('_', '-')}")
                lines.append(f"                         {p.help} ")
                lines.append(f"                         [default: {p.default}]")
                if len(p.opts) > 1:
                    lines.append(f"                         alias: {', '.join(p.opts[1:])}")
            lines.append("")
        formatter.write("\n".join(lines).rstrip() + "\n")


# ---- logging ------------------------------------------------------------------


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        msg = record.getMessage().replace("\\", "\\\\").replace('"', '\\"')
        return f'ts={ts} level={record.levelname.lower()} logger={record.name} msg="{msg}"'


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        return json.dumps(
            {"ts": ts, "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage()}
        )


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


# ---- HTTP -------------------------------------------------------------------------


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    timeout = 60  # seconds a client may stall mid-request before its connection is dropped

    def log_message(self, format: str, *args) -> None:
        log.debug("%s %s", self.address_string(), format % args)


def make_app(metrics, telemetry_path: str):
    """WSGI app: `metrics` at telemetry_path, a small landing page at /, 404 elsewhere."""
    landing = (
        f"<html><head><title>{PROG}</title></head><body><h1>{PROG}</h1>"
        f'<p><a href="{telemetry_path}">Metrics</a></p></body></html>'
    ).encode()

    def app(environ, start_response):
        path = environ.get("PATH_INFO") or "/"
        if path == telemetry_path:
            gzip = "gzip" in environ.get("HTTP_ACCEPT_ENCODING", "")
            chunks, content_type = metrics.stream(environ.get("HTTP_ACCEPT", ""), gzip)
            headers = [("Content-Type", content_type)] + ([("Content-Encoding", "gzip")] if gzip else [])
            start_response("200 OK", headers)
            return chunks if environ.get("REQUEST_METHOD") != "HEAD" else iter(())
        if path == "/":
            start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
            return [landing]
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [f"404: try {telemetry_path}\n".encode()]

    return app


def _server_class(host: str, tls: ssl.SSLContext | None = None):
    """An IPv6 socket for '' / '::' / v6 literals so that ':9100' serves v4 and v6 alike."""
    family = socket.AF_INET
    if host == "" and socket.has_ipv6:
        family = socket.AF_INET6
    elif host:
        try:
            family = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0][0]
        except socket.gaierror as e:
            raise OSError(f"cannot resolve listen host '{host}': {e.strerror}") from None

    class Server(_Server):
        address_family = family

        def server_bind(self):
            if family == socket.AF_INET6:
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            super().server_bind()

        def get_request(self):
            conn, addr = super().get_request()
            if tls is not None:
                # the handshake happens in the connection's own thread, on first read, so a
                # slow or plain-HTTP client cannot hold up the accept loop
                conn = tls.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
            return conn, addr

    return Server


def serve(host: str, port: int, app, tls: ssl.SSLContext | None = None) -> WSGIServer:
    bind_host = host or ("::" if socket.has_ipv6 else "0.0.0.0")
    try:
        return make_server(
            bind_host, port, app, server_class=_server_class(host, tls), handler_class=_QuietHandler
        )
    except OSError:
        if host == "" and bind_host == "::":  # no IPv6 on this host
            return make_server(
                "0.0.0.0", port, app, server_class=_server_class("0.0.0.0", tls), handler_class=_QuietHandler
            )
        raise


# ---- the command --------------------------------------------------------------------

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["--help", "-h"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"{PROG} {__version__}")
        raise typer.Exit()


def _one_of(*choices: str):
    def check(value: str) -> str:
        if value not in choices:
            raise typer.BadParameter(f"'{value}' is not one of {', '.join(choices)}")
        return value

    return check


@app.command(cls=SeedStyleCommand)
def run(
    listen_address: str = typer.Option(
        ":9100",
        "--listen-address",
        "--web.listen-address",
        help="address to set the http server to listen to",
    ),
    telemetry_path: str = typer.Option(
        "/metrics",
        "--telemetry-path",
        "--web.telemetry-path",
        help="endpoint to receive scrape requests from prometheus",
    ),
    namespace_path: str = typer.Option(
        "/var/run/docker/netns/ingress_sbox",
        "--namespace-path",
        help="absolute path to the network namespace where ipv is configured",
    ),
    destination_labels: str = typer.Option(
        ",".join(DEST_LABEL_CHOICES),
        "--destination-labels",
        help="labels kept on per-destination series, summing series that merge; 'none' drops them",
    ),
    docker_host: str = typer.Option(
        "",
        "--docker-host",
        help="Docker Engine API to name swarm services, e.g. unix:///var/run/docker.sock (off when empty)",
    ),
    backend_metrics: bool = typer.Option(
        False,
        "--backend-metrics",
        help="also export ipvs_backend_* (every detail of every real server of every kind of service)",
    ),
    web_config_file: str = typer.Option(
        "",
        "--web.config.file",
        help="TLS and basic auth config in the Prometheus exporter-toolkit format (off when empty)",
    ),
    log_level: str = typer.Option(
        "info",
        "--log-level",
        callback=_one_of("debug", "info", "warning", "error"),
        help="log messages at this level and above: debug, info, warning, error",
    ),
    log_format: str = typer.Option(
        "logfmt", "--log-format", callback=_one_of("logfmt", "json"), help="log line format: logfmt or json"
    ),
    version: Optional[bool] = typer.Option(
        None, "--version", callback=_version, is_eager=True, help="print the version and exit"
    ),
) -> None:
    host, port = parse_listen_address(listen_address)
    check_telemetry_path(telemetry_path)
    options = parse_destination_labels(destination_labels, backend_metrics)
    if docker_host:
        try:
            parse_docker_host(docker_host)
        except ValueError as e:
            raise typer.BadParameter(str(e)) from None
    try:
        web = webconfig.load(web_config_file) if web_config_file else webconfig.WebConfig()
    except webconfig.WebConfigError as e:
        raise typer.BadParameter(str(e)) from None
    setup_logging(log_level, log_format)
    memory.tune()
    swarm = DockerServices(docker_host, timeout=10.0) if docker_host else None

    handle = Handle(namespace_path)
    ports = PortMap(namespace_path)
    collector = IPVSCollector(
        namespace_path, handle.snapshot, ports.lookup, options, info=handle.info, swarm=swarm
    )
    metrics = MetricsApp(collector, exporter_registry(collector))
    try:
        collector.check()
        startup_error = None
    except NotANamespace as e:
        raise typer.BadParameter(e.strerror, param_hint="--namespace-path") from None
    except IPVSError as e:
        startup_error = e

    try:
        app = make_app(metrics, telemetry_path)
        server = serve(host, port, webconfig.BasicAuth(app, web.users) if web.users else app, web.tls)
    except OSError as e:
        log.error(
            "cannot listen on %s: %s (is another exporter on that port? set --listen-address)",
            listen_address,
            e.strerror or e,
        )
        raise typer.Exit(1) from None

    log.info(
        "%s %s listening on %s (%s%s), telemetry path %s, namespace %s",
        PROG,
        __version__,
        listen_address,
        "https" if web.tls else "http",
        ", basic auth" if web.users else "",
        telemetry_path,
        namespace_path or "(current)",
    )
    if startup_error is not None:
        hint = (
            " No swarm here? 'make demo' in the source tree shows it on a real one."
            if isinstance(startup_error, NamespaceNotFound) and startup_error.errno == errno.ENOENT
            else ""
        )
        log.warning("%s. Serving ipvs_up 0 until IPVS is readable.%s", startup_error.strerror, hint)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        handle.close()
        if swarm is not None:
            swarm.close()


def main(argv: Optional[list[str]] = None) -> None:
    """Entry point: one line and exit 2 for usage errors, exit 1 for runtime failures."""
    try:
        rc = app(args=argv, prog_name=PROG, standalone_mode=False)
    except typer.Exit as e:
        rc = e.exit_code
    except typer.Abort:
        rc = 130
    except Exception as e:
        # typer's usage errors (bad flag, bad value) carry exit_code 2 and a message
        if not (hasattr(e, "format_message") and getattr(e, "exit_code", None) == 2):
            raise
        message = " ".join(e.format_message().split())
        typer.echo(f"{PROG}: error: {message} (see '{PROG} --help')", err=True)
        rc = 2
    sys.exit(rc or 0)


if __name__ == "__main__":
    main()
