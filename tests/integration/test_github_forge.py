"""The whole pass against a GitHub forge: real git pushes to a local remote, real agents, and
``responses`` standing in for GitHub's HTTP (a small stateful fake of the pulls API).

The engine runs in this process (``responses`` patches this process's HTTP only).
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import responses
from fake_github import FakeGitHub, VirtualTime, unserved
from world import World

from reconciler.engine import Context, Engine
from reconciler.node import forge_github

OWNER, NAME = "acme", "app"
TOKEN = "ghp_" + "A1b2C3d4E5f6G7h8I9j0" * 2


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> VirtualTime:
    """The forge's waits (write spacing, retries) are virtual: nothing sleeps for real."""
    fake = VirtualTime()
    monkeypatch.setattr(
        forge_github, "TIME", forge_github.Time(clock=fake.clock, sleep=fake.sleep, wall=fake.wall)
    )
    return fake


@pytest.fixture
def github(clock: VirtualTime) -> Iterator[FakeGitHub]:
    forge_github._PAGES.clear()
    forge_github._GATES.clear()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        fake = FakeGitHub(rsps, f"{OWNER}/{NAME}", TOKEN)
        yield fake
        assert not unserved(rsps), f"requests the fake GitHub does not serve: {unserved(rsps)}"


def github_world(world: World) -> Path:
    world.repo("app")
    token_file = world.home / ".config" / "reconciler" / "github-token"
    token_file.parent.mkdir(parents=True)
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    world.lanes["web"] = {
        "maxConcurrency": 2,
        "workspaceRoot": "~/worktrees/web",
        "credentials": {"github": "~/.config/reconciler/github-token"},
        "repos": [
            {
                "name": "app",
                "checkout": "~/src/app",
                "forge": {"kind": "github", "repo": f"{OWNER}/{NAME}"},
            }
        ],
    }
    world.task("a", "web", "succeed", pr={"title": "Do a", "draft": True, "reviewers": ["octocat"]})
    world.task("b", "web", "succeed")
    world.commit()
    return token_file


def converge(engine: Engine, passes: int = 40) -> None:
    for _ in range(passes):
        desired = engine.load()
        with engine.locked(None) as store:
            result = engine.apply(desired, store)
        assert result.report is not None and result.report.ok, result.report
        phases = {t.phase.value for t in result.plan.tasks}
        if result.plan.empty and not phases & {"pending", "queued", "running", "backoff"}:
            return
        time.sleep(0.1)
    raise AssertionError("no convergence against the fake GitHub")


def test_one_pr_per_task_on_github_and_none_after_losing_state(
    world: World, github: FakeGitHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GH_TOKEN", raising=False)
    monkeypatch.delenv("GITHUB_TOKEN", raising=False)
    github_world(world)
    engine = Engine(Context(control=str(world.control), state_dir=world.state))
    converge(engine)

    assert sorted(p["head"]["ref"] for p in github.pulls) == ["agent/a", "agent/b"]
    a = next(p for p in github.pulls if p["head"]["ref"] == "agent/a")
    assert a["title"] == "Do a" and a["draft"] is True
    assert "<!-- reconciler:task=a -->" in a["body"]
    assert a["requested"] == {"reviewers": ["octocat"], "team_reviewers": []}
    # the branch really went to the remote
    assert world.git_head("app", "agent/a")

    # Nothing changed: the next pass lists the pulls conditionally and gets 304s.
    before, points = len(github.requests), github.points
    desired = engine.load()
    with engine.reading() as store:
        plan, _ = engine.observe_and_plan(desired, store)
    assert plan.empty
    new = github.requests[before:]
    assert sum(r.startswith(f"GET /repos/{OWNER}/{NAME}/pulls?") for r in new) == 1
    assert github.points == points  # 304s and /rate_limit only: zero rate-limit points

    # Lose the state: the forge is the authority, the PRs are adopted, none is created.
    import shutil

    shutil.rmtree(world.state)
    posts = sum(r.startswith("POST") and r.endswith("/pulls") for r in github.requests)
    engine = Engine(Context(control=str(world.control), state_dir=world.state))
    converge(engine)
    assert sum(r.startswith("POST") and r.endswith("/pulls") for r in github.requests) == posts
    assert len(github.pulls) == 2

    # A merge on GitHub completes the task and removes its worktree.
    github.merge(1)
    converge(engine)
    with engine.reading() as store:
        plan, _ = engine.observe_and_plan(engine.load(), store)
    phases = {t.name: t.phase.value for t in plan.tasks}
    assert phases[github.pulls[0]["head"]["ref"].split("/")[1]] == "done"


def test_the_token_never_leaves_the_lane(
    world: World, github: FakeGitHub, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    github_world(world)
    engine = Engine(Context(control=str(world.control), state_dir=world.state))
    converge(engine)
    # not in the state database, its events, or the run directories' records
    db = sqlite3.connect(world.state / "state.db")
    dump = "\n".join(db.iterdump())
    db.close()
    assert TOKEN not in dump
    for root, _dirs, files in os.walk(world.home / "worktrees"):
        for name in files:
            path = Path(root) / name
            if ".git" not in path.parts:
                assert TOKEN not in path.read_text(errors="replace"), path
    assert TOKEN not in capsys.readouterr().out


def test_an_unreadable_token_file_blocks_with_the_fix(world: World, github: FakeGitHub) -> None:
    token_file = github_world(world)
    token_file.chmod(0o644)
    engine = Engine(Context(control=str(world.control), state_dir=world.state))
    desired = engine.load()
    with engine.reading() as store:
        plan, _ = engine.observe_and_plan(desired, store)
    assert plan.empty
    reasons = {b.task: b.reason for b in plan.blocked}
    assert "chmod 600" in reasons["a"]
    assert TOKEN not in reasons["a"]
    assert github.requests == []


def test_a_token_that_may_not_push_blocks_with_the_fix(world: World, github: FakeGitHub) -> None:
    github_world(world)
    github.can_push = False
    engine = Engine(Context(control=str(world.control), state_dir=world.state))
    desired = engine.load()
    with engine.reading() as store:
        plan, _ = engine.observe_and_plan(desired, store)
    assert plan.empty
    reason = {b.task: b.reason for b in plan.blocked}["a"]
    assert "may not push" in reason and "read/write" in reason


def test_a_failing_check_on_the_pushed_commit_is_fed_back_and_answered(
    world: World, github: FakeGitHub
) -> None:
    github_world(world)
    github.remote = world.root / "remotes" / "app.git"
    engine = Engine(Context(control=str(world.control), state_dir=world.state))
    converge(engine)
    first = github.head_sha("agent/a")
    github.failing[first] = "E   AssertionError: login returns 500"
    converge(engine)
    second = github.head_sha("agent/a")
    assert second != first  # the agent answered with a new commit, pushed to the same PR
    prompt = (world.home / "worktrees/web/.runs/a/1.2/prompt.md").read_text()
    assert "check `test` failure" in prompt and "login returns 500" in prompt
    assert len(github.pulls) == 2  # still one PR per task
    number = next(p["number"] for p in github.pulls if p["head"]["ref"] == "agent/a")
    assert any(n == number and "Pushed" in text for n, text in github.comments)
    with engine.reading() as store:
        plan, _ = engine.observe_and_plan(engine.load(), store)
    assert plan.empty  # the new commit has no failing check: nothing more to do


class SimulatedCrash(BaseException):
    """Raised at a crash point: the pass stops there, with nothing after it done or recorded."""


@pytest.mark.parametrize("point", ["after-pr-intent", "after-push", "after-pr-create"])
def test_a_crash_around_pr_creation_leaves_one_pr_per_task(
    world: World, github: FakeGitHub, monkeypatch: pytest.MonkeyPatch, point: str
) -> None:
    import shutil

    import reconciler.apply as applying

    github_world(world)
    crashed: list[str] = []

    def crash_point(name: str) -> None:
        if name == point and not crashed:
            crashed.append(name)
            raise SimulatedCrash(name)

    monkeypatch.setattr(applying, "crash_point", crash_point)
    engine = Engine(Context(control=str(world.control), state_dir=world.state))
    for _ in range(40):
        try:
            converge(engine, passes=1)
            break
        except SimulatedCrash:
            continue
        except AssertionError:
            time.sleep(0.1)
    assert crashed == [point]
    converge(engine)
    heads = sorted(p["head"]["ref"] for p in github.pulls)
    assert heads == ["agent/a", "agent/b"]
    shutil.rmtree(world.state)
    converge(Engine(Context(control=str(world.control), state_dir=world.state)))
    assert sorted(p["head"]["ref"] for p in github.pulls) == heads
