"""One action that fails, fails alone: the state refusing a write, a start that fails for good,
and a start the lane could not carry out for now (a full disk), which costs no attempt."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from reconciler.state import Store
from tests.integration.world import World
from tests.support.disks import fill, tmpfs
from tests.support.waiting import wait_for


def test_an_action_the_state_refuses_fails_alone_and_is_listed(world: World) -> None:
    world.lane("web", slots=2)
    world.task("a", "web", "succeed")
    world.task("b", "web", "succeed")
    world.commit()
    Store.open(world.state).close()
    db = world.state / "state.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute(
        "CREATE TRIGGER refuse_b BEFORE INSERT ON runs WHEN NEW.task = 'b'"
        " BEGIN SELECT RAISE(ABORT, 'refused by a trigger'); END"
    )
    conn.close()

    proc = world.cli("apply", "--yes")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Apply complete! 1 applied, 1 failed." in proc.stdout
    assert (
        f"error: start b: recording it in the state database {db} failed (refused by a trigger)"
        in proc.stderr
    ), proc.stderr
    assert "Traceback" not in proc.stderr and "bug" not in proc.stderr
    # the other task's start went through; the refused one left an error event and nothing else
    assert [r["attempt"] for r in world.describe("a")["runs"]] == [1]
    b = world.describe("b")
    assert b["runs"] == []
    assert any(e["kind"] == "error" and "refused by a trigger" in e["message"] for e in b["events"])
    assert set(world.live_agents()) <= {"a"}

    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("DROP TRIGGER refuse_b")
    conn.close()
    world.converge()
    status = world.status()
    assert {n: (t["phase"], t["attempt"]) for n, t in status.items()} == {
        "a": ("pr-open", 1),
        "b": ("pr-open", 1),
    }
    assert sorted(p["head"] for p in world.prs("web-repo")) == ["agent/a", "agent/b"]


def test_a_start_that_fails_for_good_is_charged_and_ends_failed_with_the_reason(
    world: World,
) -> None:
    world.lane("web")
    world.task("a", "web", "succeed", maxAttempts=2)
    world.commit()
    in_the_way = world.home / "worktrees" / "web" / "web-repo" / "a"
    in_the_way.mkdir(parents=True)
    (in_the_way / "notes.txt").write_text("someone's files\n")
    proc = world.cli("apply", "--yes")
    assert proc.returncode == 1 and "start a:" in proc.stderr, proc.stderr

    def failed() -> dict[str, Any] | None:  # through the backoff
        status: dict[str, Any] = world.status()["a"]
        if status["phase"] == "failed":
            return status
        again = world.cli("apply", "--yes")
        assert again.returncode in (0, 1), again.stderr
        return None

    status = wait_for(failed, "a to fail", timeout=60, every=0.1)
    assert "all 2 attempts failed" in status["reason"] and "could not start" in status["reason"]
    runs = world.describe("a")["runs"]
    assert [(r["attempt"], r["outcome"]) for r in runs] == [(1, "crashed"), (2, "crashed")]


def test_a_start_the_lane_could_not_carry_out_for_now_costs_no_attempt(world: World) -> None:
    world.lane("web")
    world.task("a", "web", "succeed", maxAttempts=1)
    world.commit()
    runs = world.home / "worktrees" / "web" / ".runs"
    with tmpfs(runs) as disk:
        fill(disk)
        for _ in range(2):  # however often it is tried, it is never charged
            proc = world.cli("apply", "--yes")
            assert proc.returncode == 1, proc.stdout + proc.stderr
            assert "error: start a: start-run failed on the lane: No space left on device" in (
                proc.stderr
            ), proc.stderr
            assert str(runs / "a" / "1.1") in proc.stderr and " free on " in proc.stderr
        a = world.describe("a")
        assert a["runs"] == []
        deferred = [e for e in a["events"] if e["kind"] == "start-deferred"]
        assert len(deferred) == 2 and "costs no attempt" in deferred[0]["message"]
        assert world.status()["a"]["phase"] == "pending"
        (disk / "ballast").unlink()
        world.converge()
        status = world.status()["a"]
        assert (status["phase"], status["attempt"], status["iteration"]) == ("pr-open", 1, 1)
        assert [(r["attempt"], r["outcome"]) for r in world.describe("a")["runs"]] == [
            (1, "succeeded")
        ]


REJECT = "#!/bin/sh\necho 'pushes to agent/* are closed on this remote' >&2\nexit 1\n"


def test_an_action_refused_for_good_backs_off_instead_of_failing_every_pass(world: World) -> None:
    world.config = {"backoff": {"base": "1h", "max": "1h"}}
    world.lane("web")
    world.task("a", "web", "succeed")
    world.commit()
    hook = world.root / "remotes" / "web-repo.git" / "hooks" / "pre-receive"
    hook.write_text(REJECT)
    hook.chmod(0o755)

    reason = ""
    for _ in range(60):  # until the push behind open-pr was refused once
        world.cli("apply", "--yes")
        reason = world.status()["a"]["reason"]
        if reason.startswith("open-pr failed once"):
            break
        time.sleep(0.1)
    assert "(pre-receive hook declined)" in reason, reason
    assert "tried again in " in reason
    errors = [e for e in world.describe("a")["events"] if e["kind"] == "error"]
    again = world.cli("apply", "--yes")  # held: not tried, not failed again
    assert "open-pr" not in again.stdout, again.stdout
    assert [e for e in world.describe("a")["events"] if e["kind"] == "error"] == errors

    hook.unlink()  # the remote is fixed; a short backoff lets the next pass try again
    world.config = {"backoff": {"base": "200ms", "max": "1s"}}
    world.commit("shorter backoff")
    world.converge()
    assert world.status()["a"]["phase"] == "pr-open"
