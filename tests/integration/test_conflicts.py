"""A base that moves under open PRs, end to end with real repositories and the real command line:
a conflict is seen before `pr merge`, shown, and resolved by the agent in an iteration; a clean
move is rebased by the reconciler without the agent."""

from __future__ import annotations

import json
from typing import Any

from tests.integration.world import World
from tests.support.git import git


def cli_json(world: World, *args: str) -> Any:
    proc = world.cli(*args, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def merged(world: World, task: str) -> None:
    proc = world.cli("pr", "merge", task)
    assert proc.returncode == 0, proc.stderr


def test_a_conflicting_pr_is_shown_and_its_agent_resolves_it_before_anyone_merges(
    world: World,
) -> None:
    world.lane("web")
    world.task("one", "web", "shared-file")
    world.task("two", "web", "shared-file")
    world.commit()
    world.converge()
    assert {t["phase"] for t in world.status().values()} == {"pr-open"}
    listed = {p["task"]: p for p in cli_json(world, "pr", "list")["pulls"]}
    assert {(p["state"], p["mergeable"]) for p in listed.values()} == {("open", True)}
    number = listed["two"]["number"]  # the two PRs open in either order

    merged(world, "one")  # two's PR now conflicts with main in shared.txt
    two = world.status()["two"]
    assert (two["phase"], two["reasonCode"]) == ("pr-open", "Conflict")
    assert two["reason"] == (
        f"PR #{number} conflicts with main in shared.txt; iteration 2 asks the agent to resolve it"
    )
    assert (two["pr"]["mergeable"], two["pr"]["behind"], two["pr"]["conflicts"]) == (
        False,
        True,
        ["shared.txt"],
    )
    degraded = next(c for c in two["conditions"] if c["type"] == "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "Conflict")
    describe = world.cli("describe", "two")
    assert "(open, conflicts with its base in shared.txt)" in describe.stdout
    iterate = next(a for a in world.plan_json()["actions"] if a["task"] == "two")
    assert (iterate["action"], iterate["iteration"], iterate["fetchBase"]) == ("iterate", 2, True)
    assert "shared.txt" in iterate["feedback"][0]
    text = world.cli("pr", "list").stdout
    assert "conflict (shared.txt)" in text
    shown = cli_json(world, "pr", "show", "two")
    assert (shown["pr"]["mergeable"], shown["pr"]["conflicts"]) == (False, ["shared.txt"])
    assert "  mergeable:  conflict (shared.txt)" in world.cli("pr", "show", "two").stdout

    world.converge()
    status = world.status()
    assert status["one"]["phase"] == "done"
    two = status["two"]
    assert (two["phase"], two["reasonCode"], two["iteration"]) == ("pr-open", "AwaitingReview", 2)
    assert (two["pr"]["mergeable"], two["pr"]["behind"]) == (True, False)
    shown = cli_json(world, "pr", "show", "two")
    assert any("after run 1.2" in c["body"] for c in shown["comments"])  # the resolution pushed
    diff = world.cli("pr", "diff", "two").stdout
    assert "+two was here" in diff and "<<<<<<<" not in diff

    merged(world, "two")  # no conflict left for `pr merge` to find
    world.converge()
    assert {t["phase"] for t in world.status().values()} == {"done"}
    main = git(world.root / "remotes" / "web-repo.git", "show", "main:shared.txt")
    assert sorted(main.splitlines()) == ["one was here", "two was here"]  # both sides kept
    assert world.live_agents() == {}


def test_a_clean_base_move_is_rebased_by_the_reconciler_without_the_agent(world: World) -> None:
    world.lane("web")
    world.task("a", "web", "succeed")
    world.task("b", "web", "succeed")
    world.commit()
    world.converge()
    pushed = world.git_head("web-repo", "agent/b")
    merged(world, "a")

    b = world.status()["b"]
    assert (b["reasonCode"], b["pr"]["mergeable"], b["pr"]["behind"]) == ("Rebasing", True, True)
    assert [a["action"] for a in world.plan_json()["actions"] if a["task"] == "b"] == ["rebase"]
    world.converge()
    b = world.status()["b"]
    assert (b["phase"], b["reasonCode"], b["iteration"]) == ("pr-open", "AwaitingReview", 1)
    assert (b["pr"]["mergeable"], b["pr"]["behind"]) == (True, False)
    bare = world.root / "remotes" / "web-repo.git"
    head = world.git_head("web-repo", "agent/b")
    assert head != pushed
    git(bare, "merge-base", "--is-ancestor", "main", head)  # contains the moved main
    assert git(bare, "log", "--format=%s", "-1", head) == "work on b"  # its own commit, replayed
    runs = cli_json(world, "describe", "b")["runs"]
    assert len(runs) == 1  # no agent run for it
    events = [e["kind"] for e in cli_json(world, "describe", "b")["events"]]
    assert "pr-rebased" in events
    comments = [c["body"] for c in cli_json(world, "pr", "show", "b")["comments"]]
    assert any("main moved: rebased agent/b on main" in c for c in comments)

    merged(world, "b")
    assert world.git_head("web-repo", "main") == head  # a fast-forward now
