"""Starting a run's supervisor: a detached process, and the moment it has recorded itself.

What the run is (its prompt, environment and ``run.json``) is :mod:`reconciler.node.runs`'s; this
module only starts ``python -m reconciler.node.supervisor`` for a prepared run directory, reaps
its direct child, and says in a sentence why a supervisor did not start. Must not pass anything
of the node's own environment on (the supervisor gets a fixed, minimal one).
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

from reconciler.node import files
from reconciler.node.errors import NodeError
from reconciler.node.loginenv import DEFAULT_PATH

START_TIMEOUT = 10.0
RUN_MARKER = "RECONCILER_RUN_DIR"


def _supervisor_env(run_dir: str) -> dict[str, str]:
    """The supervisor's own environment: enough to import this package, nothing secret.

    The import path is the node's own, so the supervisor runs the same code however the node
    was installed. PYTHONSAFEPATH keeps ``-m`` from putting its working directory (the agent's
    workspace, whose files the agent controls) first on the import path. It carries the run
    marker so that a stop can find processes that escaped the group.
    """
    package_parent = str(Path(__file__).resolve().parents[2])
    paths = dict.fromkeys([package_parent, *(p for p in sys.path if p and os.path.isabs(p))])
    return {
        "PATH": DEFAULT_PATH,
        "LANG": "C.UTF-8",
        "PYTHONPATH": os.pathsep.join(paths),
        "PYTHONSAFEPATH": "1",
        "PYTHONNOUSERSITE": "1",
        RUN_MARKER: run_dir,
    }


def spawn_supervisor(run_dir: str, workspace: str, *, finish: bool = False) -> None:
    """Start the supervisor of the run prepared in ``run_dir`` and return once it has started the
    agent (or found the run already ended or owned); NodeError if it failed to start. With
    ``finish``, a finisher of a run whose supervisor died after its agent ended, returning once
    it has taken the run over."""
    log_path = os.path.join(run_dir, files.SUPERVISOR_LOG)
    ready_r, ready_w = os.pipe()
    try:
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    # No site: its .pth files (an editable install's finder among them) cost a
                    # third of the start-up and are not needed, the import path being in
                    # PYTHONPATH; none of them runs in the supervisor either.
                    "-S",
                    "-m",
                    "reconciler.node.supervisor",
                    *(["--finish"] if finish else []),
                    "--ready-fd",
                    str(ready_w),
                    run_dir,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=workspace,
                env=_supervisor_env(run_dir),
                close_fds=True,
                pass_fds=(ready_w,),
                start_new_session=True,
            )
        os.close(ready_w)
        ready_w = -1
        # The supervisor says "pid.json is written" on the pipe; EOF without it means it died.
        readable, _, _ = select.select([ready_r], [], [], START_TIMEOUT)
        signalled = bool(readable) and os.read(ready_r, 1) == b"\n"
    finally:
        os.close(ready_r)
        if ready_w >= 0:
            os.close(ready_w)
    # The direct child only forks and exits; reaping it here leaves no zombie behind.
    try:
        code = proc.wait(timeout=START_TIMEOUT if not signalled else None)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        code = -1
    if code != 0:
        # Not temporary: a broken installation or an unwritable run directory stays broken, so
        # the start is recorded crashed and a persistent cause ends the task failed, with it.
        raise NodeError(
            f"the supervisor of run {run_dir} failed to start (exit {code}): "
            f"{_last_line(log_path)}; see {log_path}"
        )


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
