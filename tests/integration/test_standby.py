"""End to end: a full lane's next task waits on standby and starts at the end of the run before it,
with no pass between; one no longer wanted is withdrawn and costs nothing."""

from __future__ import annotations

import json
from pathlib import Path

from reconciler.node.standby import STANDBY_DIR
from tests.integration.world import World
from tests.support.waiting import wait_for


def runs(world: World) -> Path:
    return world.home / "worktrees" / "web" / ".runs"


def one_slot_behind_a_held_run(world: World) -> Path:
    """Lane web, one slot: ``first`` runs until released, ``second`` waits behind it; one pass
    applied. The file that releases ``first``."""
    world.lane("web", slots=1)
    release = world.root / "release"
    world.lanes["web"]["env"] = {"RELEASE_FILE": str(release)}
    world.task("first", "web", "until-released")
    world.task("second", "web", "succeed")
    world.commit()
    planned = [(a["action"], a["task"]) for a in world.plan_json()["actions"]]
    assert planned == [("start", "first"), ("standby", "second")]
    proc = world.cli("apply", "--yes")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Plan: 1 to start, 1 on standby." in proc.stdout
    second = world.status()["second"]
    assert (second["phase"], second["reasonCode"]) == ("queued", "OnStandby")
    assert second["reason"] == "on standby in lane web: starts as a run there ends (1/1 in use)"
    return release


def test_a_standby_run_starts_as_the_run_before_it_ends_with_no_pass_between(
    world: World,
) -> None:
    release = one_slot_behind_a_held_run(world)
    [entry] = [e.name for e in (runs(world) / STANDBY_DIR).iterdir()]
    assert entry.endswith("~second~1.1~" + world.describe("second")["generation"])
    release.touch()
    # no pass runs from here on until the second run has ended: its start was the first's end
    ended = runs(world) / "second" / "1.1" / "exit.json"
    wait_for(ended.exists, "the standby run to start and end without a pass", timeout=30)
    first_end = json.loads((runs(world) / "first" / "1.1" / "exit.json").read_text())
    pid = json.loads((runs(world) / "second" / "1.1" / "pid.json").read_text())
    assert pid["claimed_from"] == "first/1.1" and pid["claimed_at"] >= first_end["ended_at"]
    world.converge()
    status = world.status()
    assert {n: (t["phase"], t["attempt"]) for n, t in status.items()} == {
        "first": ("pr-open", 1),
        "second": ("pr-open", 1),
    }
    events = [(e["kind"], e["message"]) for e in world.describe("second")["events"]]
    assert (
        "standby",
        "run 1.1 prepared on standby in lane web: it starts as a run there ends",
    ) in events
    assert any(
        kind == "spawned" and "standby run 1.1 started in lane web as run first/1.1 ended" in text
        for kind, text in events
    )
    assert not any(kind == "adopted" for kind, _ in events)
    assert len(world.prs("web-repo")) == 2


def test_a_standby_run_no_longer_wanted_is_withdrawn_and_costs_nothing(world: World) -> None:
    release = one_slot_behind_a_held_run(world)
    world.tasks["second"]["paused"] = True
    world.commit("pause second")
    planned = [(a["action"], a["task"]) for a in world.plan_json()["actions"]]
    assert planned == [("withdraw", "second")]
    proc = world.cli("apply", "--yes")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Plan: 1 to withdraw." in proc.stdout
    assert list((runs(world) / STANDBY_DIR).iterdir()) == []
    release.touch()
    wait_for((runs(world) / "first" / "1.1" / "exit.json").exists, "the first run to end")
    world.converge()
    status = world.status()
    assert (status["first"]["phase"], status["second"]["phase"]) == ("pr-open", "paused")
    assert status["second"]["attempt"] == 0
    assert not (runs(world) / "second").exists()
    assert "withdrawn" in [e["kind"] for e in world.describe("second")["events"]]
    # resumed, it starts in the free slot as any task would
    world.tasks["second"]["paused"] = False
    world.commit("resume second")
    world.converge()
    assert world.status()["second"]["phase"] == "pr-open"
