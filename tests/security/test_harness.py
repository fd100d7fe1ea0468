"""The workbench itself: two lanes as two real users converge through the CLI run as root.

Every attack in this suite starts from this world; if it does not converge, no attack result
means anything.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.security.security_support import (
    Control,
    agent_doc,
    lane_doc,
    require_root,
    task_doc,
)
from tests.support.linux_users import User

require_root()


def test_two_lanes_converge_as_their_users(
    make_user: Callable[[], User], control: Control, agents: Path
) -> None:
    a, b = make_user(), make_user()
    control.commit(
        lane_doc(a, "lane-a"),
        lane_doc(b, "lane-b"),
        agent_doc(agents, "commit"),
        task_doc("task-a", "lane-a"),
        task_doc("task-b", "lane-b"),
    )
    control.converge({"task-a": "pr-open", "task-b": "pr-open"})
    for user, task in ((a, "task-a"), (b, "task-b")):
        run_dir = user.home / "worktrees/.runs" / task / "1.1"
        assert run_dir.stat().st_uid == user.uid
        assert (user.home / "worktrees/app" / task / f"{task}.txt").stat().st_uid == user.uid
