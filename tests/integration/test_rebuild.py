"""The state is rebuildable: with tasks at pr-open and an agent still running, the state database
is moved aside (or found damaged, then moved aside as the error says) and the next pass rebuilds
it from the lanes and the forge — no second run, no second live agent, no second PR — and every
task converges."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.integration.world import World
from tests.support.waiting import wait_for


def run_dirs(world: World) -> list[str]:
    """Every run directory of the lane, as ``task/attempt.iteration``."""
    root = world.home / "worktrees" / "web" / ".runs"
    return sorted(f"{t.name}/{r.name}" for t in root.iterdir() for r in t.iterdir())


def runs_of(world: World, task: str) -> list[tuple[int, int, Any]]:
    proc = world.cli("describe", task, "--json")
    assert proc.returncode == 0, proc.stderr
    return [(r["attempt"], r["iteration"], r["outcome"]) for r in json.loads(proc.stdout)["runs"]]


def prs(world: World, listed: list[dict[str, Any]] | None = None) -> list[tuple[int, str, str]]:
    return sorted(
        (p["number"], p["head"], p["state"])
        for p in (world.prs("web-repo") if listed is None else listed)
    )


def phases(world: World) -> dict[str, str]:
    return {name: t["phase"] for name, t in world.status().items()}


def world_with_a_live_run(world: World, release: Path) -> None:
    world.lane("web", slots=3)
    world.lanes["web"]["env"] = {"RELEASE_FILE": str(release)}
    world.task("a", "web", "succeed")
    world.task("b", "web", "needs-feedback", success={"checks": [["test", "-f", "fixed.txt"]]})
    world.task("live", "web", "until-released")
    world.commit()
    want = {"a": "pr-open", "b": "pr-open", "live": "running"}

    def arrived() -> bool:
        if phases(world) == want:
            return True
        proc = world.cli("apply", "--yes")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return False

    wait_for(arrived, f"the phases {want}", timeout=90, every=0.1, details=lambda: phases(world))


@pytest.mark.parametrize("loss", ["moved-aside", "damaged"])
def test_the_state_is_rebuilt_without_duplicates(world: World, loss: str) -> None:
    release = world.root / "release"
    world_with_a_live_run(world, release)
    prs_before = world.prs("web-repo")
    assert sorted(p["head"] for p in prs_before) == ["agent/a", "agent/b"]
    dirs_before = run_dirs(world)
    assert dirs_before == ["a/1.1", "b/1.1", "b/1.2", "live/1.1"]
    live_before = world.live_agents()["live"]

    db = world.state / "state.db"
    if loss == "damaged":
        db.write_bytes(os.urandom(64 * 1024))
        proc = world.cli("apply", "--yes")
        assert proc.returncode == 1
        assert f"the state database {db} is damaged" in proc.stderr, proc.stderr
        assert f"mv {db} {db}.damaged" in proc.stderr and "Traceback" not in proc.stderr
        assert world.cli("state", "check").returncode == 1
    db.rename(world.state / "state.db.damaged")  # what the error says to do

    proc = world.cli("apply", "--yes")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "adopt-pr" in proc.stdout  # the PRs were found on the forge, not opened again
    assert world.cli("state", "check").returncode == 0
    assert run_dirs(world) == dirs_before  # no run started again
    assert world.live_agents()["live"] == live_before  # the same agent, and only it
    assert prs(world) == prs(world, prs_before)  # adopted (and updated), none added
    assert phases(world) == {"a": "pr-open", "b": "pr-open", "live": "running"}
    assert runs_of(world, "a") == [(1, 1, "succeeded")]
    # the history of the runs is found again in their directories (only the latest is judged)
    assert runs_of(world, "b")[-1] == (1, 2, "succeeded") and len(runs_of(world, "b")) == 2
    assert [r[:2] for r in runs_of(world, "live")] == [(1, 1)]

    release.write_text("go\n")
    world.converge()
    assert phases(world) == {"a": "pr-open", "b": "pr-open", "live": "pr-open"}
    assert prs(world)[:2] == prs(world, prs_before)  # the PRs that were there are kept
    assert prs(world)[2] == (3, "agent/live", "open")  # and the live task got the only new one
    assert run_dirs(world) == dirs_before  # the live run finished; nothing else started
    assert {n: t["attempt"] for n, t in world.status().items()} == {"a": 1, "b": 1, "live": 1}
    assert world.live_agents() == {}
