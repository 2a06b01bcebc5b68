"""The namespaces one scrape reads: the --namespace-path patterns, globbed anew per scrape,
each path with its own collector, read in parallel, their families merged into one.

A literal path is always read, and reported (ipvs_up 0) while it is missing, as the one
namespace of the original exporter was. A glob pattern's matches come and go with Docker's
networks: a match that is not (or no longer) a namespace, or that holds no IPVS service,
is left out of the scrape with a debug line, so a node's many task sandboxes cost nothing
in the output. A namespace whose read is still running at the deadline (10 s, or the
scraper's X-Prometheus-Scrape-Timeout-Seconds less a second) shows as ipvs_up 0 (reason
"timeout") without holding up the others; its read is not started again until it has
returned.
"""

from __future__ import annotations

import glob
import logging
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

from .collector import NamespaceReader, Reading, SwarmNames
from .ipvs import Handle, IPVSError, NamespaceNotFound, NotANamespace, shown_path
from .render.metrics import Options
from .swarm.marks import SwarmMarks

log = logging.getLogger(__name__)

READ_DEADLINE = 10.0  # seconds a scrape waits for a namespace when it reads several
# With Prometheus' X-Prometheus-Scrape-Timeout-Seconds the wait is that timeout less a margin
# for rendering and sending (so a slow namespace shows as "timeout" instead of the whole scrape
# failing), within bounds: a client's header cannot keep a scrape waiting for long.
SCRAPE_TIMEOUT_MARGIN = 1.0
SHORTEST_DEADLINE = 0.1
LONGEST_DEADLINE = 120.0
MAX_THREADS = 8  # parallel reads (netlink dumps and iptables reads release the GIL)


def is_pattern(path: str) -> bool:
    return glob.has_magic(path)


Opener = Callable[[str, bool], tuple[NamespaceReader, Callable[[], None]]]


def opener(options: Options, swarm: SwarmNames | None) -> Opener:
    """What production reads a namespace with: a netlink Handle and a SwarmMarks of its own."""

    def open_namespace(path: str, globbed: bool) -> tuple[NamespaceReader, Callable[[], None]]:
        handle, marks = Handle(path), SwarmMarks(path)
        collector = NamespaceReader(
            shown_path(path),
            handle.snapshot,
            marks.lookup,
            options,
            handle.info,
            swarm,
            marks.vips,
            globbed,
            handle.settings,
        )

        def close() -> None:
            handle.close()
            marks.close()

        return collector, close

    return open_namespace


def _closer(close: Callable[[], None]) -> Callable[[Future[Reading]], None]:
    return lambda _: close()


@dataclass
class Member:
    """One namespace path being read: its collector, how to release it, and its read while
    one runs (shared by the scrapes that wait for it; guarded by Namespaces' lock)."""

    path: str
    globbed: bool
    collector: NamespaceReader
    close: Callable[[], None]
    running: Future[Reading] | None = None


class Namespaces:
    """The namespaces of the --namespace-path patterns (see the module's doc).

    open_member(path, globbed) builds a namespace's collector and its closer (opener());
    list_paths(pattern) expands a glob pattern (glob.glob).
    """

    def __init__(
        self,
        patterns: Sequence[str],
        open_member: Opener,
        options: Options,
        list_paths: Callable[[str], Iterable[str]] = glob.glob,
        deadline: float = READ_DEADLINE,
    ) -> None:
        self.patterns = list(dict.fromkeys(patterns))
        self.options = options
        self._open = open_member
        self._list = list_paths
        self._deadline = deadline
        self._members: dict[str, Member] = {}
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._said_empty: set[str] = set()

    def _paths(self) -> dict[str, bool]:
        """path -> matched by a glob (not given literally), in the patterns' order."""
        found: dict[str, bool] = {}
        for pattern in self.patterns:
            if not is_pattern(pattern):
                found[pattern] = False
                continue
            for path in sorted(self._list(pattern)):
                if os.path.isfile(path):  # nsfs files are; skips directories, FIFOs, sockets
                    found.setdefault(path, True)
        return found

    def members(self) -> list[Member]:
        """The members for this scrape: new matches opened, vanished ones closed."""
        paths = self._paths()
        with self._lock:
            for path in [p for p in self._members if p not in paths]:
                gone = self._members.pop(path)
                log.debug("network namespace %s no longer matches; dropped", path)
                self._said_empty.discard(path)
                if gone.running is not None:  # closed when its read returns: it uses the handle
                    gone.running.add_done_callback(_closer(gone.close))
                else:
                    gone.close()
            for path, globbed in paths.items():
                if path not in self._members:
                    collector, close = self._open(path, globbed)
                    self._members[path] = Member(path, globbed, collector, close)
            return [self._members[p] for p in paths]

    def check(self) -> IPVSError | None:
        """Read each namespace given literally once (at start-up): raise NotANamespace (a
        usage error), return the first other error (served as ipvs_up 0 until it clears)."""
        first = None
        for m in self.members():
            if not m.globbed:
                try:
                    m.collector.check()
                except NotANamespace:
                    raise
                except IPVSError as e:
                    first = first or e
        return first

    def deadline(self, scrape_timeout: float | None) -> float:
        """Seconds this scrape waits for the namespaces' reads: the fixed deadline, or the
        scraper's timeout less a margin (see SCRAPE_TIMEOUT_MARGIN)."""
        if scrape_timeout is None:
            return self._deadline
        return min(LONGEST_DEADLINE, max(SHORTEST_DEADLINE, scrape_timeout - SCRAPE_TIMEOUT_MARGIN))

    def readings(self, scrape_timeout: float | None = None) -> list[tuple[NamespaceReader, Reading]]:
        """Read every member now (in parallel when there are several, waiting at most
        deadline(scrape_timeout)); those left out of this scrape (see the module's doc) are
        not returned. The list is this scrape's alone: nothing of it is kept for the next."""
        members = self.members()
        if len(members) == 1 and not members[0].globbed:
            m = members[0]
            return [(m.collector, m.collector.read())]
        done = self._read_all(members, self.deadline(scrape_timeout))
        out = []
        for m in members:
            reading = done.get(m.path)
            if reading is None:  # overdue, or dropped by a concurrent scrape meanwhile
                continue
            if self._show(m, reading):
                out.append((m.collector, reading))
        return out

    def _read_all(self, members: list[Member], deadline: float) -> dict[str, Reading]:
        """Each member's reading (the collector's overdue() one for a read still running at
        the deadline). A read still running from an earlier scrape is waited for, not
        started again; concurrent scrapes share the reads that are running. A member that a
        concurrent scrape dropped (its glob match gone) is not read: its handle is closed."""
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(MAX_THREADS, thread_name_prefix="netns-read")
            current = [m for m in members if self._members.get(m.path) is m]
            for m in current:
                if m.running is None or m.running.done():
                    m.running = self._pool.submit(m.collector.read)
            futures = {m.path: (m, m.running) for m in current if m.running is not None}
        wait([f for _, f in futures.values()], timeout=deadline)
        return {
            path: future.result() if future.done() else m.collector.overdue(deadline)
            for path, (m, future) in futures.items()
        }

    def _show(self, m: Member, reading: Reading) -> bool:
        """Whether this scrape shows the member: always when given literally; a glob match
        when it holds IPVS services or could not be read for a reason other than not being
        a namespace (any more); overdue reads are shown as such."""
        if not m.globbed:
            return True
        if reading.snapshot is not None:
            with self._lock:  # what was said is shared by concurrent scrapes
                if reading.snapshot.n_svc:
                    self._said_empty.discard(m.path)
                    return True
                first = m.path not in self._said_empty
                self._said_empty.add(m.path)
            if first:
                log.debug("network namespace %s holds no IPVS service; left out", m.path)
            return False
        return not isinstance(reading.error, (NamespaceNotFound, NotANamespace))

    def close(self) -> None:
        with self._lock:
            for m in self._members.values():
                m.close()
            self._members.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
