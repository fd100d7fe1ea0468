"""Starting a run's supervisor through the node's fork server, and telling whether one lives.

What the run is (its prompt, environment and ``run.json``) is :mod:`reconciler.node.runs`'s; this
module asks :mod:`reconciler.node.forkserver` (started on first use, one per node process) for a
supervisor of a prepared run directory, waits until it has started the agent, and says in a
sentence why a supervisor did not start. Must not pass anything of the node's own environment
on (the fork server, and so every supervisor, gets a fixed, minimal one).

**Which supervisor lives.** A supervisor is known by the fingerprint it records in ``pid.json``.
Before it has written that record (and while a finisher replaces a dead supervisor's), the run's
supervisor lock says it: the node locks ``files.SUPERVISOR_LOCK`` before it asks, the lock's
descriptor travels to the supervisor, and the kernel releases it when the last process holding it
is gone, so there is no moment between the request and ``pid.json`` when a starting supervisor
looks dead (:func:`supervising`).
"""

from __future__ import annotations

import atexit
import fcntl
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from reconciler.node import files
from reconciler.node.errors import NodeError
from reconciler.node.loginenv import DEFAULT_PATH

START_TIMEOUT = 10.0
RUN_MARKER = "RECONCILER_RUN_DIR"
LOCK_WAIT = 1.0  # seconds to wait for a pass's look at the lock (microseconds) to end


def _server_env() -> dict[str, str]:
    """The fork server's environment, and so every supervisor's: enough to import this
    package, nothing secret.

    The import path is the node's own, so the supervisors run the same code however the node
    was installed. PYTHONSAFEPATH keeps ``-m`` from putting its working directory first on the
    import path.
    """
    package_parent = str(Path(__file__).resolve().parents[2])
    paths = dict.fromkeys([package_parent, *(p for p in sys.path if p and os.path.isabs(p))])
    return {
        "PATH": DEFAULT_PATH,
        "LANG": "C.UTF-8",
        "PYTHONPATH": os.pathsep.join(paths),
        "PYTHONSAFEPATH": "1",
        "PYTHONNOUSERSITE": "1",
    }


class ForkServer:
    """The node process's fork server: started on first use, started again when it is found
    gone, ended when this process closes its end (at its exit). Safe to use from threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._owner = 0  # the pid that started it: a forked node starts its own

    def ask(self, request: dict[str, object], fds: list[int]) -> None:
        """Send one request with its descriptors; NodeError when no server takes it."""
        payload = json.dumps(request).encode()
        with self._lock:
            for attempt in (1, 2):
                sock = self._running()
                try:
                    socket.send_fds(sock, [payload], fds)
                    return
                except OSError as exc:
                    self._close_locked()
                    if attempt == 2:
                        raise NodeError(
                            f"the supervisors' fork server did not take a request: {exc}"
                        ) from exc

    def _running(self) -> socket.socket:
        if self._owner == os.getpid() and self._sock is not None:
            if self._proc is not None and self._proc.poll() is None:
                return self._sock
            self._close_locked()
        self._proc = self._sock = None
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._proc = subprocess.Popen(
                # No site: its .pth files (an editable install's finder among them) cost a
                # third of the start-up and are not needed, the import path being in PYTHONPATH.
                [sys.executable, "-S", "-m", "reconciler.node.forkserver", str(theirs.fileno())],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                cwd="/",
                env=_server_env(),
                close_fds=True,
                pass_fds=(theirs.fileno(),),
                start_new_session=True,
            )
        except OSError as exc:
            mine.close()
            raise NodeError(f"the supervisors' fork server did not start: {exc}") from exc
        finally:
            theirs.close()
        self._sock, self._owner = mine, os.getpid()
        return mine

    def _close_locked(self) -> None:
        if self._sock is not None and self._owner == os.getpid():
            self._sock.close()
            if self._proc is not None:
                try:
                    self._proc.wait(timeout=START_TIMEOUT)  # its input closed, it ends at once
                except subprocess.TimeoutExpired:
                    self._proc.kill()  # its supervisors are not its children: they go on
                    self._proc.wait()
        self._sock = self._proc = None

    def close(self) -> None:
        with self._lock:
            self._close_locked()


FORK_SERVER = ForkServer()
atexit.register(FORK_SERVER.close)


def spawn_supervisor(run_dir: str, workspace: str, *, finish: bool = False) -> None:
    """Start the supervisor of the run prepared in ``run_dir`` and return once it has started the
    agent (or found the run already ended or owned); NodeError if it failed to start. With
    ``finish``, a finisher of a run whose supervisor died after its agent ended, returning once
    it has taken the run over."""
    log_path = os.path.join(run_dir, files.SUPERVISOR_LOG)
    flags = os.O_CLOEXEC | os.O_NOFOLLOW
    log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | flags, 0o600)
    fds = [log_fd]
    try:
        fds.append(_lock(run_dir))
        ready_r, ready_w = os.pipe()
        fds.insert(0, ready_w)
        try:
            request = {"run_dir": run_dir, "workspace": workspace, "finish": finish}
            FORK_SERVER.ask(request, fds)
            for fd in fds:  # the supervisor holds them now: the ready pipe ends with it
                os.close(fd)
            fds = []
            # The supervisor says "pid.json is written" on the pipe; EOF without it means it died.
            readable, _, _ = select.select([ready_r], [], [], START_TIMEOUT)
            signalled = bool(readable) and os.read(ready_r, 1) == b"\n"
        finally:
            os.close(ready_r)
    finally:
        for fd in fds:
            os.close(fd)
    if not signalled:
        # Not temporary: a broken installation or an unwritable run directory stays broken, so
        # the start is recorded crashed and a persistent cause ends the task failed, with it.
        raise NodeError(
            f"the supervisor of run {run_dir} failed to start: {_last_line(log_path)}; "
            f"see {log_path}"
        )


def _lock(run_dir: str) -> int:
    """The run's supervisor lock, locked: a descriptor for the supervisor to hold."""
    path = os.path.join(run_dir, files.SUPERVISOR_LOCK)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise NodeError(
                    f"a supervisor of run {run_dir} still holds {path}; the run is not over",
                    temporary=True,
                ) from None
            time.sleep(0.001)


def supervising(run_dir: str) -> bool:
    """Whether a supervisor (or finisher) of the run lives, recorded in ``pid.json`` or not: one
    holds the run's supervisor lock. A look takes the lock shared for an instant, so looks
    never mistake each other for a supervisor."""
    try:
        fd = os.open(
            os.path.join(run_dir, files.SUPERVISOR_LOCK),
            os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW,
        )
    except OSError:
        return False  # no supervisor was ever asked for
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # a shared lock taken goes with the descriptor
    return False


def _last_line(path: str) -> str:
    lines = files.tail_bytes(path, 2048).decode("utf-8", errors="replace").strip().splitlines()
    return lines[-1] if lines else "no message"


def wait_for_pid(pid_path: str, run_dir: str) -> None:
    """Until the run's supervisor has recorded itself in ``pid_path``; a temporary NodeError if it
    has not within ``START_TIMEOUT``."""
    deadline = time.monotonic() + START_TIMEOUT
    delay = 0.002
    while not os.path.exists(pid_path):
        if time.monotonic() >= deadline:
            log = os.path.join(run_dir, files.SUPERVISOR_LOG)
            raise NodeError(
                f"the supervisor of run {run_dir} did not record its pid within "
                f"{START_TIMEOUT:.0f}s ({_last_line(log)}); see {log}",
                temporary=True,
            )
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
