"""Attack: a lane user plants symlinks where root will write (threat model: lane user vs root).

``plan --out /tmp/x.json`` wrote ``x.json.tmp`` with a plain open, following a symlink a local
user had planted there, and root overwrote a root-only file. Every file root writes is now
created as a fresh temporary file (``O_EXCL|O_NOFOLLOW``) beside its target and renamed over it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.security.security_support import (
    Control,
    agent_doc,
    lane_doc,
    require_root,
    task_doc,
)
from tests.support.linux_users import User, shared_tempdir

require_root()


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A directory like /tmp: everyone may create files in it (sticky)."""
    path = shared_tempdir("reconciler-shared-", mode=0o1777)
    try:
        yield path
    finally:
        for child in path.iterdir():
            child.unlink()
        path.rmdir()


def test_plan_out_never_writes_through_a_planted_symlink(
    make_user: Callable[[], User], control: Control, agents: Path, shared_tmp: Path, tmp_path: Path
) -> None:
    a = make_user()
    control.commit(lane_doc(a, "lane-a"), agent_doc(agents, "commit"), task_doc("t", "lane-a"))
    secret = tmp_path / "root-only"
    secret.write_text("root's own data\n")
    secret.chmod(0o600)
    out = shared_tmp / "x.json"
    # the lane user plants symlinks at the plan's name and at every name beside it root used
    for name in ("x.json", "x.json.tmp", ".x.json.tmp"):
        a.run(["ln", "-s", str(secret), str(shared_tmp / name)])

    proc = control.cli("plan", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert secret.read_text() == "root's own data\n"  # never written through
    assert not out.is_symlink()
    assert out.stat().st_uid == 0 and out.stat().st_mode & 0o777 == 0o600
    saved = json.loads(out.read_text())
    assert [a["action"] for a in saved["actions"]] == ["start"]
    leftovers = sorted(p.name for p in shared_tmp.iterdir() if p.name.startswith(".tmp-"))
    assert leftovers == []
    # …and the plan saved that way applies
    assert control.cli("apply", str(out)).returncode == 0
    assert os.path.exists(a.home / "worktrees/.runs/t/1.1/run.json")


def test_apply_refuses_a_plan_file_someone_else_could_have_written(
    make_user: Callable[[], User], control: Control, agents: Path, shared_tmp: Path
) -> None:
    """A saved plan's actions are what apply does: a lane user who swaps in its own plan (say, a
    `stop` of another lane's task) must not have it applied."""
    a = make_user()
    control.commit(lane_doc(a, "lane-a"), agent_doc(agents, "commit"), task_doc("t", "lane-a"))
    mine = shared_tmp / "mine.json"
    assert control.cli("plan", "--out", str(mine)).returncode == 0
    theirs = shared_tmp / "theirs.json"
    a.write(theirs, mine.read_text(), 0o644)  # the same plan, but the lane user's file
    proc = control.cli("apply", str(theirs))
    assert proc.returncode == 1
    assert "can be written by someone else" in proc.stderr, proc.stderr
    assert not (a.home / "worktrees/.runs").exists()
