"""Agents whose changes the reconciler commits (``commits: reconciler``): after a run in which
the agent exited 0, the supervisor commits what it left in the worktree, before the checks."""

from __future__ import annotations

from pathlib import Path

from reconciler.node.agents import ADAPTERS, Launch
from reconciler.protocol import AgentRef, ExitInfo
from tests.node.node_support import Env
from tests.support.git import git

EDITS = """
import sys
from pathlib import Path
Path("feature.txt").write_text("new\\n")
Path("README.md").unlink(missing_ok=True)
sys.exit(int(sys.argv[1]))
"""


def agent(env: Env, code: int = 0, commits: str = "reconciler") -> AgentRef:
    return AgentRef(
        kind="command", command=[*env.script("edits.py", EDITS), str(code)], commits=commits
    )


def ahead(env: Env, name: str) -> int:
    return int(git(env.workspace(name), "rev-list", "--count", "origin/main..HEAD"))


def test_the_agents_changes_are_committed_after_it_exits_0(env: Env) -> None:
    run = env.start("mine", agent(env))
    info = env.wait_exit(run)
    assert info.commit is not None and info.commit.exit_code == 0, info.commit
    assert ahead(env, "mine") == 1
    workspace = env.workspace("mine")
    assert git(workspace, "status", "--porcelain") == ""
    message = git(workspace, "log", "-1", "--format=%B")
    assert message.startswith("mine: run 1.1\n") and "command agent" in message
    changed = git(workspace, "show", "--name-status", "--format=", "HEAD").splitlines()
    assert sorted(changed) == ["A\tfeature.txt", "D\tREADME.md"]  # additions and deletions
    # the commit and its command are in the checks log, for `reconciler logs --checks`
    assert "git add -A" in (Path(run.run_dir) / "checks.log").read_text()


def test_nothing_is_committed_after_a_failed_run_or_for_agents_that_commit(env: Env) -> None:
    failed = env.start("failed", agent(env, code=3))
    assert env.wait_exit(failed).commit is None
    assert ahead(env, "failed") == 0
    assert "feature.txt" in git(env.workspace("failed"), "status", "--porcelain")
    theirs = env.start("theirs", agent(env, commits="agent"))
    assert env.wait_exit(theirs).commit is None
    assert ahead(env, "theirs") == 0


def test_a_run_that_changed_nothing_makes_no_commit(env: Env) -> None:
    quiet = AgentRef(
        kind="command", command=env.script("quiet.py", "print('no changes')"), commits="reconciler"
    )
    info = env.wait_exit(env.start("quiet", quiet))
    assert info.exit_code == 0 and info.commit is None
    assert ahead(env, "quiet") == 0


def test_a_refused_commit_is_recorded_with_its_output(env: Env) -> None:
    env.prepare("refused")  # the checkout's hooks apply to every worktree of it
    common = Path(git(env.workspace("refused"), "rev-parse", "--git-common-dir"))
    if not common.is_absolute():
        common = env.workspace("refused") / common
    hook = common / "hooks" / "pre-commit"
    hook.parent.mkdir(exist_ok=True)
    hook.write_text("#!/bin/sh\necho 'feature.txt: trailing policy violation' >&2\nexit 1\n")
    hook.chmod(0o755)
    try:
        info: ExitInfo = env.wait_exit(env.start("refused", agent(env)))
    finally:
        hook.unlink()
    assert info.commit is not None and info.commit.exit_code == 1
    assert "trailing policy violation" in info.commit.output_tail
    assert ahead(env, "refused") == 0


def test_aider_leaves_commits_to_the_reconciler_when_told() -> None:
    aider = ADAPTERS["aider"]
    told = AgentRef(kind="aider", commits="reconciler")
    argv, _ = aider.build(told, Launch("/r/p.md"))
    assert "--no-auto-commits" in argv and "--auto-commits" not in argv
    argv, _ = aider.build(AgentRef(kind="aider"), Launch("/r/p.md"))
    assert "--auto-commits" in argv and "--no-auto-commits" not in argv
