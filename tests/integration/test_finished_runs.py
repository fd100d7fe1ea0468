"""A run whose agent finished but whose supervisor was killed before ``exit.json``: its work is
not lost. The reconciler finishes the run (the checks, the exit record) and the task converges
to one PR carrying the one commit the agent made, in its first attempt, with no retry."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

from tests.integration.world import World
from tests.support.git import git
from tests.support.waiting import wait_for

# The task's check: it hangs on its first call (counted in the file argv[1]) and passes after.
# The supervisor is killed while it hangs.
HANGS_FIRST = (
    "import sys, time\n"
    "from pathlib import Path\n"
    "count = Path(sys.argv[1])\n"
    "calls = len(count.read_text()) if count.exists() else 0\n"
    "count.write_text('x' * (calls + 1))\n"
    "if calls == 0:\n"
    "    time.sleep(300)\n"
)


def calls(path: Path) -> int:
    return len(path.read_text()) if path.exists() else 0


def test_a_run_whose_supervisor_died_after_its_agent_finished_is_finished_not_redone(
    world: World,
) -> None:
    world.lane("web")
    count = world.root / "check-calls"
    check = [sys.executable, "-c", HANGS_FIRST, str(count)]
    world.task("t", "web", "succeed", success={"markers": ["DONE"], "checks": [check]})
    world.commit()
    assert world.cli("apply", "--yes").returncode == 0

    # The agent committed and exited; its supervisor runs the check: SIGKILL it there, before
    # it can write exit.json, then the check it was waiting on.
    run_dir = world.home / "worktrees" / "web" / ".runs" / "t" / "1.1"
    wait_for(lambda: calls(count) == 1, "the supervisor's check to start")
    supervisor = json.loads((run_dir / "pid.json").read_text())["pid"]
    os.kill(supervisor, signal.SIGKILL)
    world.kill_agents()
    wait_for(lambda: not world.live_agents(), "every process of the run to be gone")
    assert not (run_dir / "exit.json").exists()
    assert (run_dir / "agent-exit.json").exists()

    plan = world.plan_json()
    assert [(a["action"], a["attempt"], a["exitCode"]) for a in plan["actions"]] == [
        ("finish-run", 1, 0)
    ]
    status = world.status()["t"]
    assert (status["phase"], status["reasonCode"]) == ("running", "FinishingRun")

    world.converge()

    status = world.status()["t"]
    assert (status["phase"], status["attempt"], status["iteration"]) == ("pr-open", 1, 1)
    [pr] = world.prs("web-repo")
    assert pr["head"] == "agent/t"
    bare = world.root / "remotes" / "web-repo.git"
    assert git(bare, "rev-list", "--count", "main..agent/t") == "1"  # one commit, not two
    assert calls(count) == 2  # the finish ran the check again; no second run ran it a third time
    assert sorted(p.name for p in run_dir.parent.iterdir()) == ["1.1"]  # no retry, no iteration
    exit_record = json.loads((run_dir / "exit.json").read_text())
    assert exit_record["recovered"] == "recorded" and exit_record["exit_code"] == 0

    described = world.describe("t")
    kinds = [e["kind"] for e in described["events"]]
    assert "finish-run" in kinds and "run-succeeded" in kinds
    assert "run-crashed" not in kinds and "retry" not in kinds
