"""The whole pass against a GitHub forge: real git pushes to a local remote, real agents, and
``responses`` standing in for GitHub's HTTP (a small stateful fake of the pulls API).

The engine runs in this process (``responses`` patches this process's HTTP only).
"""

from __future__ import annotations

import io
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import responses

from reconciler import lanes
from reconciler.daemon import Daemon, Log
from reconciler.engine import Context, Engine
from reconciler.node import forge_github, github_http
from reconciler.plan import Plan
from reconciler.protocol import Recheck
from tests.integration.world import World
from tests.support.fake_github import FakeGitHub, Fault, VirtualTime, unserved

OWNER, NAME = "acme", "app"
TOKEN = "ghp_" + "A1b2C3d4E5f6G7h8I9j0" * 2


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> VirtualTime:
    """The forge's waits (write spacing, retries) are virtual: nothing sleeps for real."""
    fake = VirtualTime()
    monkeypatch.setattr(
        forge_github, "TIME", github_http.Time(clock=fake.clock, sleep=fake.sleep, wall=fake.wall)
    )
    return fake


@pytest.fixture
def github(clock: VirtualTime) -> Iterator[FakeGitHub]:
    github_http.forget_process_memory()
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
    # nor in anything the CLI prints, including when GitHub refuses the token
    from reconciler.cli import main

    github.faults.append(Fault(ANY, 401, times=10_000))
    github_http.forget_process_memory()  # no cached answers: every command really asks GitHub
    where = ["--control", str(world.control), "--state", str(world.state)]
    for argv in (
        ["plan"],
        ["plan", "--json"],
        ["apply", "--yes"],
        ["status"],
        ["status", "--json"],
        ["describe", "a"],
        ["describe", "a", "--json"],
        ["logs", "a"],
        ["doctor"],
    ):
        main([*argv, *where])
        printed = capsys.readouterr()
        assert TOKEN not in printed.out + printed.err, argv
        if argv == ["doctor"]:
            assert "rejected the token" in printed.out + printed.err  # GitHub was asked


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


# --------------------------------------------------------------------------- faults

PULLS = rf"^POST /repos/{OWNER}/{NAME}/pulls$"
LIST = rf"^GET /repos/{OWNER}/{NAME}/pulls\?"
ANY = r"."


def passes(engine: Engine, until: Callable[[Plan, list[str]], bool], most: int = 40) -> list[str]:
    """Run passes until ``until(plan, errors)`` holds; the apply errors met on the way."""
    errors: list[str] = []
    for _ in range(most):
        desired = engine.load()
        with engine.locked(None) as store:
            result = engine.apply(desired, store)
        assert result.report is not None
        errors += [f"{a.kind.value} {a.task}: {m}" for a, m in result.report.failed]
        if until(result.plan, errors):
            return errors
        time.sleep(0.1)
    raise AssertionError(f"no end in {most} passes against the fake GitHub; errors: {errors}")


def converged(plan: Plan, _errors: list[str]) -> bool:
    phases = {t.phase.value for t in plan.tasks}
    return plan.empty and not phases & {"pending", "queued", "running", "backoff"}


def passes_until_converged(engine: Engine) -> list[str]:
    return passes(engine, converged)


def recorded_prs(world: World) -> dict[str, int | None]:
    db = sqlite3.connect(world.state / "state.db")
    try:
        return dict(db.execute("SELECT name, pr_number FROM tasks").fetchall())
    finally:
        db.close()


def assert_one_pr_each(world: World, github: FakeGitHub) -> None:
    assert sorted(p["head"]["ref"] for p in github.pulls) == ["agent/a", "agent/b"]
    numbers = {p["head"]["ref"].split("/")[1]: p["number"] for p in github.pulls}
    assert recorded_prs(world) == numbers  # the PR artifact is recorded, not lost


@pytest.mark.parametrize(
    ("status", "headers", "after"),
    [
        (500, {}, False),
        (502, {}, True),  # GitHub created the PR, the answer was lost
        (503, {}, False),
        ("reset", {}, True),
        ("timeout", {}, True),
        (403, {"Retry-After": "7"}, False),  # secondary rate limit
        (429, {"Retry-After": "3"}, False),
        (403, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": "1800001050"}, False),
    ],
    ids=[
        "500",
        "502-after-create",
        "503",
        "reset-after-create",
        "timeout-after-create",
        "403-secondary",
        "429",
        "403-primary-exhausted",
    ],
)
def test_a_transient_fault_on_create_is_retried_into_one_pr(
    world: World,
    github: FakeGitHub,
    clock: VirtualTime,
    status: int | str,
    headers: dict[str, str],
    after: bool,
) -> None:
    github_world(world)
    github.faults.append(Fault(PULLS, status, times=2, headers=headers, after=after))
    engine = Engine(Context(control=str(world.control), state_dir=world.state))
    errors = passes_until_converged(engine)
    assert errors == []  # retried within the pass: success, no task error
    assert github.faults[0].hits == 2
    assert_one_pr_each(world, github)
    if "Retry-After" in headers:
        assert float(headers["Retry-After"]) in clock.sleeps  # the server's delay was honoured
    if "x-ratelimit-reset" in headers:
        assert any(s > 20 for s in clock.sleeps)  # waited for the reset, not a blind backoff
    assert sum(clock.sleeps) < 5 * 60  # bounded


def test_a_transient_fault_on_the_list_is_retried(
    world: World, github: FakeGitHub, clock: VirtualTime
) -> None:
    github_world(world)
    github.faults.append(Fault(LIST, 502, times=2))
    engine = Engine(Context(control=str(world.control), state_dir=world.state))
    assert passes_until_converged(engine) == []
    assert github.faults[0].hits == 2
    assert_one_pr_each(world, github)


def test_github_down_for_longer_than_the_deadline_is_a_task_error_then_heals(
    world: World, github: FakeGitHub, clock: VirtualTime
) -> None:
    github_world(world)
    outage = Fault(PULLS, 503, times=10_000)
    github.faults.append(outage)
    engine = Engine(Context(control=str(world.control), state_dir=world.state))
    errors = passes(engine, lambda _plan, errors: bool(errors), most=60)
    assert errors, "the outage never surfaced as a task error"
    assert "GitHub kept failing" in errors[0] and "HTTP 503" in errors[0], errors[0]
    assert "gave up" in errors[0]
    assert TOKEN not in errors[0]
    assert max(clock.sleeps) <= 60 and outage.hits >= 3  # retried, bounded by the deadline
    assert github.pulls == []
    outage.times = outage.hits  # GitHub is back
    passes_until_converged(engine)
    assert_one_pr_each(world, github)


@pytest.mark.parametrize(
    ("status", "words"),
    [(401, "rejected the token"), (404, "not visible to this token")],
)
def test_a_rejected_token_or_invisible_repo_blocks_with_the_fix_then_heals(
    world: World, github: FakeGitHub, status: int, words: str
) -> None:
    github_world(world)
    fault = Fault(ANY, status, times=10_000)
    github.faults.append(fault)
    engine = Engine(Context(control=str(world.control), state_dir=world.state))
    desired = engine.load()
    with engine.locked(None) as store:
        result = engine.apply(desired, store)
    assert result.plan.empty  # nothing is dispatched to a lane whose forge refuses it
    reasons = {b.task: b.reason for b in result.plan.blocked}
    assert words in reasons["a"] and TOKEN not in reasons["a"], reasons
    assert fault.hits <= 3  # a definite answer is not retried
    fault.times = fault.hits
    passes_until_converged(engine)
    assert_one_pr_each(world, github)


@pytest.mark.parametrize(
    ("status", "words"),
    [(401, "rejected the token"), (404, "not visible to this token")],
)
def test_a_token_revoked_mid_pass_is_a_clear_error_without_a_duplicate(
    world: World, github: FakeGitHub, status: int, words: str
) -> None:
    github_world(world)
    fault = Fault(PULLS, status, times=10_000)
    github.faults.append(fault)
    engine = Engine(Context(control=str(world.control), state_dir=world.state))
    errors = passes(engine, lambda _plan, errors: len(errors) >= 2, most=60)
    assert all(e.startswith("open-pr ") and words in e for e in errors), errors
    assert fault.hits == len(errors)  # definite answers: no retries
    assert github.pulls == []
    fault.times = fault.hits
    passes_until_converged(engine)
    assert_one_pr_each(world, github)


def test_feedback_is_read_only_where_the_loop_can_use_it(world: World, github: FakeGitHub) -> None:
    """Checks and reviews are read for open task PRs on the commit the lane pushed, of the
    kinds `pr.iterateOn` names: not for a task that never iterates, nor for a head someone
    else moved."""
    github_world(world)
    github.remote = world.root / "remotes" / "app.git"
    world.tasks["b"]["pr"] = {"iterateOn": []}
    world.commit()
    engine = Engine(Context(control=str(world.control), state_dir=world.state))
    converge(engine)
    [a, b] = sorted(github.pulls, key=lambda p: p["head"]["ref"])

    def reads(number: int, sha: str) -> list[str]:
        wanted = (f"/commits/{sha}/", f"/pulls/{number}/reviews", f"/pulls/{number}/comments")
        return [r for r in github.requests if any(w in r for w in wanted)]

    github.requests.clear()
    with engine.reading() as store:
        engine.observe_and_plan(engine.load(), store)
    sha_a, sha_b = github.head_sha("agent/a"), github.head_sha("agent/b")
    # a's commit: its check runs and status (none reported yet: CI may still start) are asked
    # again; its reviews are not, the PR did not change since they were read
    assert len(reads(a["number"], sha_a)) == 2
    github.submit_review(a["number"], "alice", "COMMENTED", "Looks fine.")
    github.requests.clear()
    with engine.reading() as store:
        engine.observe_and_plan(engine.load(), store)
    assert f"GET /repos/{OWNER}/{NAME}/pulls/{a['number']}/reviews" in github.requests
    assert reads(b["number"], sha_b) == []  # iterateOn: [] needs none
    # Someone pushes to a's branch on GitHub: its verdicts are not about the reconciler's commit.
    from tests.support.git import git

    clone = world.root / "someone"
    git(world.root, "clone", "-q", "-b", "agent/a", str(github.remote), str(clone))
    git(
        clone,
        "-c",
        "user.name=x",
        "-c",
        "user.email=x@x",
        "commit",
        "-q",
        "--allow-empty",
        "-m",
        "x",
    )
    git(clone, "push", "-q", "origin", "agent/a")
    github.version += 1
    github.requests.clear()
    with engine.reading() as store:
        engine.observe_and_plan(engine.load(), store)
    assert reads(a["number"], github.head_sha("agent/a")) == []


def test_a_pr_a_webhook_names_is_read_anew_on_the_next_pass_and_no_other(
    world: World, github: FakeGitHub
) -> None:
    """Settled checks are trusted for CHECKS_RECHECK without a request; a delivery naming a PR
    (by number, or by its head commit) makes the loop's next pass ask for that PR's checks and
    reviews again, and nothing more of the others."""
    github_world(world)
    github.remote = world.root / "remotes" / "app.git"
    engine = Engine(Context(control=str(world.control), state_dir=world.state))
    converge(engine)
    [a, b] = sorted(github.pulls, key=lambda p: p["head"]["ref"])
    sha_a, sha_b = github.head_sha("agent/a"), github.head_sha("agent/b")
    for sha in (sha_a, sha_b):
        github.check(sha, "test", "completed", "success")
    daemon = Daemon(engine, 3600.0, Log("json", io.StringIO()))

    def one_pass(reasons: Counter[str]) -> dict[int, list[str]]:
        github.requests.clear()
        with engine.locked(None) as store:
            healthy, result = daemon.one_pass(store, reasons)
        assert healthy and result is not None and result.plan.empty
        return {
            number: [
                r
                for r in github.requests
                if any(w in r for w in (f"/commits/{sha}/", f"/pulls/{number}/"))
                and not r.endswith(f"/pulls/{number}")  # mergeability, not feedback
            ]
            for number, sha in ((a["number"], sha_a), (b["number"], sha_b))
        }

    # the completed checks are read once, then trusted: a pass asks nothing of either PR
    one_pass(Counter(interval=1))
    assert one_pass(Counter(interval=1)) == {a["number"]: [], b["number"]: []}

    daemon.wake.fire("github-check_run", Recheck(repo=f"{OWNER.upper()}/{NAME}", shas=[sha_b]))
    reads = one_pass(daemon.wake.wait(0))
    base = f"GET /repos/{OWNER}/{NAME}"
    assert sorted(reads[b["number"]]) == [
        f"{base}/commits/{sha_b}/check-runs",
        f"{base}/commits/{sha_b}/status",
        f"{base}/pulls/{b['number']}/reviews",
    ]
    assert reads[a["number"]] == []

    daemon.wake.fire("github-pull_request_review", Recheck(repo=f"{OWNER}/{NAME}", numbers=[1]))
    reads = one_pass(daemon.wake.wait(0))
    assert len(reads[1]) == 3 and reads[2] == []
    # the named PRs were for that pass only
    assert one_pass(Counter(interval=1)) == {a["number"]: [], b["number"]: []}


def test_the_rate_limit_comes_back_with_the_observation_at_no_cost(
    world: World, github: FakeGitHub, clock: VirtualTime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The figure /metrics shows is what the lane's forge heard anyway (pre-flight's free
    /rate_limit, the headers of any answer): the observation carries it back, no request more."""
    github_world(world)
    engine = Engine(Context(control=str(world.control), state_dir=world.state))
    converge(engine)
    # pre-flight asks again on the next pass (a passed one stands for PREFLIGHT_FRESH seconds of
    # the engine's clock), and its /rate_limit is not fresh any more
    monkeypatch.setattr(lanes, "PREFLIGHT_FRESH", 0.0)
    clock.sleep(github_http.RATE_LIMIT_FRESH)
    github.requests.clear()
    desired = engine.load()
    with engine.locked(None) as store:
        result = engine.apply(desired, store)
    rate = result.rates[("web", "app")]
    assert (rate.limit, rate.remaining) == (5000, 5000 - github.points)
    assert engine.rates == result.rates
    assert github.requests.count("GET /rate_limit") == 1  # pre-flight's own, as before


def test_the_rate_limit_headers_of_any_answer_are_what_is_known(github: FakeGitHub) -> None:
    client = forge_github.GitHubForge(f"{OWNER}/{NAME}", TOKEN)
    assert client.known_rate() is None
    github.faults.append(
        Fault(
            r"GET /repos/acme/app$",
            404,
            headers={"X-RateLimit-Remaining": "4321", "X-RateLimit-Limit": "5000"},
        )
    )
    with pytest.raises(github_http.GitHubError):
        client.access()
    known = client.known_rate()
    assert known is not None and (known.remaining, known.limit) == (4321, 5000)
