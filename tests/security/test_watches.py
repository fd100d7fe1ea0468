"""Attack: a lane user points the root daemon's file watches at the rest of the machine.

``reconciler run`` (as root) watches the run directories of lanes on this machine so that an
agent's exit wakes it at once. It once watched ``~/worktrees/.runs`` recursively, following what
the lane user put there: a symlink to ``/usr/share`` made it hold about 3,300 inotify watches, and
one to ``/`` would exhaust root's watch limit for every root service. Now it watches only the
directory of each live run, each checked to be the lane user's own without following a symlink.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.security.security_support import (
    Control,
    Daemon,
    agent_doc,
    inotify_watches,
    lane_doc,
    require_root,
    task_doc,
)
from tests.support.linux_users import User

require_root()


def inode(path: str | Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


@pytest.mark.parametrize(
    ("planted", "target"),
    [
        ("worktrees/.runs", "/usr/share"),
        ("worktrees/.runs/task-a", "/usr/share"),
        ("worktrees/.runs/task-a/1.1", "/usr/share"),
        ("worktrees", "/"),
    ],
)
def test_a_lane_cannot_make_the_daemon_watch_outside_its_workspace(
    make_user: Callable[[], User],
    control: Control,
    agents: Path,
    planted: str,
    target: str,
) -> None:
    a = make_user()
    control.commit(
        lane_doc(a, "lane-a"),
        agent_doc(agents, "sleep"),
        task_doc("task-a", "lane-a", agent="sleep"),
    )
    daemon = Daemon(control, "--interval", "300s")
    try:
        run_dir = a.home / "worktrees/.runs/task-a/1.1"
        pid_file = run_dir / "pid.json"
        daemon.wait_for(pid_file.exists, "the agent's start", timeout=60)
        daemon.poke()
        # the live run's directory is watched — that one, not the tree above it
        watched = set(inotify_watches(daemon.proc.pid))
        assert inode(run_dir) in watched
        assert inode(a.home / "worktrees/.runs") not in watched
        baseline = len(watched)

        # the lane user swaps a directory on the way for a symlink out of its workspace
        moved = a.home / "moved-away"
        a.run(["mv", str(a.home / planted), str(moved)])
        a.run(["ln", "-s", target, str(a.home / planted)])
        daemon.poke()
        daemon.poke()  # the watches are re-pointed after each pass
        watched = set(inotify_watches(daemon.proc.pid))
        assert inode(target) not in watched
        assert len(watched) <= baseline, (len(watched), baseline)
        assert not {
            inode(p) for p in (Path(target) / "doc", Path(target) / "man") if p.exists()
        } & (watched)
    finally:
        daemon.stop()


def test_an_agent_exit_in_a_lane_users_run_wakes_the_daemon_at_once(
    make_user: Callable[[], User], control: Control, agents: Path
) -> None:
    """The watch is still worth having: the lane's real run directory is watched, and the
    agent's end starts a pass long before the 300 s interval."""
    a = make_user()
    control.commit(
        lane_doc(a, "lane-a"),
        agent_doc(agents, "sleep"),
        task_doc("task-a", "lane-a", agent="sleep", maxAttempts=2),
    )
    daemon = Daemon(control, "--interval", "300s")
    try:
        first = a.home / "worktrees/.runs/task-a/1.1/pid.json"
        daemon.wait_for(first.exists, "the agent's start", timeout=60)
        daemon.poke()
        record = json.loads(first.read_text())
        os.kill(record["agent_pid"], signal.SIGKILL)  # its supervisor records the exit
        woke = daemon.wait_for(
            lambda: [p for p in daemon.passes() if "run-exit" in p.get("reasons", {})],
            "a pass woken by the agent's exit",
            timeout=60,
        )
        assert woke
    finally:
        daemon.stop()
