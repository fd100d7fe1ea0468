"""Worktrees, branches and pushes against real repositories."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from reconciler.node import git as gitops
from reconciler.protocol import (
    PushRequest,
    PushResult,
    RemovedResult,
    RemoveWorkspaceRequest,
    WorkspaceResult,
)
from tests.node.node_support import Env, GitCount, lock_probe_hook
from tests.support.git import commit, git
from tests.support.waiting import wait_for


def test_prepare_creates_then_reuses(env: Env) -> None:
    from reconciler.protocol import PrepareWorkspaceRequest

    req = PrepareWorkspaceRequest(lane=env.lane, task=env.task("fix-login"))
    first = WorkspaceResult.model_validate(env.call(req))
    assert first.created
    assert first.path == str(env.workspace("fix-login"))
    assert git(first.path, "rev-parse", "--abbrev-ref", "HEAD") == "agent/fix-login"
    assert git(first.path, "rev-parse", "HEAD") == git(env.checkout, "rev-parse", "main")
    # No upstream: the agent's branch must never track the base.
    tracking = gitops.run(
        ["config", "--get", "branch.agent/fix-login.merge"], str(env.checkout), check=False
    )
    assert tracking.returncode == 1
    Path(first.path, "scratch.txt").write_text("dirty")
    second = WorkspaceResult.model_validate(env.call(req))
    assert not second.created
    assert Path(first.path, "scratch.txt").exists()


def test_a_worktree_made_before_is_reused_without_git_or_the_repository_lock(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An iteration's start (or one after a start that died once its worktree was made) finds
    the worktree registered and checked out from the repository's files: no git process, and
    no wait for the repository's lock, which other starts and cleanups hold."""
    from reconciler.protocol import PrepareWorkspaceRequest

    req = PrepareWorkspaceRequest(lane=env.lane, task=env.task("again"))
    assert WorkspaceResult.model_validate(env.call(req)).created
    count = GitCount(monkeypatch)
    monkeypatch.setattr(gitops, "LOCK_TIMEOUT", 2.0)  # a start that waits fails, not hangs
    answers: list[Any] = []
    with gitops.repo_lock(str(env.checkout)):  # another start holds the repository
        assert count.since(lambda: answers.append(env.call(req))) == 0
    assert not WorkspaceResult.model_validate(answers[0]).created
    # registered but never checked out: that one still waits for the lock and is finished
    path = env.workspace("half")
    git(env.checkout, "worktree", "add", "-q", "--no-checkout", "-b", "agent/half", str(path),
        "main")  # fmt: skip
    half = PrepareWorkspaceRequest(lane=env.lane, task=env.task("half"))
    assert WorkspaceResult.model_validate(env.call(half)).created


def test_a_start_checks_its_files_out_without_holding_the_repository(env: Env) -> None:
    """A new worktree is registered under the repository's worktree lock and checked out after
    it, so a start or cleanup on the same repository waits only for the registration; the
    repository's post-checkout hook still runs, in the new worktree."""
    seen = env.tmp / "hook-saw"
    lock_probe_hook(env.checkout, seen)
    ws = env.prepare("checked-out")
    assert seen.read_text().splitlines() == ["free", str(ws)]
    assert (ws / "README.md").read_text() == "hello\n"
    assert git(ws, "status", "--porcelain") == ""


def test_a_start_makes_its_branch_before_it_waits_for_the_repository(env: Env) -> None:
    """A new branch is a ref: it is made before the repository's worktree lock is taken, so
    the registration under the lock (which other starts queue for) is one git process."""
    checkout = str(env.checkout)
    done = threading.Event()

    def start() -> None:
        env.prepare("queued")
        done.set()

    with gitops.repo_lock(checkout):  # another start or cleanup holds the repository
        worker = threading.Thread(target=start, name="queued-start")
        worker.start()
        wait_for(
            lambda: gitops.resolve(checkout, "refs/heads/agent/queued"),
            "the branch, made while the lock is held elsewhere",
        )
        assert not done.is_set()
    worker.join(timeout=60)
    assert done.is_set()
    ws = env.workspace("queued")
    assert git(ws, "rev-parse", "--abbrev-ref", "HEAD") == "agent/queued"
    assert git(ws, "rev-parse", "HEAD") == git(checkout, "rev-parse", "origin/main")


def test_a_worktree_registered_but_never_checked_out_is_finished(env: Env) -> None:
    """A node that died between registering a start's worktree and checking it out left it
    without files: the next prepare checks it out, and it counts as created (so afterCreate
    runs), where it used to be reused empty."""
    from reconciler.protocol import PrepareWorkspaceRequest

    path = env.workspace("interrupted")
    git(env.checkout, "worktree", "add", "-q", "--no-checkout", "-b", "agent/interrupted",
        str(path), "main")  # fmt: skip
    assert not (path / "README.md").exists()
    req = PrepareWorkspaceRequest(lane=env.lane, task=env.task("interrupted"))
    result = WorkspaceResult.model_validate(env.call(req))
    assert result.created
    assert (path / "README.md").read_text() == "hello\n"
    assert git(path, "status", "--porcelain") == ""
    again = WorkspaceResult.model_validate(env.call(req))
    assert not again.created


def test_prepare_checks_out_an_existing_branch(env: Env) -> None:
    git(env.checkout, "branch", "agent/resume", "main")
    ws = env.prepare("resume")
    sha = commit(ws, "x.txt", "x\n")
    env.call(RemoveWorkspaceRequest(lane=env.lane, task=env.task("resume")))
    assert not ws.exists()
    ws = env.prepare("resume")
    assert git(ws, "rev-parse", "HEAD") == sha


def test_prepare_from_remote_tracking_base(env: Env) -> None:
    seed = env.tmp / "seed"
    commit(seed, "rel.txt", "release\n")
    git(seed, "push", "-q", str(env.origin), "HEAD:refs/heads/release")
    git(env.checkout, "fetch", "-q", "origin")
    ws_req = env.task("on-release", base="release")
    from reconciler.protocol import PrepareWorkspaceRequest

    env.call(PrepareWorkspaceRequest(lane=env.lane, task=ws_req))
    ws = env.workspace("on-release")
    assert (ws / "rel.txt").read_text() == "release\n"


def test_prepare_with_missing_base_fails_with_a_fix(env: Env) -> None:
    from reconciler.protocol import PrepareWorkspaceRequest

    response = env.respond(
        PrepareWorkspaceRequest(lane=env.lane, task=env.task("nobase", base="develop"))
    )
    assert not response.ok
    assert response.failure is not None
    assert "develop" in response.failure.error
    assert "fetch" in response.failure.error
    assert gitops.resolve(str(env.checkout), "refs/heads/agent/nobase") is None


def test_prepare_recreates_a_worktree_whose_directory_vanished(env: Env) -> None:
    import shutil

    ws = env.prepare("vanished")
    shutil.rmtree(ws)
    from reconciler.protocol import PrepareWorkspaceRequest

    result = WorkspaceResult.model_validate(
        env.call(PrepareWorkspaceRequest(lane=env.lane, task=env.task("vanished")))
    )
    assert result.created
    assert (ws / "README.md").exists()


def test_parallel_prepares_on_one_repository_all_succeed(env: Env) -> None:
    from reconciler.protocol import PrepareWorkspaceRequest

    names = [f"par-{i}" for i in range(8)]
    results: dict[str, object] = {}
    barrier = threading.Barrier(len(names))

    def work(name: str) -> None:
        barrier.wait()
        results[name] = env.respond(PrepareWorkspaceRequest(lane=env.lane, task=env.task(name)))

    threads = [threading.Thread(target=work, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for name in names:
        response = results[name]
        assert response.ok, response.failure  # type: ignore[attr-defined]
        assert git(env.workspace(name), "rev-parse", "--abbrev-ref", "HEAD") == f"agent/{name}"
    listed = {Path(w.path).name for w in gitops.list_worktrees(str(env.checkout))}
    assert set(names) <= listed


def test_remove_workspace_keeps_the_branch_and_is_idempotent(env: Env) -> None:
    ws = env.prepare("gone")
    sha = commit(ws, "work.txt", "work\n")
    Path(ws, "untracked.txt").write_text("dirty")
    req = RemoveWorkspaceRequest(lane=env.lane, task=env.task("gone"))
    assert RemovedResult.model_validate(env.call(req)).removed
    assert not ws.exists()
    assert gitops.resolve(str(env.checkout), "refs/heads/agent/gone") == sha
    assert all(Path(w.path).name != "gone" for w in gitops.list_worktrees(str(env.checkout)))
    assert not RemovedResult.model_validate(env.call(req)).removed


def test_removing_a_worktree_as_made_is_one_git_process(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = env.prepare("quick")
    other = env.tmp / "other"
    git(env.tmp, "init", "-q", "-b", "main", str(other))
    git(other, "commit", "-q", "--allow-empty", "-m", "x")
    foreign = env.workspace("foreign")  # another repository's worktree in a task's place
    git(other, "worktree", "add", "-q", "--detach", str(foreign))
    asked: list[list[str]] = []
    real_run = gitops.run

    def counting(args: list[str], cwd: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        asked.append(args)
        return real_run(args, cwd, **kw)

    monkeypatch.setattr(gitops, "run", counting)
    assert gitops.remove_workspace(str(env.checkout), str(ws))
    assert [a[:2] for a in asked] == [["worktree", "remove"]] and not ws.exists()
    # git refuses what is not this repository's: the directory is removed as a leftover, and
    # the other repository's own worktree record is left to it
    assert gitops.remove_workspace(str(env.checkout), str(foreign))
    assert not foreign.exists()
    assert git(other, "worktree", "list", "--porcelain").count("worktree ") == 2


def test_list_worktrees_parses_porcelain(env: Env) -> None:
    ws = env.prepare("listed")
    git(env.checkout, "worktree", "add", "-q", "--detach", str(env.tmp / "detached"))
    trees = {Path(w.path).name: w for w in gitops.list_worktrees(str(env.checkout))}
    assert trees["listed"].branch == "agent/listed"
    assert trees["listed"].head == git(ws, "rev-parse", "HEAD")
    assert trees["detached"].branch is None
    assert trees["webapp"].branch == "main"


def test_push_returns_the_sha_and_reports_rejection(env: Env) -> None:
    ws = env.prepare("pushed")
    sha = commit(ws, "p.txt", "p\n")
    req = PushRequest(lane=env.lane, repo="webapp", branch="agent/pushed")
    assert PushResult.model_validate(env.call(req)).sha == sha
    assert git(env.origin, "rev-parse", "refs/heads/agent/pushed") == sha
    # Someone else moves the remote branch: a plain push is refused with a clear sentence.
    other = env.tmp / "other"
    git(env.tmp, "clone", "-q", "-b", "agent/pushed", str(env.origin), str(other))
    commit(other, "theirs.txt", "theirs\n")
    git(other, "push", "-q", "origin", "agent/pushed")
    git(ws, "commit", "-q", "--amend", "-m", "rewritten")
    response = env.respond(req)
    assert not response.ok
    assert response.failure is not None
    assert "rejected" in response.failure.error
    assert "nothing was overwritten" in response.failure.error
    theirs = git(env.origin, "rev-parse", "refs/heads/agent/pushed")
    # Our tracking ref is stale, so the lease protects their commit too.
    lease = PushRequest(lane=env.lane, repo="webapp", branch="agent/pushed", force_with_lease=True)
    assert not env.respond(lease).ok
    # A fetch moves the tracking ref; the branch still has not seen their commit: refused.
    git(env.checkout, "fetch", "-q", "origin")
    assert not env.respond(lease).ok
    assert git(env.origin, "rev-parse", "refs/heads/agent/pushed") == theirs
    # Once the branch is rebased onto their commit, the forced push goes through.
    git(ws, "rebase", "-q", "origin/agent/pushed")
    new_sha = PushResult.model_validate(env.call(lease)).sha
    assert git(env.origin, "rev-parse", "refs/heads/agent/pushed") == new_sha
    assert git(env.origin, "merge-base", "--is-ancestor", theirs, new_sha) == ""


def test_push_of_a_missing_branch_fails_clearly(env: Env) -> None:
    response = env.respond(PushRequest(lane=env.lane, repo="webapp", branch="agent/none"))
    assert not response.ok
    assert response.failure is not None
    assert "does not exist" in response.failure.error


def test_branch_heads_come_from_one_for_each_ref(env: Env) -> None:
    ws = env.prepare("heads")
    sha = commit(ws, "h.txt", "h\n")
    git(env.checkout, "push", "-q", "origin", "agent/heads")
    found = gitops.refs(str(env.checkout), ["refs/heads/agent/*", "refs/remotes/origin/agent/*"])
    assert found == {"refs/heads/agent/heads": sha, "refs/remotes/origin/agent/heads": sha}


def test_the_common_dir_read_from_disk_is_the_one_git_names(env: Env) -> None:
    linked = env.tmp / "linked"
    git(env.checkout, "worktree", "add", "-q", "--detach", str(linked))
    (env.checkout / "sub").mkdir()
    for where in (env.checkout, linked, env.checkout / "sub", env.origin):
        said = git(where, "rev-parse", "--path-format=absolute", "--git-common-dir")
        assert gitops.common_dir(str(where)) == str(Path(said))
    assert gitops.common_dir(str(linked)) == str(env.checkout / ".git")


def test_a_repository_of_ones_own_is_known_without_git(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    linked = env.tmp / "linked"
    git(env.checkout, "worktree", "add", "-q", "--detach", str(linked))
    (env.checkout / "sub").mkdir()
    (env.tmp / "plain").mkdir()
    asked: list[str] = []
    real_run = gitops.run

    def counting(args: list[str], cwd: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        asked.append(cwd)
        return real_run(args, cwd, **kw)

    monkeypatch.setattr(gitops, "run", counting)
    assert gitops.is_repo(str(env.checkout)) and gitops.is_repo(str(linked))
    assert asked == []  # laid out as git lays it out, all this user's: no git process
    assert gitops.is_repo(str(env.checkout / "sub"))  # inside a repository: git says so
    assert gitops.is_repo(str(env.origin))  # a bare repository: git says so
    assert not gitops.is_repo(str(env.tmp / "plain"))
    assert not gitops.is_repo(str(env.tmp / "missing"))
    assert asked == [str(env.checkout / "sub"), str(env.origin), str(env.tmp / "plain")]


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a repository's owner needs root")
def test_a_repository_of_another_owner_is_for_git_to_judge(env: Env) -> None:
    # git refuses a repository another user owns (safe.directory): so does is_repo
    os.chown(env.checkout, 65534, 65534)
    assert not gitops.is_repo(str(env.checkout))
    os.chown(env.checkout, 0, 0)
    os.chown(env.checkout / ".git", 65534, 65534)
    assert not gitops.is_repo(str(env.checkout))
    os.chown(env.checkout / ".git", 0, 0)
    assert gitops.is_repo(str(env.checkout))


def test_ahead_of_base_counts_from_the_remote_base_else_the_local_one(env: Env) -> None:
    ws = env.prepare("ahead")
    commit(ws, "a.txt", "a\n")
    commit(ws, "b.txt", "b\n")
    where = str(env.checkout)
    assert gitops.ahead_of_base(where, "agent/ahead", "main", "origin") == 2
    git(env.checkout, "update-ref", "-d", "refs/remotes/origin/main")
    assert gitops.ahead_of_base(where, "agent/ahead", "main", "origin") == 2  # local main
    assert gitops.ahead_of_base(where, "agent/none", "main", "origin") is None
    assert gitops.ahead_of_base(where, "agent/ahead", "nope", "origin") is None
    assert gitops.ahead_of_base(str(env.tmp), "agent/ahead", "main", "origin") is None


class Fetches:
    """``_SharedFetches`` on a clock the test moves, over a fetch that runs until released."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = 100.0
        self.shared = gitops._SharedFetches(clock=lambda: self.now)
        self.begun: list[threading.Event] = []
        self.release: list[threading.Event] = []
        self.ended: list[str] = []
        monkeypatch.setattr(gitops, "_fetch", self.slow_fetch)

    def slow_fetch(self, _checkout: str, _remote: str, _base: str) -> None:
        go = threading.Event()
        self.release.append(go)
        self.begun.append(threading.Event())
        self.begun[-1].set()
        go.wait(10)
        self.ended.append(f"fetch {len(self.release)}")

    def start(self, name: str) -> threading.Thread:
        def body() -> None:
            self.shared.fetch("/repo", "origin", "main", gitops.BASE_FRESH)
            self.ended.append(name)

        thread = threading.Thread(target=body)
        thread.start()
        return thread

    def waiting(self) -> int:
        return len(self.shared._cond._waiters)  # type: ignore[attr-defined]


def test_starts_asking_at_once_share_a_fetch_begun_after_they_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(gitops, "BASE_FRESH", 0.0)  # strict: only a fetch begun after asking
    fetches = Fetches(monkeypatch)
    begun, release, ended, start = fetches.begun, fetches.release, fetches.ended, fetches.start

    first = start("a")
    wait_for(lambda: begun, "the first fetch to begin")
    fetches.now += 0.001
    later = [start("b"), start("c")]
    # the running fetch may have read the remote before b and c asked: they wait for the next
    wait_for(lambda: fetches.waiting() == 2, "b and c waiting")
    release[0].set()
    first.join()
    wait_for(lambda: len(begun) == 2, "a second fetch to begin")
    assert ended == ["fetch 1", "a"]
    release[1].set()
    for thread in later:
        thread.join()
    assert len(release) == 2  # one fetch for b and c together
    assert ended[:3] == ["fetch 1", "a", "fetch 2"] and sorted(ended[3:]) == ["b", "c"]
    fetches.now += 0.001
    done = start("d")  # nothing runs: a new caller fetches anew
    wait_for(lambda: len(begun) == 3, "a third fetch")
    release[2].set()
    done.join()
    assert ended[-2:] == ["fetch 3", "d"]


def test_starts_within_a_second_of_a_fetch_use_it_and_later_ones_fetch_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fetches = Fetches(monkeypatch)
    first = fetches.start("a")
    wait_for(lambda: fetches.begun, "the first fetch to begin")
    fetches.now += 0.4  # b asks while a's fetch, begun 0.4 s ago, runs: it waits for that one
    joined = fetches.start("b")
    wait_for(lambda: fetches.waiting() == 1, "b waiting")
    fetches.release[0].set()
    first.join()
    joined.join()
    assert sorted(fetches.ended) == ["a", "b", "fetch 1"]
    fetches.now += 0.5  # 0.9 s after fetch 1 began: c uses it as it is
    fetches.start("c").join()
    assert fetches.ended[-1] == "c" and len(fetches.release) == 1
    fetches.now += 0.2  # 1.1 s: too old, d fetches again
    late = fetches.start("d")
    wait_for(lambda: len(fetches.begun) == 2, "a second fetch")
    fetches.release[1].set()
    late.join()
    assert fetches.ended[-2:] == ["fetch 2", "d"]


def test_clean_head_is_the_commit_only_while_nothing_differs(env: Env) -> None:
    linked = env.tmp / "linked"
    git(env.checkout, "worktree", "add", "-q", "--detach", str(linked))
    head = git(linked, "rev-parse", "HEAD")
    assert gitops.clean_head(str(linked)) == head
    Path(linked, ".gitignore").write_text("ignored.txt\n")
    git(linked, "add", ".gitignore")
    assert gitops.clean_head(str(linked)) is None  # staged
    git(linked, "reset", "-q", "--hard")
    Path(linked, "untracked.txt").write_text("new\n")
    assert gitops.clean_head(str(linked)) is None
    Path(linked, "untracked.txt").unlink()
    Path(linked, "README.md").write_text("changed\n")
    assert gitops.clean_head(str(linked)) is None
    git(linked, "checkout", "-q", "--", "README.md")
    git(linked, "config", "status.showUntrackedFiles", "no")  # shown all the same
    Path(linked, "untracked.txt").write_text("new\n")
    assert gitops.clean_head(str(linked)) is None
    assert gitops.clean_head(str(env.tmp / "no-such-worktree")) is None
