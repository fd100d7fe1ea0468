"""A task's branch brought up to date with a base that moved, in the task's worktree (where the
branch is checked out, so the lane's checkout cannot do it), through the node's entry point."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from reconciler.node import git as gitops
from reconciler.node import procs
from reconciler.protocol import (
    Fingerprint,
    PrepareWorkspaceRequest,
    PushRequest,
    RebaseRequest,
    RebaseResult,
)
from tests.node.node_support import Env
from tests.support.git import commit, git
from tests.support.waiting import wait_for


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


def interrupted(env: Env, task: str) -> Path:
    """The task's worktree as a reconciler killed mid-rebase leaves it: a rebase (of the
    branch, with uncommitted work stashed) stopped half-way, HEAD detached, and the node's mark
    naming a process that is gone."""
    ws = work(env, task, ("one.txt", "1\n"), ("two.txt", "2\n"))
    (ws / "notes.txt").write_text("not committed\n")
    move_main(env, "main.txt", "main moved\n")
    git(env.checkout, "fetch", "-q", "origin", "main")
    stopped = gitops.run(
        ["rebase", "--autostash", "--exec", "false", "origin/main"], str(ws), check=False
    )
    assert stopped.returncode != 0 and git(ws, "branch", "--show-current") == ""
    mark = Path(git(ws, "rev-parse", "--absolute-git-dir")) / gitops.REBASE_MARK
    dead = Fingerprint(boot_id=procs.boot_id(), pid=2**22 + 1, start_time=1)  # above pid_max
    mark.write_text(dead.model_dump_json())
    return ws


def stand_in(ws: Path) -> subprocess.Popen[bytes]:
    """A process carrying the marker of a rebase of ``ws``, as its orphaned git would, until
    its stdin is closed; returned once the marker can be seen in /proc."""
    orphan = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"],
        stdin=subprocess.PIPE,
        env={**os.environ, gitops.REBASE_ENV: str(ws)},
    )
    wait_for(
        lambda: orphan.pid in procs.pids_with_env(gitops.REBASE_ENV, str(ws)),
        "the stand-in to carry the rebase's marker",
        details=orphan.poll,
    )
    return orphan


def test_a_rebase_interrupted_by_a_crash_is_waited_for_undone_and_done_again(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = interrupted(env, "crashed")
    # The killed node's git process, orphaned, still runs in the worktree (a stand-in carrying
    # its marker), until the test lets it end.
    orphan = stand_in(ws)
    waiting = threading.Event()
    real_wait = procs.wait_until

    def watched(predicate: Callable[[], bool], timeout: float) -> bool:
        def seen() -> bool:
            done = predicate()
            if not done:
                waiting.set()
            return done

        return real_wait(seen, timeout)

    monkeypatch.setattr(procs, "wait_until", watched)
    answer: list[RebaseResult] = []
    rebasing = threading.Thread(target=lambda: answer.append(rebase(env, "crashed")))
    rebasing.start()
    try:
        assert waiting.wait(30), "the rebase did not wait for the orphaned git process"
        assert rebasing.is_alive() and git(ws, "branch", "--show-current") == ""
    finally:
        assert orphan.stdin is not None
        orphan.stdin.close()
        orphan.wait()
    rebasing.join(60)
    (done,) = answer
    assert done.how == "rebased"
    assert git(ws, "branch", "--show-current") == "agent/crashed"
    assert git(ws, "log", "--format=%s", "-3").splitlines() == [
        "crashed changes two.txt",
        "crashed changes one.txt",
        "main changes main.txt",
    ]
    assert (ws / "notes.txt").read_text() == "not committed\n"  # the autostash came back
    assert not (Path(git(ws, "rev-parse", "--absolute-git-dir")) / gitops.REBASE_MARK).exists()


def test_an_interrupted_rebase_whose_git_still_runs_is_a_temporary_failure(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = interrupted(env, "busy")
    monkeypatch.setattr(gitops, "INTERRUPTED_WAIT", 0.0)
    with stand_in(ws) as orphan:
        response = env.respond(RebaseRequest(lane=env.lane, task=env.task("busy")))
        assert orphan.stdin is not None
        orphan.stdin.close()
    assert response.failure is not None and response.failure.temporary
    assert "interrupted rebase still run in" in response.failure.error
    assert git(ws, "branch", "--show-current") == ""  # left for the next pass


def test_a_rebase_in_progress_that_is_not_the_reconcilers_is_left_to_its_owner(env: Env) -> None:
    ws = interrupted(env, "theirs")
    (Path(git(ws, "rev-parse", "--absolute-git-dir")) / gitops.REBASE_MARK).unlink()
    response = env.respond(RebaseRequest(lane=env.lane, task=env.task("theirs")))
    assert response.failure is not None and not response.failure.temporary
    assert f"a rebase is in progress in the worktree {ws}, not the reconciler's" in (
        response.failure.error
    )
    assert f"git -C {ws} rebase --abort" in response.failure.error
    assert git(ws, "branch", "--show-current") == ""


def test_prepare_fetches_the_base_for_an_existing_branch_when_asked(env: Env) -> None:
    work(env, "late", ("late.txt", "late\n"))
    moved = move_main(env, "main.txt", "moved\n")
    tracking = ["rev-parse", "refs/remotes/origin/main"]
    env.call(PrepareWorkspaceRequest(lane=env.lane, task=env.task("late")))
    assert git(env.checkout, *tracking) != moved  # an existing branch: no fetch by default
    env.call(PrepareWorkspaceRequest(lane=env.lane, task=env.task("late"), fetch_base=True))
    assert git(env.checkout, *tracking) == moved  # the run sees the base as the remote has it


@pytest.mark.parametrize("tracked", [True, False])
def test_a_new_branch_starts_at_the_base_the_remote_has_now(env: Env, tracked: bool) -> None:
    """Also in a clone that had no remote-tracking base yet (its fetch makes one): the branch
    starts there, not at the older local base."""
    if not tracked:
        git(env.checkout, "update-ref", "-d", "refs/remotes/origin/main")
    moved = move_main(env, "main.txt", "moved\n")
    ws = env.prepare("fresh")
    assert git(ws, "rev-parse", "HEAD") == moved
    assert git(env.checkout, "rev-parse", "refs/heads/agent/fresh") == moved


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
