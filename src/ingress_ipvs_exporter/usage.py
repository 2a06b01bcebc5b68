"""The `--help` text in the original Go exporter's layout, generated from the declared options."""

from __future__ import annotations

import enum
from typing import Any

import typer.core

from .logs import PROG


def _default(value: Any) -> Any:
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
                lines.append(f"  {names:<22} {text}")
            else:
                lines.append(f"  {p.opts[0]} {p.name.upper().replace('_', '-')}")
                lines.append(f"                         {p.help} ")
                lines.append(f"                         [default: {_default(p.default)}]")
                if len(p.opts) > 1:
                    lines.append(f"                         alias: {', '.join(p.opts[1:])}")
            lines.append("")
        formatter.write("\n".join(lines).rstrip() + "\n")
