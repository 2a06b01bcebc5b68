"""Log lines: the logfmt and JSON formatters and the one handler on stderr.

Every line is one line: messages can carry bytes a network client chose (a request line at
debug level), so control characters are escaped and never reach the terminal or a log
collector raw.
"""

from __future__ import annotations

import enum
import json
import logging
import re
import sys
import time

PROG = "ingress_ipvs_exporter"


class LogLevel(str, enum.Enum):
    debug = "debug"
    info = "info"
    warn = "warn"  # the toolkit's spelling
    warning = "warning"
    error = "error"


class LogFormat(str, enum.Enum):
    logfmt = "logfmt"
    json = "json"


_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", '"': '\\"', "\\": "\\\\"}
# C0 controls, DEL and C1 controls; plus the quote and backslash that logfmt quoting needs
_NEEDS_ESCAPE = re.compile(r'[\x00-\x1f\x7f-\x9f"\\]')


def escape_logfmt(text: str) -> str:
    """The inside of a double-quoted logfmt value: \\n \\r \\t \\" \\\\ and \\xNN for other controls."""
    return _NEEDS_ESCAPE.sub(lambda m: _ESCAPES.get(m.group(), f"\\x{ord(m.group()):02x}"), text)


def _timestamp(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


# Go's level names (go-kit/slog), as the original exporter's lines carried them
_LEVEL_NAMES = {logging.WARNING: "warn", logging.CRITICAL: "error"}


def level_name(record: logging.LogRecord) -> str:
    return _LEVEL_NAMES.get(record.levelno) or record.levelname.lower()


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = escape_logfmt(record.getMessage())
        return f'ts={_timestamp(record)} level={level_name(record)} logger={record.name} msg="{msg}"'


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        # json.dumps escapes every control character (\n, \u0000, ...) by itself
        return json.dumps(
            {
                "ts": _timestamp(record),
                "level": level_name(record),
                "logger": record.name,
                "msg": record.getMessage(),
            }
        )


def setup_logging(level: LogLevel, fmt: LogFormat) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt is LogFormat.json else LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.value.upper())


def one_line(text: str, limit: int = 200) -> str:
    """Text squeezed onto one line and cut to limit characters (for messages quoting a peer)."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."
