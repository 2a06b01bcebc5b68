"""The `--help` text in the original Go exporter's layout, generated from the declared options."""

from __future__ import annotations

import enum
from typing import Any

import typer.core

from .logs import PROG

HELP = {  # each flag's help text (cli.py declares the flags)
    "listen": "address to set the http server to listen to (repeat it to listen on several)",
    "path": "endpoint to receive scrape requests from prometheus",
    "ns": "absolute path to the network namespace where ipvs is configured (repeatable; a glob "
    "pattern such as '/var/run/docker/netns/lb_*' is matched anew at every scrape)",
    "labels": "labels kept on per-destination series, summing series that merge; 'none' drops them",
    "docker": "Docker Engine API to name swarm services, e.g. unix:///var/run/docker.sock (off when empty)",
    "backend": "also export ipvs_backend_* (every detail of every real server of every kind of service)",
    "original": "export only the original exporter's ten families (and the health ones)",
    "rates": "leave out the kernel's *_per_second rate estimates (rate() over the counters gives them)",
    "self": "leave out the exporter's own metrics (process_*, ipvs_exporter_build_info)",
    "web": "TLS and basic auth config in the Prometheus exporter-toolkit format (off when empty)",
    "max": "most requests served at once, more get 503 at once (0: no limit)",
    "conns": "most connections open at once; beyond, the oldest still sending its request is "
    "closed (0: no limit; at most half of LimitNOFILE)",
    "systemd": "listen on the sockets systemd passes (socket activation) instead of --listen-address",
    "level": "log messages at this level and above: debug, info, warn, error",
    "format": "log line format: logfmt or json",
}


def _default(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return value.value if isinstance(value, enum.Enum) else value


class OriginalUsageCommand(typer.core.TyperCommand):
    """Prints the original exporter's usage layout: a bracketed synopsis, then one block per flag."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        opts: list[Any] = [p for p in self.get_params(ctx) if p.param_type_name == "option"]
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
                if len(names) < 23:
                    lines.append(f"  {names:<22} {text}")
                else:  # a long flag gets its text on the next line, as options with values do
                    lines += [f"  {names}", f"{'':25}{text}"]
            else:
                lines.append(f"  {p.opts[0]} {p.name.upper().replace('_', '-')}")
                lines.append(f"                         {p.help} ")
                lines.append(f"                         [default: {_default(p.default)}]")
                if len(p.opts) > 1:
                    lines.append(f"                         alias: {', '.join(p.opts[1:])}")
            lines.append("")
        formatter.write("\n".join(lines).rstrip() + "\n")
