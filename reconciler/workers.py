"""Long-lived worker threads for the fan-outs of a pass: every lane asked at once when
observing, every task's actions at once when applying.

Each fan-out has a pool of its own, made once per process and kept: starting and ending eight
threads every pass cost the reconciler more CPU than the work they carried in an unchanged pass
(a pass over 20 ssh lanes took 16.8 ms of the reconciler's CPU with a pool per pass, 11.3 ms
with this). Work in a pool never waits on that same pool, so none can deadlock; a process
forked after a pool was made makes its own.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from typing import ParamSpec, TypeVar

__all__ = ["Fanout", "fanout"]

P = ParamSpec("P")
T = TypeVar("T")

_pools: dict[str, tuple[int, concurrent.futures.ThreadPoolExecutor]] = {}
_lock = threading.Lock()


class Fanout:
    """Work handed to a kept pool; the block it was made for waits for all of it."""

    def __init__(self, executor: concurrent.futures.ThreadPoolExecutor) -> None:
        self._executor = executor
        self.futures: list[concurrent.futures.Future[object]] = []

    def submit(
        self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> concurrent.futures.Future[T]:
        future = self._executor.submit(fn, *args, **kwargs)
        self.futures.append(future)  # type: ignore[arg-type]  # only waited for, never read
        return future


def _executor(name: str, size: int) -> concurrent.futures.ThreadPoolExecutor:
    with _lock:
        kept = _pools.get(name)
        if kept is None or kept[0] != os.getpid():
            executor = concurrent.futures.ThreadPoolExecutor(size, thread_name_prefix=name)
            kept = _pools[name] = (os.getpid(), executor)
        return kept[1]


@contextlib.contextmanager
def fanout(name: str, size: int) -> Iterator[Fanout]:
    """The kept pool ``name`` (``size`` threads, as its first use asked); on the way out, all
    that was submitted in the block has ended, as on leaving a ``ThreadPoolExecutor`` block,
    however the block was left."""
    fan = Fanout(_executor(name, size))
    try:
        yield fan
    finally:
        concurrent.futures.wait(fan.futures)
