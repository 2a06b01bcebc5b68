"""Log-once bookkeeping: a condition that persists across scrapes or refreshes is logged once.

    said = LogOnce(log)
    said.log("timeout", logging.WARNING, "docker did not answer: %s", why)  # logged
    said.log("timeout", logging.WARNING, "docker did not answer: %s", why)  # not again
    if said.reset():  # the condition is over: the next occurrence is logged again
        log.info("docker answers again")

Keys are whatever tells the conditions apart (an error kind, the message itself). Thread-safe.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Hashable


class LogOnce:
    """Logs a message the first time its key is seen, then not again until the key is reset.

    At most `limit` keys are remembered (the oldest is forgotten first), so keys that never
    repeat (messages with changing text) cannot grow memory without bound.
    """

    def __init__(self, logger: logging.Logger, limit: int = 256) -> None:
        self.logger = logger
        self.limit = limit
        self._said: dict[Hashable, None] = {}  # insertion-ordered set
        self._lock = threading.Lock()

    def log(self, key: Hashable, level: int, msg: str, *args: object) -> bool:
        """Log msg % args at level unless key was logged since the last reset; True if it was logged now."""
        with self._lock:
            if key in self._said:
                return False
            self._said[key] = None
            if len(self._said) > self.limit:
                del self._said[next(iter(self._said))]
        self.logger.log(level, msg, *args)
        return True

    def reset(self, key: Hashable | None = None) -> bool:
        """Forget key (None: every key) so that it is logged again; True if anything was forgotten."""
        with self._lock:
            if key is None:
                had = bool(self._said)
                self._said.clear()
                return had
            if key in self._said:
                del self._said[key]
                return True
            return False
