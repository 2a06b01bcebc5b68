"""A cached value that a slow call loads, refreshed when it ages or when new keys are asked about.

Both caches of the exporter are this: SwarmMarks (fwmark -> ports, from iptables) and
DockerServices ((namespace, fwmark) -> swarm service, from the Docker API). A scrape asks with
the keys it needs (the fwmarks IPVS has now); the load itself always fetches the whole value.

    cache = Refreshing(load, {}, max_age=60.0, wait_for_new_keys=True)
    value = cache.get(keys)   # never raises; cache.error says why the last load failed

Clock and thread start are injectable, so tests run a refresh exactly when they choose.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Iterable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

Spawn = Callable[[Callable[[], None]], None]


def daemon_thread(name: str) -> Spawn:
    """A spawn that runs its function in a new daemon thread called name."""

    def spawn(fn: Callable[[], None]) -> None:
        threading.Thread(target=fn, name=name, daemon=True).start()

    return spawn


class Refreshing(Generic[K, V]):
    """A value from load(), served from memory; get() never raises and never waits unless told to.

    - New keys: the first get() and every get() whose key set differs from the previous one
      (a service came or went) want fresh data. wait_for_new_keys=True loads right there,
      holding the lock, so concurrent callers share that one load; False requests a background
      load and answers from memory at once. New keys during a background load queue exactly
      one more load after it (the running one may have started before they existed).
    - Age: a get() at least max_age seconds after the last load started starts a background
      load and answers from memory; so does every get() after a failed load if retry_failed.
      At most one background load runs at a time; a due load while one runs is dropped.
    - Failure: a failed load keeps the last good value (initial before any) and sets error.
      A load that started before the value's load (a slow background one overtaken by a
      waited-for one) is discarded.
    """

    def __init__(
        self,
        load: Callable[[], V],
        initial: V,
        *,
        max_age: float,
        wait_for_new_keys: bool,
        retry_failed: bool = False,
        clock: Callable[[], float] = time.monotonic,
        spawn: Spawn | None = None,
        name: str = "refresh",
    ) -> None:
        self.max_age = max_age
        self._load = load
        self._wait_for_new_keys = wait_for_new_keys
        self._retry_failed = retry_failed
        self._clock = clock
        self._spawn = spawn or daemon_thread(name)
        self._lock = threading.Lock()
        self._idle = threading.Event()  # set while no background load runs (tests wait on it)
        self._idle.set()
        self._value = initial
        self._asked: frozenset[K] | None = None
        self._running = self._pending = self._closed = False
        self.error: Exception | None = None  # why the last load failed; None after a success
        self.ok = False  # a load has finished and the last one succeeded
        self.loaded_at: float | None = None  # clock() when the load that set value or error started

    @property
    def value(self) -> V:
        """The last good value (initial before any load succeeded); replaced, never mutated."""
        return self._value

    def get(self, keys: Iterable[K]) -> V:
        """The value, after loading it first if the policy says to wait; an empty key set loads nothing."""
        wanted = frozenset(keys)
        start = False
        with self._lock:
            if wanted and not self._closed:
                now = self._clock()
                if wanted != self._asked:
                    self._asked = wanted
                    if self._wait_for_new_keys:
                        self._store(*self._attempt(), now)
                    else:
                        start = self._request(queue=True)
                elif self._due(now):
                    start = self._request(queue=False)
            value = self._value
        if start:
            self._spawn(self._run_background)
        return value

    def close(self) -> None:
        """Load no more; a running background load finishes on its own (a daemon thread)."""
        with self._lock:
            self._closed = True
            self._pending = False

    def _due(self, now: float) -> bool:
        """Whether the value is old enough, or failed, to be loaded again (lock held)."""
        if self.loaded_at is None or now - self.loaded_at >= self.max_age:
            return True
        return self._retry_failed and self.error is not None

    def _request(self, queue: bool) -> bool:
        """True if the caller must start a background load; queue: one more after a running one."""
        if self._running:
            self._pending = self._pending or queue
            return False
        self._running = True
        self._idle.clear()
        return True

    def _attempt(self) -> tuple[V | None, Exception | None]:
        try:
            return self._load(), None
        except Exception as exc:  # a broken load must never fail a get() or kill the thread
            return None, exc

    def _store(self, value: V | None, error: Exception | None, started: float) -> None:
        """Keep a load's outcome unless a load that started later was stored already (lock held)."""
        if self.loaded_at is not None and started < self.loaded_at:
            return
        if error is None:
            self._value = value  # type: ignore[assignment]  # V itself may allow None
        self.error, self.ok, self.loaded_at = error, error is None, started

    def _run_background(self) -> None:
        """Load until no load is pending, then mark the cache idle."""
        while True:
            started = self._clock()
            outcome = self._attempt()
            with self._lock:
                self._store(*outcome, started)
                if self._pending and not self._closed:
                    self._pending = False
                    continue
                self._running = False
                self._idle.set()
                return
