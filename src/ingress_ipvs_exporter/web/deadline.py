"""Socket reads bounded by one deadline for a whole exchange: a peer that trickles bytes
cannot stretch it (a socket timeout restarts with every byte that arrives).
"""

from __future__ import annotations

import io
import socket
import time
from typing import Any


class DeadlineReader(io.RawIOBase):
    """Reads from sock, each recv with the time left to `deadline` (time.monotonic()) as its
    timeout; socket.timeout once the deadline has passed."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self.sock, self.deadline = sock, deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("deadline passed")
        self.sock.settimeout(remaining)
        return self.sock.recv_into(buffer)


def reader(sock: socket.socket, deadline: float) -> io.BufferedReader:
    """A buffered file over DeadlineReader (what makefile("rb") would give, with the deadline)."""
    return io.BufferedReader(DeadlineReader(sock, deadline))
