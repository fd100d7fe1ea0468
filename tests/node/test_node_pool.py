"""The warm worktree pool, sparse checkouts and workspace hooks, on real repositories."""

from __future__ import annotations

import concurrent.futures
import shutil
import sys
import threading
import time
from pathlib import Path

import pytest

from reconciler.node import git as gitops
from reconciler.node import pool
from reconciler.node.errors import NodeError
from reconciler.protocol import (
    FillPoolRequest,
    FillPoolResult,
    ObserveRequest,
    ObserveResult,
    PrepareWorkspaceRequest,
    RemoveWorkspaceRequest,
    RepoHooks,
    WorkspaceResult,
)
from tests.node.node_support import Env, lock_probe_hook
from tests.support.git import commit, git


def pooled(env: Env, size: int = 2, **repo: object) -> Env:
    ref = env.lane.repos[0].model_copy(update={"pool": size, **repo})
    env.lane = env.lane.model_copy(update={"repos": [ref]})
    return env


def fill(env: Env, base: str = "main") -> FillPoolResult:
    return FillPoolResult.model_validate(
        env.call(FillPoolRequest(lane=env.lane, bases={"webapp": [base]}))
    )


def tree(path: Path) -> tuple[str, str, str]:
    """What a worktree is: its index, its status and its HEAD."""
    return (
        git(path, "ls-files", "-s"),
        git(path, "status", "--porcelain", "--untracked-files=all"),
        git(path, "rev-parse", "HEAD"),
    )


def prepare(env: Env, name: str) -> WorkspaceResult:
    return WorkspaceResult.model_validate(
        env.call(PrepareWorkspaceRequest(lane=env.lane, task=env.task(name)))
    )


def test_a_pooled_start_is_the_same_tree_as_a_fresh_worktree(env: Env) -> None:
    commit(env.checkout, "app.py", "print('hi')\n")
    git(env.checkout, "push", "-q", "origin", "main")
    fresh = prepare(env, "fresh")  # no pool yet: a plain worktree add
    assert fresh.created
    pooled(env)
    assert fill(env).created == {"webapp": 2}
    assert fill(env).created == {}  # already full: nothing to do
    observed = ObserveResult.model_validate(env.call(ObserveRequest(lane=env.lane)))
    assert observed.repos["webapp"].pool == {"main": 2}
    taken = prepare(env, "pooled")
    assert taken.created and taken.path == str(env.workspace("pooled"))
    assert len(pool.entries(pool.pool_dir(str(env.root), "webapp", "main"))) == 1
    assert tree(env.workspace("pooled")) == tree(env.workspace("fresh"))
    assert git(env.workspace("pooled"), "branch", "--show-current").strip() == "agent/pooled"
    # the worktree is registered where the task's worktree belongs, and observed as the task's
    observed = ObserveResult.model_validate(env.call(ObserveRequest(lane=env.lane)))
    branches = {wt.branch for wt in observed.repos["webapp"].worktrees}
    assert {"agent/pooled", "agent/fresh"} <= branches
    assert observed.repos["webapp"].pool == {"main": 1}


def test_a_pooled_worktree_is_never_handed_out_dirty_or_stale(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gitops, "BASE_FRESH", 0.0)  # the fill's fetch is too old for the start
    pooled(env, size=1)
    fill(env)
    [entry] = pool.entries(pool.pool_dir(str(env.root), "webapp", "main"))
    # someone scribbled in it, and the base moved on since it was made
    Path(entry, "README.md").write_text("scribbled\n")
    Path(entry, "junk.txt").write_text("junk\n")
    Path(entry, "dir").mkdir()
    Path(entry, "dir", "more.txt").write_text("more\n")
    other = env.tmp / "other"
    git(env.tmp, "clone", "-q", str(env.origin), str(other))
    newer = commit(other, "NEW.md", "new\n")
    git(other, "push", "-q", "origin", "main")
    taken = prepare(env, "clean")
    path = env.workspace("clean")
    assert taken.created and not Path(path, "junk.txt").exists() and not Path(path, "dir").exists()
    assert git(path, "status", "--porcelain", "--untracked-files=all") == ""
    assert git(path, "rev-parse", "HEAD").strip() == newer  # the base as the remote has it now
    assert Path(path, "README.md").read_text() == "hello\n"


def untouched(path: Path) -> tuple[tuple[int, int], tuple[int, int], bytes]:
    """What changes when a worktree's files or index are written: a tracked file's inode and
    modification time, and the index's, with the index's bytes."""
    index = Path(path, git(path, "rev-parse", "--path-format=absolute", "--git-path", "index"))
    readme, written = Path(path, "README.md").stat(), index.stat()
    return (
        (readme.st_ino, readme.st_mtime_ns),
        (written.st_ino, written.st_mtime_ns),
        index.read_bytes(),
    )


def the_one_pooled(env: Env) -> Path:
    [entry] = pool.entries(pool.pool_dir(str(env.root), "webapp", "main"))
    return Path(entry)


def push_new_base(env: Env) -> str:
    """A commit on the remote's main made elsewhere, as another task's merge is."""
    other = env.tmp / "other"
    if not other.exists():
        git(env.tmp, "clone", "-q", str(env.origin), str(other))
    git(other, "pull", "-q", "origin", "main")
    newer = commit(other, "NEW.md", f"new {other.stat().st_mtime_ns}\n")
    git(other, "push", "-q", "origin", "main")
    return newer


def test_a_directory_in_the_pool_git_does_not_know_is_removed_not_handed_out(env: Env) -> None:
    pooled(env, size=1)
    fill(env)
    real = the_one_pooled(env)
    leftover = real.parent / "00000000"  # listed first
    leftover.mkdir()
    Path(leftover, "README.md").write_text("not a worktree\n")
    assert prepare(env, "known").created
    path = env.workspace("known")
    assert not leftover.exists() and not real.exists()  # the real one was taken after it
    assert git(path, "symbolic-ref", "HEAD") == "refs/heads/agent/known"
    assert Path(path, "README.md").read_text() == "hello\n"


def test_taking_a_clean_pooled_worktree_writes_no_file_and_keeps_its_index(env: Env) -> None:
    pooled(env, size=1)
    fill(env)
    before = untouched(the_one_pooled(env))
    base = git(env.checkout, "rev-parse", "origin/main")
    assert prepare(env, "claimed").created
    path = env.workspace("claimed")
    assert untouched(path) == before
    assert git(path, "symbolic-ref", "HEAD") == "refs/heads/agent/claimed"
    assert git(path, "rev-parse", "HEAD") == base
    assert git(path, "status", "--porcelain", "--untracked-files=all") == ""
    [task_tree] = [t for t in git(env.checkout, "worktree", "list").splitlines() if "claimed" in t]
    assert task_tree.startswith(str(path)) and "[agent/claimed]" in task_tree


def test_fill_brings_a_pooled_worktree_whose_base_moved_up_to_date(env: Env) -> None:
    pooled(env, size=1)
    fill(env)
    newer = push_new_base(env)
    git(env.checkout, "fetch", "-q", "origin")  # as a start's fetch of the base does
    assert fill(env).created == {}  # the one there is moved to the base, not replaced
    entry = the_one_pooled(env)
    assert git(entry, "rev-parse", "HEAD") == newer
    assert git(entry, "status", "--porcelain", "--untracked-files=all") == ""
    before = untouched(entry)
    prepare(env, "current")
    assert untouched(env.workspace("current")) == before  # the take had nothing left to do
    assert git(env.workspace("current"), "rev-parse", "HEAD") == newer


def test_an_untracked_file_in_a_pooled_worktree_is_not_handed_out(env: Env) -> None:
    pooled(env, size=1)
    fill(env)
    Path(the_one_pooled(env), "junk.txt").write_text("junk\n")
    prepare(env, "nojunk")
    path = env.workspace("nojunk")
    assert not Path(path, "junk.txt").exists()
    assert git(path, "status", "--porcelain", "--untracked-files=all") == ""
    assert git(path, "branch", "--show-current") == "agent/nojunk"


def test_something_in_the_tasks_place_leaves_the_pool_as_it_was(env: Env) -> None:
    pooled(env, size=1)
    fill(env)
    entry = the_one_pooled(env)
    env.workspace("blocked").mkdir(parents=True)
    Path(env.workspace("blocked"), "notes.txt").write_text("mine\n")
    response = env.respond(PrepareWorkspaceRequest(lane=env.lane, task=env.task("blocked")))
    assert not response.ok and response.failure is not None
    assert "is not a worktree" in response.failure.error
    assert the_one_pooled(env) == entry and Path(entry, "README.md").is_file()


def half_taken(env: Env, task: str) -> Path:
    """A take a node died in: the pooled worktree moved into the task's place, no branch yet."""
    pooled(env, size=1)
    fill(env)
    target = env.workspace(task)
    target.parent.mkdir(parents=True, exist_ok=True)
    git(env.checkout, "worktree", "move", str(the_one_pooled(env)), str(target))
    assert git(target, "branch", "--show-current") == ""
    return target


def test_a_take_interrupted_after_its_move_is_finished_by_the_next_start(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gitops, "BASE_FRESH", 0.0)  # the fill's fetch is too old for the start
    target = half_taken(env, "resumed")
    newer = push_new_base(env)  # the base moved meanwhile: the start is on the base of now
    assert prepare(env, "resumed").created
    assert git(target, "branch", "--show-current") == "agent/resumed"
    assert git(target, "rev-parse", "HEAD") == newer
    assert git(target, "status", "--porcelain", "--untracked-files=all") == ""


def test_a_detached_worktree_with_changes_in_the_tasks_place_is_refused(env: Env) -> None:
    target = half_taken(env, "changed")
    Path(target, "README.md").write_text("someone's edit\n")
    response = env.respond(PrepareWorkspaceRequest(lane=env.lane, task=env.task("changed")))
    assert response.failure is not None
    assert f"the worktree {target} is on a detached HEAD with changes" in response.failure.error
    assert Path(target, "README.md").read_text() == "someone's edit\n"


def test_two_starts_at_once_take_two_pooled_worktrees(env: Env) -> None:
    pooled(env, size=2)
    fill(env)
    directory = pool.pool_dir(str(env.root), "webapp", "main")
    together = threading.Barrier(2)

    def take(name: str) -> str | None:
        together.wait()
        return pool.take(
            str(env.checkout),
            directory,
            str(env.workspace(name)),
            branch=f"agent/{name}",
            base="main",
            remote="origin",
        )

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as workers:
        taken = list(workers.map(take, ["one", "two"]))
    assert None not in taken and len(set(taken)) == 2
    assert pool.entries(directory) == []
    for name in ("one", "two"):
        assert git(env.workspace(name), "branch", "--show-current") == f"agent/{name}"
        assert git(env.workspace(name), "status", "--porcelain") == ""


def test_an_existing_branch_does_not_come_from_the_pool(env: Env) -> None:
    pooled(env, size=1)
    first = prepare(env, "again")
    commit(env.workspace("again"), "work.txt", "work\n")
    head = git(env.workspace("again"), "rev-parse", "HEAD")
    shutil.rmtree(env.workspace("again"))
    git(env.checkout, "worktree", "prune")
    fill(env)
    second = prepare(env, "again")
    assert first.created and second.created
    assert git(env.workspace("again"), "rev-parse", "HEAD") == head  # its history, not the base
    assert len(pool.entries(pool.pool_dir(str(env.root), "webapp", "main"))) == 1


def test_sparse_checkout_has_only_the_named_directories(env: Env) -> None:
    (env.checkout / "services" / "api").mkdir(parents=True)
    (env.checkout / "services" / "web").mkdir(parents=True)
    commit(env.checkout, "services/api/main.py", "api\n")
    commit(env.checkout, "services/web/index.js", "web\n")
    git(env.checkout, "push", "-q", "origin", "main")
    pooled(env, size=1, sparse=["services/api"])
    prepare(env, "plain")
    fill(env)
    prepare(env, "frompool")
    for name in ("plain", "frompool"):
        path = env.workspace(name)
        assert Path(path, "services/api/main.py").is_file(), name
        assert not Path(path, "services/web").exists(), name
        assert Path(path, "README.md").is_file()  # cone mode keeps top-level files
        assert git(path, "status", "--porcelain") == ""


def hook(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_workspace_hooks_run_in_the_worktree_and_fail_as_documented(env: Env) -> None:
    hooks = RepoHooks(
        after_create=hook("open('deps.installed', 'w').write('yes')"),
        before_remove=hook("import sys; print('cleaning up'); sys.exit(3)"),
        timeout=10,
    )
    ref = env.lane.repos[0].model_copy(update={"hooks": hooks})
    env.lane = env.lane.model_copy(update={"repos": [ref]})
    prepare(env, "hooked")
    assert Path(env.workspace("hooked"), "deps.installed").read_text() == "yes"
    # beforeRemove fails: recorded in the hooks log, the worktree is removed anyway
    env.call(RemoveWorkspaceRequest(lane=env.lane, task=env.task("hooked")))
    assert not env.workspace("hooked").exists()
    log = (env.root / ".runs" / "hooked" / "hooks.log").read_text()
    assert "beforeRemove" in log and "cleaning up" in log
    # afterCreate fails (or hangs past its timeout): the start fails, no worktree is left
    for bad in (
        hook("import sys; print('npm ERR!'); sys.exit(1)"),
        hook("import time; time.sleep(30)"),
    ):
        failing = hooks.model_copy(update={"after_create": bad, "timeout": 1})
        ref = env.lane.repos[0].model_copy(update={"hooks": failing})
        env.lane = env.lane.model_copy(update={"repos": [ref]})
        response = env.respond(PrepareWorkspaceRequest(lane=env.lane, task=env.task("broken")))
        assert not response.ok and response.failure is not None
        assert "afterCreate" in response.failure.error, response.failure.error
        assert not env.workspace("broken").exists()


def test_before_and_after_run_hooks_wrap_each_run(env: Env) -> None:
    hooks = RepoHooks(
        before_run=hook("open('.prepared', 'w').write('yes')"),
        after_run=hook("import sys; print('uploading logs'); sys.exit(4)"),
        timeout=10,
    )
    ref = env.lane.repos[0].model_copy(update={"hooks": hooks})
    env.lane = env.lane.model_copy(update={"repos": [ref]})
    agent = env.agent("import os; print('saw', os.path.exists('.prepared'))")
    run = env.start("wrapped", agent)
    ended = env.wait_exit(run)
    assert ended.exit_code == 0  # a failing afterRun is recorded, not fatal
    assert ended.after_run is not None and ended.after_run.exit_code == 4
    assert "saw True" in Path(run.run_dir, "output.log").read_text()
    assert "uploading logs" in (env.root / ".runs" / "wrapped" / "hooks.log").read_text()
    # beforeRun fails: that run is not started
    failing = hooks.model_copy(update={"before_run": hook("import sys; sys.exit(2)")})
    ref = env.lane.repos[0].model_copy(update={"hooks": failing})
    env.lane = env.lane.model_copy(update={"repos": [ref]})
    response = env.respond(env.start_request("wrapped", agent, attempt=2))
    assert not response.ok and response.failure is not None
    assert "beforeRun exited 2" in response.failure.error
    assert not (env.root / ".runs" / "wrapped" / "2.1").exists()


def test_a_start_during_a_fill_never_takes_a_worktree_still_being_made(env: Env) -> None:
    """Fills run beside the passes: a take while a new pooled worktree's afterCreate hook runs
    finds nothing to take (it is still hidden), and the fill then shows it, ready."""
    directory = pool.pool_dir(str(env.root), "webapp", "main")
    during: list[str | None] = []

    def prepared(path: str) -> tuple[bool, str]:
        during.append(
            pool.take(
                str(env.checkout),
                directory,
                str(env.workspace("eager")),
                branch="agent/eager",
                base="main",
                remote="origin",
            )
        )
        return True, ""

    made = pool.fill(
        str(env.checkout), directory, base="main", remote="origin", size=1, sparse=[],
        prepared=prepared,
    )  # fmt: skip
    assert during == [None]  # nothing was ready to take while it was being made
    assert pool.entries(directory) == made and len(made) == 1
    assert git(Path(made[0]), "status", "--porcelain") == ""


def test_a_fill_stopped_half_way_leaves_nothing_a_start_could_take(env: Env) -> None:
    directory = pool.pool_dir(str(env.root), "webapp", "main")

    def fails(_path: str) -> tuple[bool, str]:
        raise KeyboardInterrupt  # the process stopped in the middle of the hook

    with pytest.raises(KeyboardInterrupt):
        pool.fill(
            str(env.checkout), directory, base="main", remote="origin", size=1, sparse=[],
            prepared=fails,
        )  # fmt: skip
    assert pool.entries(directory) == []  # the half-made one is hidden
    made = pool.fill(str(env.checkout), directory, base="main", remote="origin", size=1, sparse=[])
    assert len(made) == 1
    assert [p.name for p in Path(directory).iterdir()] == [Path(made[0]).name]  # cleared


def test_a_fill_checks_its_files_out_without_holding_the_repository(env: Env) -> None:
    """The checkout of a new pooled worktree (seconds on a large repository) runs outside the
    repository's worktree lock, so a take meanwhile does not wait for it; the repository's
    post-checkout hook still runs, in the new worktree."""
    seen = env.root / "hook-saw"
    lock_probe_hook(env.checkout, seen)
    directory = pool.pool_dir(str(env.root), "webapp", "main")
    (made,) = pool.fill(
        str(env.checkout), directory, base="main", remote="origin", size=1, sparse=[]
    )
    state, where = seen.read_text().splitlines()
    assert state == "free"
    assert Path(where).parent == Path(directory)  # the new worktree, under its hidden name
    assert git(Path(made), "status", "--porcelain") == ""
    assert [p.name for p in Path(made).iterdir() if p.name != ".git"]  # its files are there


class _Clock:
    """``pool``'s view of time: each worktree made takes ``per_make`` monotonic seconds."""

    def __init__(self, per_make: float) -> None:
        self.per_make = per_make
        self.now = 0.0
        self.time = time.time

    def monotonic(self) -> float:
        self.now += self.per_make / 2  # asked once before and once after each make
        return self.now


@pytest.mark.parametrize(("per_make", "batches"), [(0.0, [3]), (5.0, [1, 1, 1])])
def test_new_pooled_worktrees_wait_for_their_index_second_together(
    env: Env, monkeypatch: pytest.MonkeyPatch, per_make: float, batches: list[int]
) -> None:
    """Quick to make: they wait for the clock to pass their index's second once, together.
    Slow to make (a large checkout): each joins the pool as soon as it is settled."""
    settled: list[int] = []
    real = gitops.settle_index

    def counting(*paths: str) -> None:
        if paths:
            settled.append(len(paths))
        real(*paths)

    monkeypatch.setattr(gitops, "settle_index", counting)
    monkeypatch.setattr(pool, "time", _Clock(per_make))
    directory = pool.pool_dir(str(env.root), "webapp", "main")
    made = pool.fill(str(env.checkout), directory, base="main", remote="origin", size=3, sparse=[])
    assert settled == batches
    assert sorted(made) == pool.entries(directory) and len(made) == 3
    for path in made:
        assert git(Path(path), "status", "--porcelain") == ""


def test_worktrees_made_before_a_failed_one_still_join_the_pool(env: Env) -> None:
    directory = pool.pool_dir(str(env.root), "webapp", "main")
    calls: list[str] = []

    def third_fails(path: str) -> tuple[bool, str]:
        calls.append(path)
        return (len(calls) < 3, "npm ci failed")

    with pytest.raises(NodeError, match="npm ci failed"):
        pool.fill(
            str(env.checkout), directory, base="main", remote="origin", size=3, sparse=[],
            prepared=third_fails,
        )  # fmt: skip
    assert len(pool.entries(directory)) == 2
    assert sorted(p.name for p in Path(directory).iterdir()) == sorted(
        Path(p).name for p in pool.entries(directory)
    )  # the failed one was removed, not left hidden
