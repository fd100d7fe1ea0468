"""The run supervisors' fork server: one process per node that has imported the supervisor once
and forks one per run.

A supervisor started as a fresh interpreter spends most of its start-up importing (about 20 ms of
CPU, and under load most of a start's latency). The node instead starts this server once, as
``python -S -m reconciler.node.forkserver FD`` with the supervisor's own minimal environment, in a
session of its own, with ``/`` as its working directory; ``FD`` is its end of a
``SOCK_SEQPACKET`` socket pair. Each message on it asks for one supervisor: a JSON object
(``run_dir``, ``workspace``, ``finish``) with three descriptors attached, the node's ready pipe,
``supervisor.log`` open for appending, and the run's supervisor lock (``files.SUPERVISOR_LOCK``),
which the node has locked. The server forks and closes its own copies of the descriptors at
once; that child forks the supervisor and exits, and the server reaps it (``SIGCHLD``). So the
supervisor is no descendant of the node: it leads a new session and process group, stopped as
one, and what ends the node's process tree (an ssh connection's end, a tree kill) leaves it
running. The supervisor keeps the lock's descriptor, so the lock is held from before it exists
until it is gone (and, for the instant that child takes to exit, a moment longer): that is how a
pass tells a starting supervisor from a dead one (see ``spawn.supervising``). The server ends
when the node closes its end.

Standard library only, like the supervisor; single-threaded, so that a fork copies no lock
another thread holds. Must not read anything but its socket, or act on a request's paths beyond
handing them to the supervisor: its requests come from its own node, as the same user.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import signal
import socket
import sys
import traceback
from types import FrameType

from reconciler.node import supervisor

MAX_REQUEST = 64 * 1024
DESCRIPTORS = 3  # ready pipe, supervisor.log, supervisor lock


def serve(sock: socket.socket) -> int:
    """Fork a supervisor per request until the node closes its end."""
    # What is imported now is every supervisor's: out of the collector's sight, its pages stay
    # shared with the forks instead of being copied when a collection touches them.
    gc.freeze()
    signal.signal(signal.SIGCHLD, _reap)
    while True:
        try:
            data, fds, _flags, _addr = socket.recv_fds(sock, MAX_REQUEST, DESCRIPTORS)
        except ConnectionResetError:
            return 0
        if not data:
            return 0  # the node is gone
        try:
            _fork_one(sock, data, fds)
        except (ValueError, KeyError, TypeError, OSError) as exc:
            # a request this server cannot serve: its ready pipe closes unwritten, and the node
            # reports that the supervisor did not start, with this line of supervisor.log
            if len(fds) > 1:
                with contextlib.suppress(OSError):
                    os.write(fds[1], f"reconciler: no supervisor forked: {exc!r}\n".encode())
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)


def _fork_one(sock: socket.socket, data: bytes, fds: list[int]) -> None:
    request = json.loads(data)
    run_dir, workspace = str(request["run_dir"]), str(request["workspace"])
    finishing = bool(request.get("finish"))
    if len(fds) != DESCRIPTORS:
        raise ValueError(f"a request carries {len(fds)} descriptors, not {DESCRIPTORS}")
    ready_fd, log_fd, _lock_fd = fds
    sys.stdout.flush()
    sys.stderr.flush()
    if os.fork() == 0:
        code = 1
        try:
            # The supervisor waits for its own children: the server's reaper is not its.
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            sock.close()  # the node's channel is the server's, not a run's
            if os.fork() > 0:
                os._exit(0)  # reaped by the server; the supervisor leaves the node's tree
            code = _supervise(run_dir, workspace, finishing, ready_fd, log_fd)
        finally:
            os._exit(code)


def _reap(signum: int, frame: FrameType | None) -> None:
    """Reap every child that has exited (each only forks a supervisor and exits)."""
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _supervise(run_dir: str, workspace: str, finishing: bool, ready_fd: int, log_fd: int) -> int:
    """Become the run's supervisor: a session leader in the worktree, its output in
    ``supervisor.log``; the lock's descriptor stays open (not inheritable) until it exits."""
    os.setsid()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    try:
        os.chdir(workspace)
        run = supervisor.finish if finishing else supervisor.supervise
        code = run(run_dir, ready_fd)
    except Exception:
        # supervisor.log is for operators debugging the node itself; a traceback is right here.
        traceback.print_exc()
        code = 1
    # The run's end is on disk (exit.json, written durably): be gone at once. The reconciler
    # counts the slot as used while this process lives, and nothing on disk says when it is
    # gone, so the interpreter's teardown would only hold the slot a few milliseconds longer.
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not args[0].isdigit():
        print("usage: python -m reconciler.node.forkserver FD", file=sys.stderr)
        return 2
    with socket.socket(fileno=int(args[0])) as sock:
        return serve(sock)


if __name__ == "__main__":
    raise SystemExit(main())
