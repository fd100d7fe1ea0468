"""Batches through a child process: a long-lived node *session*, bounded.

The far end (``reconciler node`` as a lane user, or ``ssh`` to a lane host) serves batch after
batch over its stdin and stdout: the client opens with ``SESSION_OPEN``, then sends each batch as a
length line and its JSON, and the node answers ``ok LENGTH`` and the ``BatchResult`` JSON, or
``error LENGTH`` and the sentence of a batch it could not read at all. The node exits on EOF, so
closing the client's end (or the client dying, even by SIGKILL) ends it.

The far end is the lane's, and a lane is not trusted beyond its own tasks: an answer of
gigabytes, or a node that never stops talking, must not exhaust the reconciler's memory and with
it every other lane. An answer is read up to ``limit`` bytes, and the session killed past it or
past the batch's deadline. ``SESSIONS`` keeps the idle sessions per command line, so that the
batches of one lane reuse one node process (a second process only while the first is busy), and
starts a fresh one for a session found dead: a batch that never reached a session that died is
sent again on a fresh one, a batch that reached it and got no answer fails with what the node
said. Used by the local-user and SSH transports alike.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import os
import select
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from reconciler.protocol import FRAME_HEADER_MAX, SESSION_OPEN, SESSION_READY

MAX_ANSWER = 256 << 20  # bytes of an answer: far above any real batch (100,000 runs ≈ 100 MiB)
MAX_STDERR = 64 << 10  # what a failing node says is read for its last line only
IDLE_SECONDS = 300.0  # an idle session unused this long is closed (its lane may be gone)
SWEEP_SECONDS = 10.0  # how often the idle sessions of every command line are looked over
CLOSE_GRACE = 5.0  # seconds a closed session's node has to see EOF and exit before KILL
KEEP_IDLE = 4  # idle sessions kept per command line; more are closed when they come back
GREETING_SECONDS = 15.0  # a new session's node says SESSION_READY within this, or is no node
GREETING_EXIT = 1.0  # seconds a node that did not greet has to exit once its stdin is closed
_CHUNK = 1 << 16


class BadAnswer(Exception):
    """The node wrote something that is not an answer (its session was killed)."""


class AnswerTooLarge(BadAnswer):
    """The node wrote more than the limit (its session was killed)."""


class SessionLost(Exception):
    """The session ended without answering the batch. ``delivered`` False: the batch never
    reached it whole (the node cannot have acted on it)."""

    def __init__(self, returncode: int | None, stderr: bytes, delivered: bool) -> None:
        super().__init__(f"the session ended (exit {returncode}) without an answer")
        self.returncode = returncode
        self.stderr = stderr
        self.delivered = delivered


class BatchRefused(Exception):
    """The node could not read the batch at all (not JSON, another protocol version); the
    message is its sentence."""


@dataclass(frozen=True)
class Answer:
    """A complete answer frame: ``ok`` (a ``BatchResult``) or ``error`` (a sentence)."""

    kind: str
    body: bytes


class Session:
    """One node process and the pipes to it; ``exchange`` sends one batch and reads its answer.
    Not thread-safe: ``Sessions`` lends a session to one caller at a time."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str] | None) -> None:
        self.argv = list(argv)
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd="/",
            env=dict(env) if env is not None else None,
        )
        self.used = 0  # batches answered
        self.idle_since = time.monotonic()
        self._opened = False
        self._err = bytearray()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            assert stream is not None
            os.set_blocking(stream.fileno(), False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        """Still running with nothing to say: an idle node writes nothing, so anything readable
        on its stdout (EOF included) means it ended or broke the protocol."""
        if self.proc.poll() is not None:
            return False
        assert self.proc.stdout is not None
        probe = select.poll()  # no kernel object per look, unlike epoll
        probe.register(self.proc.stdout.fileno(), select.POLLIN)
        return not probe.poll(0)

    def exchange(self, data: bytes, *, timeout: float, limit: int = MAX_ANSWER) -> Answer:
        """Send ``data`` as one batch and return the node's answer. Raises ``SessionLost``,
        ``subprocess.TimeoutExpired`` and ``AnswerTooLarge`` (the session is killed on the last
        two; after any of them it is not used again)."""
        stdin, stdout, stderr = self.proc.stdin, self.proc.stdout, self.proc.stderr
        assert stdin is not None
        assert stdout is not None
        assert stderr is not None
        answer = _Reading(greeting=not self._opened, limit=limit)  # a new session greets first
        head = SESSION_OPEN if answer.greeting else b""
        self._opened = True
        pending = memoryview(head + b"%d\n" % len(data) + data)
        deadline = time.monotonic() + timeout
        greeted_by = time.monotonic() + min(timeout, GREETING_SECONDS)
        delivered = True
        # poll: three descriptors, one system call a wait, and nothing made and closed per
        # batch (an epoll instance costs three more calls and a descriptor each time). Any
        # event is readiness: a hang-up reads as EOF, an error on stdin as a broken pipe.
        fd_in, fd_out, fd_err = stdin.fileno(), stdout.fileno(), stderr.fileno()
        poller = select.poll()
        poller.register(fd_in, select.POLLOUT)
        poller.register(fd_out, select.POLLIN)
        poller.register(fd_err, select.POLLIN)
        reading = {fd_out, fd_err}
        try:
            while not answer.complete:
                if fd_out not in reading:
                    raise SessionLost(self._ended(), bytes(self._err), delivered)
                left = (greeted_by if answer.greeting else deadline) - time.monotonic()
                if left <= 0 and answer.greeting:
                    self._no_greeting(timeout)
                if left <= 0:
                    raise subprocess.TimeoutExpired(self.argv, timeout)
                for fd, _event in poller.poll(math.ceil(left * 1000)):
                    if fd == fd_in:
                        try:
                            written = os.write(fd_in, pending[:_CHUNK])
                        except BrokenPipeError:  # the node is gone: it never read all of it
                            delivered = False
                            written = len(pending)
                        pending = pending[written:]
                        if not pending:
                            poller.unregister(fd_in)
                        continue
                    chunk = os.read(fd, _CHUNK)
                    if not chunk:
                        poller.unregister(fd)
                        reading.discard(fd)
                    elif fd == fd_err:
                        self._err += chunk
                        del self._err[: max(0, len(self._err) - MAX_STDERR)]
                    else:
                        answer.take(chunk)
        except (BadAnswer, BatchRefused, SessionLost, subprocess.TimeoutExpired):
            self.kill()
            raise
        if pending:  # answered before reading the whole batch: out of step, never used again
            self.kill()
        self.used += 1
        self.idle_since = time.monotonic()
        return Answer(answer.kind, bytes(answer.got))

    def _no_greeting(self, timeout: float) -> None:
        """A new session's node that did not greet in time. An older node reads its stdin to
        the end as one batch: closed, it says what it made of the stream and fails, which names
        it (``BatchRefused``). One that stays silent (a host that never answers) is timed out."""
        self.end()
        try:
            returncode = self.proc.wait(timeout=GREETING_EXIT)
        except subprocess.TimeoutExpired:
            raise subprocess.TimeoutExpired(self.argv, timeout) from None
        if returncode == 0:
            raise SessionLost(returncode, bytes(self._err), True)
        self._ended()
        said = self._err.decode("utf-8", "replace").strip().splitlines()
        raise BatchRefused(
            f"it opened no session within {GREETING_SECONDS:.0f} s and exited {returncode}, so "
            "it is not a node of this reconciler's version (an older one serves one batch per "
            "process); install the same reconciler version on both sides"
            + (f" (it said: {said[-1][:300]})" if said else "")
        )

    def _ended(self) -> int | None:
        """The node's exit status once its stdout closed (stderr's tail read to its end)."""
        try:
            returncode = self.proc.wait(timeout=CLOSE_GRACE)
        except subprocess.TimeoutExpired:
            self.kill()
            returncode = self.proc.returncode
        assert self.proc.stderr is not None
        with contextlib.suppress(OSError):
            while chunk := os.read(self.proc.stderr.fileno(), _CHUNK):
                self._err += chunk
                del self._err[: max(0, len(self._err) - MAX_STDERR)]
        return returncode

    def end(self) -> None:
        """Close the node's stdin: it finishes and exits (``reap`` waits for it)."""
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()

    def reap(self, grace: float = CLOSE_GRACE) -> None:
        """Wait for the ended node, kill it past ``grace``, and close the pipes."""
        self.end()
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.kill()
        for stream in (self.proc.stdout, self.proc.stderr):
            with contextlib.suppress(OSError):
                assert stream is not None
                stream.close()

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=CLOSE_GRACE)

    def close(self) -> None:
        self.end()
        self.reap()


class _Reading:
    """An answer as its bytes come in: the greeting of a new session, the header, the body."""

    def __init__(self, *, greeting: bool, limit: int) -> None:
        self.greeting = greeting
        self.limit = limit
        self.got = bytearray()
        self.need: int | None = None  # the answer's length, once its header is in
        self.kind = ""

    @property
    def complete(self) -> bool:
        return self.need is not None and len(self.got) >= self.need

    def take(self, chunk: bytes) -> None:
        self.got += chunk
        if self.greeting:
            self.greeting, self.got = _greeting(self.got)
        if self.need is None and not self.greeting:
            self.kind, self.need, self.got = _header(self.got, self.limit)
        if self.need is not None and len(self.got) > self.need:
            raise BadAnswer("more than the answer it announced")


def _greeting(got: bytearray) -> tuple[bool, bytearray]:
    """Whether the greeting is still awaited, and the bytes after it. A node of another session
    version answers an ``error`` frame at once instead: it is read as the answer."""
    end = got.find(b"\n")
    if end < 0:
        if len(got) > FRAME_HEADER_MAX:
            raise BadAnswer("a greeting longer than any node says")
        return True, got
    if got[: end + 1] == SESSION_READY:
        return False, got[end + 1 :]
    if got.startswith(b"error "):
        return False, got
    raise BadAnswer("a greeting of another protocol version")


def _header(got: bytearray, limit: int) -> tuple[str, int | None, bytearray]:
    """The answer's kind and length once its header line is complete, and the bytes after it."""
    end = got.find(b"\n")
    if end < 0:
        if len(got) > FRAME_HEADER_MAX:
            raise BadAnswer("an answer header longer than any the node writes")
        return "", None, got
    fields = bytes(got[:end]).split(b" ")
    if len(fields) != 2 or fields[0] not in (b"ok", b"error") or not fields[1].isdigit():
        raise BadAnswer("something that is not a node's answer")
    size = int(fields[1])
    if size > limit:
        raise AnswerTooLarge(f"more than {limit >> 20} MiB")
    return fields[0].decode(), size, got[end + 1 :]


def _once(session: Session, data: bytes, timeout: float, limit: int) -> Answer:
    try:
        return session.exchange(data, timeout=timeout, limit=limit)
    except BaseException:
        session.reap()
        raise


class Sessions:
    """The idle sessions of every command line, lent one caller at a time.

    A batch takes an idle session of its command line (the same line is the same lane, node and
    trust) or starts one, and gives it back when answered. A session found dead when taken is
    reaped and replaced; one idle for ``IDLE_SECONDS`` is closed."""

    def __init__(self, start: Callable[[Sequence[str], Mapping[str, str] | None], Session]) -> None:
        self._start = start
        self._lock = threading.Lock()
        self._idle: dict[tuple[str, ...], list[Session]] = {}
        self._swept_at = -SWEEP_SECONDS

    def exchange(
        self,
        argv: Sequence[str],
        data: bytes,
        *,
        timeout: float,
        env: Mapping[str, str] | None = None,
        limit: int = MAX_ANSWER,
    ) -> bytes:
        """One batch through a session of ``argv``: the ``BatchResult`` JSON. Raises
        ``SessionLost`` (delivered, or a fresh session that ended at once), ``BatchRefused``,
        ``subprocess.TimeoutExpired``, ``AnswerTooLarge`` and ``FileNotFoundError``."""
        key = tuple(argv)
        session, reused = self._take(key, env)
        try:
            answer = session.exchange(data, timeout=timeout, limit=limit)
        except SessionLost as lost:
            session.reap()
            if lost.delivered or not reused:
                raise
            session = self._start(argv, env)  # it died while idle: the batch goes to a new one
            answer = _once(session, data, timeout, limit)
        except BaseException:
            session.reap()
            raise
        self._give(key, session)
        if answer.kind == "error":
            raise BatchRefused(answer.body.decode("utf-8", "replace"))
        return answer.body

    def _take(self, key: tuple[str, ...], env: Mapping[str, str] | None) -> tuple[Session, bool]:
        now = time.monotonic()
        stale: list[Session] = []
        found: Session | None = None
        with self._lock:
            # Every line's idle sessions are looked over now and then, not at every batch: a
            # pass over a fleet takes a session of each lane, and would look over all of them
            # as many times.
            sweep = now >= self._swept_at + SWEEP_SECONDS
            if sweep:
                self._swept_at = now
            lines = self._idle.items() if sweep else [(key, self._idle.get(key, []))]
            for line, idle in lines:
                stale += [s for s in idle if now - s.idle_since >= IDLE_SECONDS]
                idle[:] = [s for s in idle if now - s.idle_since < IDLE_SECONDS]
                while line == key and idle and found is None:
                    candidate = idle.pop()
                    if candidate.alive():
                        found = candidate
                    else:
                        stale.append(candidate)
        for session in stale:
            session.close()
        if found is not None:
            return found, True
        return self._start(key, env), False

    def _give(self, key: tuple[str, ...], session: Session) -> None:
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if len(idle) < KEEP_IDLE:
                idle.append(session)
                return
        session.close()

    def idle(self, argv: Sequence[str]) -> list[int]:
        """The pids of the idle sessions of ``argv``."""
        with self._lock:
            return [s.pid for s in self._idle.get(tuple(argv), [])]

    def close(self, argv: Sequence[str] | None = None) -> None:
        """Close the idle sessions of ``argv``, or all of them: each node sees EOF and exits."""
        with self._lock:
            keys = [tuple(argv)] if argv is not None else list(self._idle)
            closing = [s for key in keys for s in self._idle.pop(key, [])]
        for session in closing:  # every node told first, then each waited for
            session.end()
        for session in closing:
            session.reap()


SESSIONS = Sessions(Session)
atexit.register(SESSIONS.close)
