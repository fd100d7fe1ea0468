"""Waiting for a condition, never for a length of time."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(
    condition: Callable[[], T | None],
    what: str,
    *,
    timeout: float = 10.0,
    every: float = 0.01,
    details: Callable[[], object] | None = None,
) -> T:
    """Call ``condition`` until it returns something true, and return that.

    After ``timeout`` seconds the test fails naming ``what`` it waited for, with ``details()``
    (a log's tail, the state) when given. The timeout only bounds a failing test: a passing one
    never depends on how long anything took.
    """
    deadline = time.monotonic() + timeout
    while True:
        found = condition()
        if found:
            return found
        if time.monotonic() > deadline:
            said = f"; {details()}" if details is not None else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{said}")
        time.sleep(every)


def exited(child: int) -> bool:
    """The child process has exited and waits for its parent to reap it (not reaped here).

    A killed process's ``/proc/PID/fd`` goes when its files are released, but the kernel
    closes them (the pipes' far ends among them) a moment later: only ``waitid`` says the
    process has ended whole, pipes closed.
    """
    return os.waitid(os.P_PID, child, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
