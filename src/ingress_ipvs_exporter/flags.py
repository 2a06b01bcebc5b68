"""Flag values: the parsers and checks typer runs on --listen-address, --telemetry-path,
--destination-labels, --docker-host and --web.config.file (a bad value is a usage error),
and the numbers the exporter takes from its environment.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

import typer

from .render.metrics import DEST_LABEL_CHOICES, Options
from .swarm.endpoint import endpoint
from .web.apps import DECIMAL
from .web.webconfig import WebConfig, WebConfigError, load

DEFAULT_DESTINATION_LABELS = ",".join(DEST_LABEL_CHOICES)  # --destination-labels' default


@dataclasses.dataclass(frozen=True)
class ListenAddress:
    host: str  # '' = every interface
    port: int

    def show(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @staticmethod
    def of(address: tuple[Any, ...]) -> str:
        """A bound socket's address as HOST:PORT ('[::]:9100' for IPv6)."""
        return ListenAddress(str(address[0]), int(address[1])).show()


def listen_address(value: str) -> ListenAddress:
    """':9100' -> ('', 9100) (all interfaces); 'host:port'; '[v6]:port'. ASCII digits only."""
    host, sep, port = value.rpartition(":")
    if not sep or not re.fullmatch(r"[0-9]{1,5}", port) or int(port) > 65535:
        raise typer.BadParameter(f"'{value}' is not HOST:PORT (e.g. ':9100', '127.0.0.1:9100', '[::1]:9100')")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise typer.BadParameter(f"'{value}': put an IPv6 host in brackets, e.g. '[::1]:9100'")
    return ListenAddress(host, int(port))


def destination_labels(value: str) -> Options:
    """'address,destination_port' (default), one of them, or 'none' (no per-destination series)."""
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    if names in ((), ("none",)):
        return Options(destination_labels=(), per_destination=False)
    bad = [n for n in names if n not in DEST_LABEL_CHOICES]
    if bad:
        choices = ", ".join(DEST_LABEL_CHOICES)
        raise typer.BadParameter(f"unknown label '{bad[0]}': use a comma list of {choices}, or 'none'")
    return Options(destination_labels=names)


# what a request path can hold once decoded and still be compared as given (RFC 3986's path
# characters but '%'): a space, '?', '#', '%' or a non-ASCII letter could never match
_PATH = re.compile(r"/[A-Za-z0-9._~!$&'()*+,;=:@/-]*")


def telemetry_path(value: str) -> str:
    if not value.startswith("/"):
        raise typer.BadParameter(f"'{value}' must start with '/', e.g. /metrics")
    if not _PATH.fullmatch(value):
        raise typer.BadParameter(
            f"{value!r} can never match a request: use ASCII letters, digits and -._~!$&'()*+,;=:@/"
        )
    return value


def docker_host(value: str) -> str:
    """The --docker-host value, checked with the docker CLI's TLS variables (files read now)."""
    try:
        if value:
            endpoint(value)
        return value
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None


def web_config(value: str) -> WebConfig:
    try:
        return load(value) if value else WebConfig()
    except WebConfigError as e:
        raise typer.BadParameter(str(e)) from None


def env_number(name: str, default: float, unit: str, whole: bool = False) -> float:
    """$name as a plain decimal number of `unit` (a whole one when whole); default when it is
    unset or blank. ValueError, one line naming the variable, for anything else: a typo must
    not quietly become the default (the CLI logs it and exits 2, as for a bad flag)."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not DECIMAL.fullmatch(raw) or (whole and "." in raw):
        number = "a whole number" if whole else "a number"
        raise ValueError(f"{name}={raw!r} is not {number} of {unit} (the default: {default:g})")
    return float(raw)
