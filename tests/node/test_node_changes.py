"""A task's changes as the dashboard shows them: read on the lane without writing anything of
the agent's, new files included, the branch as committed once the worktree is gone."""

from __future__ import annotations

import os

from reconciler.protocol import (
    ChangesRequest,
    ChangesResult,
    PrepareWorkspaceRequest,
    RemoveWorkspaceRequest,
)
from tests.node.node_support import Env
from tests.support.git import git


def changes(env: Env, name: str) -> ChangesResult:
    return ChangesResult.model_validate(
        env.call(ChangesRequest(lane=env.lane, task=env.task(name)))
    )


def test_the_worktree_and_its_new_files_are_read_without_touching_its_index(env: Env) -> None:
    env.call(PrepareWorkspaceRequest(lane=env.lane, task=env.task("work")))
    ws = env.workspace("work")
    (ws / "committed.txt").write_text("one\n")
    git(ws, "add", "committed.txt")
    git(ws, "commit", "-qm", "one")
    (ws / "new[*].txt").write_text("not added yet\n")  # a name that is also a pathspec
    index = ws / git(ws, "rev-parse", "--git-path", "index").strip()
    status = git(ws, "status", "--porcelain")  # (a status may refresh the index: first)
    written = os.stat(index).st_mtime_ns
    seen = changes(env, "work")
    assert seen.source == "worktree" and seen.untracked == ["new[*].txt"]
    assert "+one" in seen.diff and "+not added yet" in seen.diff
    assert "new file mode" in seen.diff and not seen.truncated
    assert os.stat(index).st_mtime_ns == written  # the agent's index was not written
    assert git(ws, "status", "--porcelain") == status  # nor added to

    env.call(RemoveWorkspaceRequest(lane=env.lane, task=env.task("work")))
    kept = changes(env, "work")  # the branch as committed: the uncommitted file went with it
    assert kept.source == "branch" and "+one" in kept.diff and "not added yet" not in kept.diff
    assert changes(env, "never").source == "none"
