"""A task's branch brought up to date with a base that moved, in the task's worktree (where the
branch is checked out, so the lane's checkout cannot do it), through the node's entry point."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.node import git as gitops
from reconciler.protocol import (
    PrepareWorkspaceRequest,
    PushRequest,
    RebaseRequest,
    RebaseResult,
)
from tests.node.node_support import Env
from tests.support.git import commit, git


def colleague(env: Env) -> Path:
    """Another clone of the origin: someone whose merges move main while the task works."""
    other = env.tmp / "colleague"
    if not other.exists():
        git(env.tmp, "clone", "-q", str(env.origin), str(other))
    git(other, "pull", "-q", "--ff-only", "origin", "main")
    return other


def move_main(env: Env, name: str, content: str) -> str:
    other = colleague(env)
    sha = commit(other, name, content, f"main changes {name}")
    git(other, "push", "-q", "origin", "main")
    return sha


def work(env: Env, task: str, *changes: tuple[str, str]) -> Path:
    """The task's worktree with its agent's commits, pushed as its PR branch."""
    ws = env.prepare(task)
    for name, content in changes:
        commit(ws, name, content, f"{task} changes {name}")
    env.call(PushRequest(lane=env.lane, repo="webapp", branch=f"agent/{task}"))
    return ws


def rebase(env: Env, task: str) -> RebaseResult:
    return RebaseResult.model_validate(env.call(RebaseRequest(lane=env.lane, task=env.task(task))))


def test_a_clean_base_move_is_rebased_in_the_worktree_keeping_uncommitted_work(env: Env) -> None:
    ws = work(env, "docs", ("docs.txt", "docs\n"))
    (ws / "notes.txt").write_text("not committed\n")  # what the agent left uncommitted
    new_main = move_main(env, "main.txt", "main moved\n")
    # the branch is checked out in the worktree: the lane's checkout cannot rebase it
    git(env.checkout, "fetch", "-q", "origin", "main")
    refused = gitops.run(["rebase", "origin/main", "agent/docs"], str(env.checkout), check=False)
    assert refused.returncode != 0 and "already checked out" in refused.stderr, refused.stderr

    done = rebase(env, "docs")
    assert (done.how, done.onto) == ("rebased", new_main)
    assert git(ws, "rev-parse", "HEAD") == done.sha
    assert git(ws, "log", "--format=%s", "-2").splitlines() == [
        "docs changes docs.txt",
        "main changes main.txt",
    ]
    assert (ws / "main.txt").read_text() == "main moved\n"
    assert (ws / "notes.txt").read_text() == "not committed\n"  # stashed and put back
    assert git(ws, "log", "-1", "--format=%an / %cn") == "t / reconciler"  # authors stay
    # already up to date: nothing to do
    assert rebase(env, "docs") == RebaseResult(sha=done.sha, onto=new_main, how="current")


def test_a_conflict_is_refused_naming_the_files_and_leaves_the_worktree_as_it_was(
    env: Env,
) -> None:
    ws = work(env, "clash", ("shared.txt", "the task's version\n"))
    head = git(ws, "rev-parse", "HEAD")
    move_main(env, "shared.txt", "main's version\n")
    response = env.respond(RebaseRequest(lane=env.lane, task=env.task("clash")))
    assert not response.ok and response.failure is not None
    assert "agent/clash conflicts with main in shared.txt" in response.failure.error
    assert not response.failure.temporary
    assert git(ws, "rev-parse", "HEAD") == head
    assert git(ws, "status", "--porcelain") == ""
    assert (ws / "shared.txt").read_text() == "the task's version\n"


def test_a_rebase_that_stops_where_the_merge_is_clean_merges_the_base_instead(env: Env) -> None:
    # the branch changes a line and changes it back: replaying the first commit conflicts with
    # main's change of that line, while the branch as a whole does not touch it
    ws = work(env, "back", ("README.md", "changed\n"), ("README.md", "hello\n"), ("b.txt", "b\n"))
    onto = move_main(env, "README.md", "main's hello\n")
    done = rebase(env, "back")
    assert (done.how, done.onto) == ("merged", onto)
    assert git(ws, "log", "-1", "--format=%s") == "Merge main into agent/back"
    assert (ws / "README.md").read_text() == "main's hello\n" and (ws / "b.txt").exists()
    assert git(ws, "status", "--porcelain") == ""


def test_no_rebase_without_the_task_worktree_on_its_branch(env: Env) -> None:
    response = env.respond(RebaseRequest(lane=env.lane, task=env.task("nowhere")))
    assert response.failure is not None and "is missing" in response.failure.error
    ws = env.prepare("elsewhere")
    git(ws, "switch", "-q", "--detach")
    response = env.respond(RebaseRequest(lane=env.lane, task=env.task("elsewhere")))
    assert response.failure is not None and "on a detached HEAD, not agent/elsewhere" in (
        response.failure.error
    )


def test_prepare_fetches_the_base_for_an_existing_branch_when_asked(env: Env) -> None:
    work(env, "late", ("late.txt", "late\n"))
    moved = move_main(env, "main.txt", "moved\n")
    tracking = ["rev-parse", "refs/remotes/origin/main"]
    env.call(PrepareWorkspaceRequest(lane=env.lane, task=env.task("late")))
    assert git(env.checkout, *tracking) != moved  # an existing branch: no fetch by default
    env.call(PrepareWorkspaceRequest(lane=env.lane, task=env.task("late"), fetch_base=True))
    assert git(env.checkout, *tracking) == moved  # the run sees the base as the remote has it


@pytest.mark.parametrize("keep", [False, True])
def test_a_trial_merge_names_the_conflicts_and_keeps_objects_only_when_asked(
    env: Env, keep: bool
) -> None:
    ours = commit(env.checkout, "x.txt", "ours\n")
    git(env.checkout, "switch", "-q", "-c", "theirs", "HEAD~1")
    theirs = commit(env.checkout, "x.txt", "theirs\n")
    before = git(env.checkout, "count-objects")
    trial = gitops.merge_trees(str(env.checkout), ours, theirs, keep=keep)
    assert (trial.clean, trial.conflicts) == (False, ["x.txt"])
    assert (git(env.checkout, "count-objects") != before) is keep
    clean = gitops.merge_trees(str(env.checkout), ours, git(env.checkout, "rev-parse", "HEAD~1"))
    assert clean.clean and clean.tree == git(env.checkout, "rev-parse", f"{ours}^{{tree}}")
