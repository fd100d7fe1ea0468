"""Exactly once: kill the reconciler at every named crash point, converge, and count.

For each point the scenario runs every ``apply`` with ``RECONCILER_CRASH_AT=<point>`` until the
process has really died there once, then goes on without it. At the end: one PR per task, at most
one live run per task, no leaked worktree — and the same again after deleting the state directory.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from collections import Counter

import pytest

from reconciler.faults import POINTS
from tests.integration.world import World, _environ


class CrashOnce:
    def __init__(self, world: World, point: str) -> None:
        self.world = world
        self.point = point
        self.crashed = 0

    def apply(self) -> subprocess.CompletedProcess[str]:
        env = {} if self.crashed else {"RECONCILER_CRASH_AT": self.point}
        proc = self.world.cli("apply", "--yes", **env)
        if proc.returncode == -signal.SIGKILL:
            self.crashed += 1
        else:
            assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc

    def converge(self, timeout: float = 60.0) -> None:
        moving = {"pending", "queued", "running", "backoff", "closing"}
        deadline = time.time() + timeout
        while time.time() < deadline:
            proc = self.apply()
            self.check_invariants()
            if proc.returncode == 0 and "No changes." in proc.stdout:
                if not {t["phase"] for t in self.world.status().values()} & moving:
                    return
            time.sleep(0.05)
        raise AssertionError(f"no convergence after crashing at {self.point}")

    def check_invariants(self) -> None:
        live = self.world.live_agents()
        # one live run per task: its processes (agent, git children) all carry one run dir
        runs = {
            task: {_environ(pid).get("RECONCILER_RUN_DIR") for pid in pids} - {None}
            for task, pids in live.items()
        }
        assert all(len(dirs) <= 1 for dirs in runs.values()), runs
        heads = Counter(p["head"] for p in self.world.prs("web-repo"))
        assert all(n == 1 for n in heads.values()), heads
        opened = Counter(p["head"] for p in self.world.prs("web-repo") if p["state"] == "open")
        assert all(n == 1 for n in opened.values()), opened


def final_checks(world: World) -> None:
    prs = world.prs("web-repo")
    by_head = {p["head"]: p for p in prs}
    assert sorted(by_head) == ["agent/a", "agent/b", "agent/d", "agent/m", "agent/s"]
    assert len(prs) == 5
    assert by_head["agent/d"]["state"] == "closed"
    assert by_head["agent/m"]["state"] == "merged"
    for name in ("a", "b", "s"):
        assert by_head[f"agent/{name}"]["state"] == "open"
    leaves = sorted(p.rsplit("/", 1)[1] for p in world.worktrees("web-repo"))
    assert leaves == ["a", "b", "s"]
    assert world.live_agents() == {}
    status = world.status()
    assert {n: t["phase"] for n, t in status.items()} == {
        "a": "pr-open",
        "b": "pr-open",
        "m": "done",
        "s": "pr-open",
    }


@pytest.mark.parametrize("point", sorted(POINTS))
def test_crash_at_every_point_converges_without_duplicates(world: World, point: str) -> None:
    world.lane("web", slots=5)
    world.task("a", "web", "succeed")
    world.task("b", "web", "needs-feedback", success={"checks": [["test", "-f", "fixed.txt"]]})
    world.task("d", "web", "succeed")
    world.task("m", "web", "succeed")
    world.task("s", "web", "until-released")
    release = world.root / "release-s"
    world.lanes["web"]["env"] = {"RELEASE_FILE": str(release)}
    world.commit()
    driver = CrashOnce(world, point)

    # A spec change while `s` runs (its agent runs until then) exercises stop; then converge
    # everything. A crash in the first pass leaves no run to stop: `s` is let go instead.
    driver.apply()
    if driver.crashed == 0:
        world.tasks["s"]["prompt"] = "Please do s, with the new spec."
        world.commit("change s")
    else:
        release.touch()
    driver.converge()
    assert world.cli("pr", "merge", "m").returncode == 0
    driver.converge()
    del world.tasks["d"]
    world.commit("remove d")
    driver.converge()

    assert driver.crashed == 1, f"the scenario never reached {point}"
    final_checks(world)

    # Lose the whole state: the world is the authority, nothing is duplicated.
    shutil.rmtree(world.state)
    driver.converge()
    final_checks(world)


@pytest.mark.parametrize("point", ["after-run-intent", "after-workspace"])
def test_a_start_that_never_happened_costs_no_attempt(world: World, point: str) -> None:
    """Killed between recording the start and spawning the agent: the next pass finds no trace of
    the run in its lane, says so, and starts the same run again instead of charging a crash."""
    world.lane("web")
    world.task("a", "web", "succeed", maxAttempts=1)
    world.commit()
    killed = world.cli("apply", "--yes", RECONCILER_CRASH_AT=point)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr

    plan = world.plan_json()
    assert [(a["action"], a["attempt"], a["iteration"]) for a in plan["actions"]] == [
        ("start", 1, 1)
    ], plan
    first = world.cli("apply", "--yes")
    assert first.returncode == 0, first.stdout + first.stderr
    world.converge()

    status = world.status()["a"]
    assert (status["phase"], status["attempt"], status["iteration"]) == ("pr-open", 1, 1)
    described = json.loads(world.cli("describe", "a", "--json").stdout)
    assert [(r["attempt"], r["iteration"], r["outcome"]) for r in described["runs"]] == [
        (1, 1, "succeeded")
    ]
    kinds = [e["kind"] for e in described["events"]]
    assert "start-lost" in kinds and "run-crashed" not in kinds, kinds
    lost = next(e for e in described["events"] if e["kind"] == "start-lost")
    assert "run 1.1 was recorded but never happened" in lost["message"]
    assert "costs no attempt" in lost["message"]
    assert len(world.prs("web-repo")) == 1
