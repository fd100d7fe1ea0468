"""What the API and /metrics read: one status computation shared by every request, and what the
loop says of its passes.

Read-only. A view is computed with the reconciler's own read computation (``report.status_view``:
a read-only state store and the lanes' observation, never the writer's connection) by its own
``Engine``, one request at a time; requests meanwhile wait for that one and share it, and a view
is reused for ``max_age`` seconds or until a pass ends. However many clients ask, the loop's
passes see at most one extra observation per ``max_age``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from reconciler.engine import Context, Engine, PassResult
from reconciler.protocol import Recheck
from reconciler.report import StatusView, status_view

MAX_AGE = 2.0  # seconds a status computation is shared by the requests that follow it


class Views:
    """The status computation every endpoint renders (single-flight, briefly shared)."""

    def __init__(
        self,
        ctx: Context,
        *,
        fetch: bool,
        max_age: float = MAX_AGE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ctx = ctx
        self.fetch = fetch  # `serve`: fetch a remote control repo (under `run` the loop does)
        self.max_age = max_age
        self.clock = clock
        self._engine = Engine(ctx)
        self._lock = threading.Lock()
        self._view: StatusView | None = None
        self._at = 0.0
        # Bumped by each pass's end, without the lock: the loop never waits for a computation.
        self._generation = 0
        self._view_generation = -1

    def status(self) -> StatusView:
        with self._lock:
            fresh = self._view_generation == self._generation
            if self._view is not None and fresh and self.clock() - self._at < self.max_age:
                return self._view
            generation = self._generation
            engine = self._engine
            engine.fallback = None
            if self.fetch:
                engine.control.refresh()
            view = status_view(engine, engine.load_for_reading())
            self._view, self._at, self._view_generation = view, self.clock(), generation
            return view

    def cached(self) -> StatusView | None:
        """The last view, however old (None before the first)."""
        return self._view

    def invalidate(self) -> None:
        """A pass changed the world: the next request computes anew (never waits)."""
        self._generation += 1

    @property
    def generation(self) -> int:
        """How many times the world changed (passes ended, the state written by another
        process): what a stream compares."""
        return self._generation

    @property
    def engine(self) -> Engine:
        """For reads that need no status (the state dir, its store)."""
        return self._engine


class Wake(Protocol):
    def __call__(self, reason: str, recheck: Recheck | None = None) -> None:
        """A pass, for ``reason``, that reads the feedback of the PRs ``recheck`` names anew."""


@dataclass
class LoopState:
    """What ``run`` says of its passes, for /readyz, /metrics and ``POST /refresh``: absent under
    ``serve``, where nothing reconciles."""

    interval: float
    wake: Wake  # asks the loop for a pass (coalesced with other triggers)
    clock: Callable[[], float] = time.time
    passes: int = 0
    last_ok_at: float | None = None  # when the last pass that succeeded ended
    last_failed: bool = False
    revision: str | None = None
    revision_since: float | None = None  # when a pass first reconciled that revision
    observers: list[Callable[[float, PassResult | None, bool], None]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def passed(self, seconds: float, result: PassResult | None, ok: bool) -> None:
        now = self.clock()
        with self.lock:
            self.passes += 1
            self.last_failed = not ok
            if ok:
                self.last_ok_at = now
            if result is not None and result.plan.revision != self.revision:
                self.revision, self.revision_since = result.plan.revision, now
        for observer in self.observers:
            observer(seconds, result, ok)

    @property
    def stale_after(self) -> float:
        """A loop whose last good pass is older than this is not ready: a pass is at least
        every interval, and one may take a while."""
        return 2 * self.interval + 60.0

    def ready(self) -> str | None:
        """None when a pass succeeded recently; otherwise why not."""
        with self.lock:
            if self.last_ok_at is None:
                return "no pass has succeeded yet" if self.passes else "the first pass is running"
            age = self.clock() - self.last_ok_at
        if age > self.stale_after:
            return f"the last successful pass ended {age:.0f}s ago"
        return None
