"""One batch through a child process: the request on stdin, the answer on stdout — bounded.

The far end (``reconciler node`` as a lane user, or ``ssh`` to a lane host) is the lane's, and a
lane is not trusted beyond its own tasks: an answer of gigabytes, or a node that never stops
talking, must not exhaust the reconciler's memory and with it every other lane. The answer is read
up to ``limit`` bytes and the child killed past it or past the deadline. Used by the local-user
and SSH transports alike.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

MAX_ANSWER = 256 << 20  # bytes of stdout: far above any real batch (100,000 runs ≈ 100 MiB)
MAX_STDERR = 64 << 10  # what a failing node says is read for its last line only
_CHUNK = 1 << 16


class AnswerTooLarge(Exception):
    """The child wrote more than the limit on stdout (it was killed)."""


@dataclass(frozen=True)
class Answer:
    returncode: int
    stdout: bytes
    stderr: bytes


def exchange(
    argv: Sequence[str],
    data: bytes,
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
    limit: int = MAX_ANSWER,
) -> Answer:
    """Run ``argv`` with ``data`` on stdin; its exit status, stdout (at most ``limit`` bytes) and
    the tail of its stderr. Raises ``FileNotFoundError`` (no such program),
    ``subprocess.TimeoutExpired`` and ``AnswerTooLarge``; the child is killed on both."""
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd="/",
        env=dict(env) if env is not None else None,
    )
    stdin, stdout, stderr = proc.stdin, proc.stdout, proc.stderr
    assert stdin is not None
    assert stdout is not None
    assert stderr is not None
    deadline = time.monotonic() + timeout
    out: list[bytes] = []
    err = bytearray()
    size = 0
    pending = memoryview(data)
    selector = selectors.DefaultSelector()
    try:
        for stream in (stdout, stderr):
            os.set_blocking(stream.fileno(), False)
            selector.register(stream, selectors.EVENT_READ)
        if pending:
            os.set_blocking(stdin.fileno(), False)
            selector.register(stdin, selectors.EVENT_WRITE)
        else:
            stdin.close()
        while selector.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                raise subprocess.TimeoutExpired(list(argv), timeout)
            for key, _ in selector.select(left):
                ready = key.fileobj
                if ready is stdin:
                    try:
                        written = os.write(stdin.fileno(), pending[:_CHUNK])
                    except BrokenPipeError:
                        written = len(pending)  # the child stopped reading: its answer tells
                    pending = pending[written:]
                    if not pending:
                        selector.unregister(stdin)
                        stdin.close()
                    continue
                chunk = os.read(key.fd, _CHUNK)
                if not chunk:
                    selector.unregister(ready)
                    continue
                if ready is stdout:
                    size += len(chunk)
                    if size > limit:
                        raise AnswerTooLarge(f"more than {limit >> 20} MiB")
                    out.append(chunk)
                else:
                    err += chunk
                    del err[: max(0, len(err) - MAX_STDERR)]
        returncode = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    except BaseException:
        with contextlib.suppress(OSError):
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        raise
    finally:
        selector.close()
        for stream in (stdin, stdout, stderr):
            with contextlib.suppress(OSError):
                stream.close()
    return Answer(returncode, b"".join(out), bytes(err))
