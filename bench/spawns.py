"""Counting the processes this process starts, from the interpreter's audit events.

``subprocess.Popen`` raises the audit event ``subprocess.Popen`` (executable, args, cwd, env)
before it starts a child, in whichever thread starts it. One hook added with ``sys.addaudithook``
sees them all without replacing anything of ``subprocess``. A hook cannot be removed, so it is
added once per process and counts for the counters that are active.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
from collections.abc import Iterator

_ACTIVE: list[SpawnCounter] = []
_LOCK = threading.Lock()


class SpawnCounter:
    """How many children named ``program`` (``git``) this process started while counting."""

    def __init__(self, program: str) -> None:
        self.program = program
        self.count = 0

    @contextlib.contextmanager
    def counting(self) -> Iterator[SpawnCounter]:
        _hook()
        with _LOCK:
            _ACTIVE.append(self)
        try:
            yield self
        finally:
            with _LOCK:
                _ACTIVE.remove(self)


@functools.cache
def _hook() -> None:
    sys.addaudithook(_audit)


def _audit(event: str, args: tuple[object, ...]) -> None:
    if event != "subprocess.Popen" or not _ACTIVE:
        return
    executable = args[0]
    if not isinstance(executable, str | bytes | os.PathLike):
        return
    name = os.path.basename(os.fsdecode(executable))
    with _LOCK:
        for counter in _ACTIVE:
            if counter.program == name:
                counter.count += 1
