"""The state lock: one reconciler at a time is the only writer of state.

``StateLock`` takes an exclusive, non-blocking ``flock`` on ``<state_dir>/lock``. The holder then
writes who it is (pid, a summary of its command line, start time) into the lock file as JSON so
that a second ``apply`` or ``run`` can say exactly who is in the way. Readers of that record
tolerate an empty or half-written file: the lock itself is the ``flock``, the JSON is a courtesy.

The lock file is never deleted (unlinking a lock file races with the next acquirer). The file
descriptor is opened close-on-exec, so agent processes started while the lock is held do not
inherit it; a process that ``fork()``s without ``exec`` does share it until the child exits.

This module must not import ``reconciler.node``, ``lanes``, ``plan``, ``apply``, ``observe`` or
``cli``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Self

from reconciler.durations import format_duration
from reconciler.state.damage import raise_named

LOCK_FILE = "lock"
_POLL_SECONDS = 0.05
_ARGV_MAX = 80


@dataclass(frozen=True)
class LockHolder:
    """Who holds the lock, as its holder recorded it (best effort)."""

    pid: int
    argv: str
    started_at: float

    def describe(self, now: float | None = None) -> str:
        """``pid 1234, "reconciler run", since 10:42:07 UTC`` (date added when not today)."""
        since = datetime.fromtimestamp(self.started_at, UTC)
        today = datetime.fromtimestamp(time.time() if now is None else now, UTC).date()
        fmt = "%H:%M:%S UTC" if since.date() == today else "%Y-%m-%d %H:%M:%S UTC"
        return f'pid {self.pid}, "{self.argv}", since {since.strftime(fmt)}'


class LockHeld(Exception):
    """Another reconciler holds the state lock. The CLI exits with ``exit_code`` (75)."""

    exit_code: ClassVar[int] = 75

    def __init__(self, path: Path, holder: LockHolder | None, waited: float | None) -> None:
        self.path = path
        self.holder = holder
        self.waited = waited
        who = f"another reconciler ({holder.describe()})" if holder else "another reconciler"
        if waited:
            advice = (
                f"still held after waiting {format_duration(waited)}; "
                "wait for it, stop it, or pass a longer --lock-timeout"
            )
        else:
            advice = "wait for it, stop it, or pass --lock-timeout 60s"
        super().__init__(f"{who} holds the state lock {path}; {advice}")


def argv_summary(argv: Sequence[str]) -> str:
    """``reconciler run --once`` from ``sys.argv``-like input, shortened to 80 characters."""
    if not argv:
        return "?"
    prog = Path(argv[0])
    name = prog.parent.name if prog.name == "__main__.py" else prog.name
    text = " ".join([name or "?", *argv[1:]])
    return text if len(text) <= _ARGV_MAX else text[: _ARGV_MAX - 1] + "…"


def read_holder(path: Path) -> LockHolder | None:
    """The holder record in lock file ``path``; None when absent, empty, partial or malformed."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return LockHolder(
            pid=int(data["pid"]), argv=str(data["argv"]), started_at=float(data["started_at"])
        )
    except (OSError, ValueError, TypeError, KeyError):
        return None


class StateLock:
    """Exclusive ``flock`` on ``<state_dir>/lock``.

    ``with StateLock(d):`` fails at once if the lock is held; ``with StateLock(d).acquire(60):``
    waits up to a minute. ``acquire`` raises ``LockHeld`` naming the holder.
    """

    def __init__(self, state_dir: Path, *, argv: Sequence[str] | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / LOCK_FILE
        self._argv = argv_summary(sys.argv if argv is None else argv)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """True while this object holds the lock."""
        return self._fd is not None

    def holder(self) -> LockHolder | None:
        """Who currently holds (or last held) the lock, as recorded in the lock file."""
        return read_holder(self.path)

    def acquire(self, timeout: float | None = None) -> Self:
        """Take the lock. ``timeout`` None or <= 0: fail at once; else poll until the deadline."""
        if self._fd is not None:
            raise RuntimeError(f"state lock {self.path} is already held by this process")
        try:
            self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise_named(exc, self.path, writing=True, what="the state lock")
            raise
        try:
            deadline = None if not timeout or timeout <= 0 else time.monotonic() + timeout
            while not self._try_lock(fd):
                now = time.monotonic()
                if deadline is None or now >= deadline:
                    raise LockHeld(self.path, self.holder(), timeout if deadline else None)
                time.sleep(min(_POLL_SECONDS, deadline - now))
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        record = {"pid": os.getpid(), "argv": self._argv, "started_at": time.time()}
        # A courtesy: on a full disk the lock still holds, and the write that matters (the
        # database's) says what is wrong.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(record).encode() + b"\n", 0)
        return self

    @staticmethod
    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            raise
        return True

    def release(self) -> None:
        """Drop the lock (idempotent). The holder record is cleared first."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> Self:
        if self._fd is None:
            self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __del__(self) -> None:
        fd = getattr(self, "_fd", None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
