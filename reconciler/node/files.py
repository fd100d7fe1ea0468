"""Run-directory layout and crash-safe file writes, shared by the node and the run supervisor.

Kept free of heavy imports because the supervisor loads it at start-up. Must not know about
requests or git; it only names files and writes them atomically.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator

from reconciler.safefile import write_atomic

RUN_JSON = "run.json"
PROMPT = "prompt.md"
ENV_JSON = "env.json"
PID_JSON = "pid.json"
OUTPUT_LOG = "output.log"
STDERR_LOG = "stderr.log"
CHECKS_LOG = "checks.log"
EXIT_JSON = "exit.json"
AGENT_EXIT = "agent-exit.json"  # the agent's own end, recorded before the commit and checks
SUPERVISOR_LOG = "supervisor.log"  # the supervisor's own complaints, never the agent's output
START_LOCK = ".start.lock"
# flock'd by the node before it asks for a supervisor, held by the supervisor until it is gone
SUPERVISOR_LOCK = ".supervisor.lock"
RUN_TMP = "tmp"  # the run's own $TMPDIR, private like its directory; removed at its end
# The supervisor started the lane's first standby run at the agent's end: {"run": "task/a.i"}
HANDOFF = "handoff.json"


def dump_json(obj: object) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def write_json_atomic(path: str, obj: object, mode: int = 0o600) -> None:
    write_atomic(path, dump_json(obj), mode)


def read_json(path: str) -> dict[str, object] | None:
    """The JSON object in ``path``; None when the file is missing, unreadable or not an object."""
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def tail_bytes(path: str, limit: int) -> bytes:
    """The last ``limit`` bytes of ``path`` (b"" when it does not exist)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            return f.read(limit)
    except OSError:
        return b""


@contextlib.contextmanager
def locked(path: str, timeout: float, what: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if needed) for the block.

    Polls instead of blocking so that a stuck holder turns into an error, not a hung pass.
    Raises TimeoutError with a sentence naming ``what`` when the lock stays taken.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + timeout
        delay = 0.005
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"{what} is locked by another process ({path}) for more than "
                        f"{timeout:.0f}s; retry later, or remove a stuck process holding it"
                    ) from None
                time.sleep(delay)
                # short: a waiter is late by up to this after the release, and the waiters are
                # starts (a take behind a pool fill, a second start of one run)
                delay = min(delay * 2, 0.01)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
