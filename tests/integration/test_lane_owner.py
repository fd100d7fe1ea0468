"""One state directory owns a lane: a second one is refused, with the owner named, until it takes
the lane over deliberately.

The report this reproduces: `apply --state OTHER` next to a live `reconciler run` adopted the
run's PR and completed its task. Now the other state sees the lane as another state's (tasks
`unknown`, a failing `lane-owner` check), plans nothing for it and changes nothing; `--take-over`
moves the lane, recorded as an event, and the first state is then the one refused.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from tests.integration.test_doctor import doctor_rows
from tests.integration.world import World
from tests.support.daemon_log import RunLog


def other(world: World, state: Path, *args: str) -> Any:
    return world.cli(*args, RECONCILER_STATE=str(state))


def status_of(world: World, state: Path) -> dict[str, dict[str, Any]]:
    proc = other(world, state, "status", "--json")
    assert proc.returncode == 0, proc.stderr
    return {t["name"]: t for t in json.loads(proc.stdout)["tasks"]}


def events_of(world: World, state: Path, task: str) -> list[str]:
    proc = other(world, state, "describe", task, "--json")
    assert proc.returncode == 0, proc.stderr
    return [e["kind"] for e in json.loads(proc.stdout)["events"]]


def test_a_second_state_is_refused_until_it_takes_the_lane_over(
    world: World, tmp_path: Path
) -> None:
    world.lane("web")
    world.task("a", "web", "succeed")
    world.commit()
    second = tmp_path / "second-state"
    run = RunLog(
        [sys.executable, "-m", "reconciler", "run", "--interval", "120s", "--log-format", "json"],
        world.env(),
    )
    try:
        run.wait_for(
            lambda: [p for p in world.prs("web-repo") if p["state"] == "open"],
            "the run's PR",
            timeout=60,
        )
        owner_file = json.loads((world.home / "worktrees/web/.owner").read_text())
        assert owner_file["path"] == str(world.state)

        # The second state directory: the lane is the run's. Nothing planned, nothing applied.
        plan = json.loads(other(world, second, "plan", "--json").stdout)
        assert plan["actions"] == []
        applied = other(world, second, "apply", "--yes")
        assert applied.returncode == 0, applied.stderr
        task = status_of(world, second)["a"]
        assert task["phase"] == "unknown"
        assert str(world.state) in task["reason"]
        assert "--take-over web" in task["reason"]
        assert "adopt" not in " ".join(events_of(world, second, "a"))
        assert status_of(world, world.state)["a"]["phase"] == "pr-open"
        assert [p["state"] for p in world.prs("web-repo")] == ["open"]

        # doctor names the owner and the fix; a change by hand is refused the same way
        doctor = other(world, second, "doctor")
        assert doctor.returncode == 1
        row = doctor_rows(doctor.stdout)[("web", "lane-owner")]
        assert str(world.state) in row and "--take-over" in row
        merge = other(world, second, "pr", "merge", "a")
        assert merge.returncode == 1
        assert "forge-merge refused" in merge.stderr and str(world.state) in merge.stderr
        assert [p["state"] for p in world.prs("web-repo")] == ["open"]
    finally:
        assert run.stop() == 0

    # Deliberately: the second state takes the lane over and adopts the PR.
    taken = other(world, second, "apply", "--yes", "--take-over", "web")
    assert taken.returncode == 0, taken.stdout + taken.stderr
    assert f"Lane web taken over from the state directory {world.state} on " in taken.stdout
    assert "adopt-pr" in taken.stdout
    assert status_of(world, second)["a"]["phase"] == "pr-open"
    assert json.loads((world.home / "worktrees/web/.owner").read_text())["path"] == str(second)
    # ... and now the first state is the one refused, until `run --take-over` moves it back
    first = status_of(world, world.state)["a"]
    assert first["phase"] == "unknown" and str(second) in first["reason"]
    back = world.cli("run", "--once", "--take-over", "all", "--log-format", "json")
    assert back.returncode == 0, back.stdout + back.stderr
    moved = [json.loads(line) for line in back.stdout.splitlines()]
    assert any(f"lane web taken over from the state directory {second}" in r["msg"] for r in moved)
    assert status_of(world, world.state)["a"]["phase"] == "pr-open"
    assert len(world.prs("web-repo")) == 1


def test_take_over_names_a_lane_of_the_manifests(world: World) -> None:
    world.lane("web")
    world.commit()
    proc = world.cli("apply", "--yes", "--take-over", "webb")
    assert proc.returncode == 1
    assert "--take-over names webb, not a lane of the manifests (lanes: web)" in proc.stderr
