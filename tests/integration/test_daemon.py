"""`reconciler run` as a service: triggers, coalescing, signals, the lock, the push hook.

The daemon runs as a real process (``python -m reconciler run --log-format json``) with a long
interval, so anything that happens quickly happened because of a trigger, not the timer.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.world import World
from tests.support.daemon_log import RunLog
from tests.support.disks import tmpfs
from tests.support.git import git
from tests.support.waiting import wait_for

INTERVAL = "120s"
LOG = ("--log-format", "json")


class Daemon(RunLog):
    """A running `reconciler run` of the world, with a JSON log."""

    def __init__(self, world: World, *args: str) -> None:
        argv = [sys.executable, "-m", "reconciler", "run", "--interval", INTERVAL, *LOG, *args]
        super().__init__(argv, world.env())


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for daemon in started:
        daemon.kill()


def start(world: World, daemons: list[Daemon], *args: str) -> Daemon:
    daemon = Daemon(world, *args)
    daemons.append(daemon)
    daemon.wait_for(daemon.passes, "the first pass", timeout=30)
    return daemon


def slow_world(world: World, steps: int = 400) -> None:
    world.lane("web", slots=3)
    world.lanes["web"]["env"] = {"SLOW_STEPS": str(steps)}
    world.task("slow", "web", "slow")


def test_a_commit_starts_its_agent_at_once_and_a_kill_is_seen_at_once(
    world: World, daemons: list[Daemon]
) -> None:
    slow_world(world)
    world.commit()
    daemon = start(world, daemons)
    first = daemon.wait_for(
        lambda: world.live_agents().get("slow", []), "the slow agent", timeout=10
    )

    def reasons_since(count: int) -> list[set[str]]:
        return [set(p.get("reasons", {})) for p in daemon.passes()[count:]]

    # A new task committed to the local control checkout: started by the commit's watch, in a
    # pass no timer woke (the 120 s interval never elapses in this test).
    world.task("quick", "web", "succeed")
    before = len(daemon.passes())
    world.commit("add quick")
    quick = world.home / "worktrees/web/.runs/quick/1.1"
    daemon.wait_for(quick.is_dir, "quick's run", timeout=60)
    daemon.wait_for(
        lambda: any(r & {"control", "manifest"} for r in reasons_since(before)),
        "the pass the commit woke",
        timeout=30,
    )
    assert not any("interval" in r for r in reasons_since(before)), reasons_since(before)
    # kill -9 of an agent: its supervisor's exit.json wakes the loop; the retry starts when
    # its backoff (the plan's requeue) ends, not at the interval.
    before = len(daemon.passes())
    os.kill(first[0], signal.SIGKILL)
    retry = world.home / "worktrees/web/.runs/slow/2.1"
    daemon.wait_for(retry.is_dir, "slow's retry", timeout=60)
    daemon.wait_for(
        lambda: any("run-exit" in r for r in reasons_since(before)), "a run-exit pass", timeout=5
    )
    assert not any("interval" in r for r in reasons_since(before)), reasons_since(before)
    assert daemon.stop() == 0


def test_a_burst_of_pokes_is_a_few_passes_and_cron_apply_meanwhile_exits_75(
    world: World, daemons: list[Daemon]
) -> None:
    world.lane("web")
    world.task("a", "web", "succeed")
    world.commit()
    daemon = start(world, daemons)
    daemon.wait_for(lambda: world.prs("web-repo"), "a's PR", timeout=20)
    before = len(daemon.passes())

    def poked() -> list[dict[str, Any]]:
        return [p for p in daemon.passes()[before:] if "poke" in p["reasons"]]

    by_cli = world.cli("poke")
    assert by_cli.returncode == 0 and f"pid {daemon.proc.pid}" in by_cli.stdout
    for _ in range(50):
        os.kill(daemon.proc.pid, signal.SIGHUP)
    daemon.wait_for(poked, "a pass the pokes woke", timeout=30)
    cron = world.cli("apply", "--yes")
    assert cron.returncode == 75, cron.stdout + cron.stderr
    assert "lock" in cron.stderr
    assert daemon.stop() == 0
    # Stopped, the daemon's log is complete: every pass the burst caused is in it.
    assert 1 <= len(poked()) <= 4, poked()
    assert not (world.state / "run.pid").exists()
    nobody = world.cli("poke")
    assert nobody.returncode == 1 and "--or-apply" in nobody.stderr


def test_sigterm_leaves_agents_running_and_a_restart_adopts_them(
    world: World, daemons: list[Daemon]
) -> None:
    slow_world(world, steps=40)
    world.commit()
    daemon = start(world, daemons)
    agents = daemon.wait_for(lambda: world.live_agents().get("slow"), "the slow agent", timeout=10)
    assert daemon.stop() == 0
    assert world.live_agents().get("slow") == agents  # the agent outlived the loop
    again = start(world, daemons)
    again.wait_for(lambda: world.prs("web-repo"), "the slow task's PR", timeout=30)
    assert [p["head"] for p in world.prs("web-repo")] == ["agent/slow"]
    # The PR came from the first run: a restart would have started 2.1 before it.
    assert not (world.home / "worktrees/web/.runs/slow/2.1").exists()  # adopted, not restarted
    assert again.stop() == 0


def test_a_broken_revision_keeps_the_last_good_one_and_prunes_nothing(
    world: World, daemons: list[Daemon]
) -> None:
    slow_world(world)
    world.commit()
    daemon = start(world, daemons)
    agents = daemon.wait_for(lambda: world.live_agents().get("slow"), "the slow agent", timeout=10)
    # The new revision drops the task and breaks a file (one commit, as one push would bring
    # both): nothing may be pruned because of it.
    del world.tasks["slow"]
    broken = world.control / "manifests" / "broken.yaml"
    broken.write_text("kind: Task\nmetadata: {name: [oops\n")
    world.commit("remove slow, and break a file")
    daemon.wait_for(
        lambda: any(r.get("event") == "manifest-error" for r in daemon.records),
        "the error",
        timeout=5,
    )
    daemon.wait_for(
        lambda: any("last good revision" in r.get("msg", "") for r in daemon.records),
        "the fallback",
        timeout=5,
    )
    assert world.live_agents().get("slow") == agents

    def errors() -> int:
        return sum(r.get("event") == "manifest-error" for r in daemon.records)

    logged = errors()
    daemon.poke()
    daemon.poke()
    assert errors() == logged  # the same errors are news once, not every pass
    # Read commands are not blind meanwhile: the last good revision's state, and the problem.
    with_problem = world.cli("status", "--json")
    assert with_problem.returncode == 3 and "broken.yaml" in with_problem.stderr
    shown = json.loads(with_problem.stdout)
    assert shown["revision"] != git(world.control, "rev-parse", "HEAD").strip()
    assert "slow" in {t["name"] for t in shown["tasks"]}  # its removal is not in effect either
    assert "reconciling the last good revision" in shown["controlProblem"]
    assert [e["path"] for e in shown["manifestErrors"]] == ["manifests/broken.yaml"]
    # Fixed: the fix is reconciled (the removal now takes effect).
    broken.unlink()
    git(world.control, "add", "-A")
    git(world.control, "commit", "-qm", "fixed")
    daemon.wait_for(lambda: not world.live_agents().get("slow"), "the removal", timeout=10)
    assert any(r.get("msg") == "the manifest errors are fixed" for r in daemon.records)
    assert errors() == logged + 1
    status = json.loads(world.cli("status", "--json").stdout)
    assert status["controlProblem"] is None
    assert daemon.stop() == 0


def test_a_push_to_the_bare_control_repo_pokes_run_or_applies_once_itself(
    world: World, daemons: list[Daemon], tmp_path: Path
) -> None:
    world.lane("web")
    world.task("a", "web", "succeed")
    world.commit()
    bare = tmp_path / "control.git"
    git(tmp_path, "clone", "-q", "--bare", str(world.control), str(bare))
    env = {"RECONCILER_CONTROL": str(bare)}
    installed = world.cli("hook", "install", **env)
    assert installed.returncode == 0, installed.stderr
    hook = bare / "hooks" / "post-receive"
    assert os.access(hook, os.X_OK) and "poke --or-apply" in hook.read_text()
    world.extra_env.update(env)
    daemon = start(world, daemons)
    daemon.wait_for(lambda: world.prs("web-repo"), "a's PR", timeout=20)
    # An operator pushes a new task.
    clone = tmp_path / "operator"
    git(tmp_path, "clone", "-q", str(bare), str(clone))
    spec = dict(world.tasks["a"], prompt="Do b.")
    (clone / "manifests" / "tasks" / "b.yaml").write_text(
        json.dumps({"apiVersion": "reconciler/v1", "kind": "Task", "metadata": {"name": "b"}})[:-1]
        + f', "spec": {json.dumps(spec)}}}\n'
    )
    git(clone, "add", "-A")
    git(clone, "commit", "-qm", "add b")
    git(clone, "push", "-q", "origin", "HEAD")
    # The hook pokes `run` (its latency is a bench figure: push → agent running ≤ 2 s); with
    # an interval of minutes, only the poke can start b this soon.
    daemon.wait_for((world.home / "worktrees/web/.runs/b/1.1").is_dir, "b's run", timeout=10)
    assert daemon.stop() == 0
    # With no `run` around, the hook runs one apply pass itself.
    (clone / "manifests" / "tasks" / "c.yaml").write_text(
        (clone / "manifests" / "tasks" / "b.yaml").read_text().replace('"b"', '"c"')
    )
    git(clone, "add", "-A")
    git(clone, "commit", "-qm", "add c")
    git(clone, "push", "-q", "origin", "HEAD")
    wait_for(
        (world.home / "worktrees/web/.runs/c/1.1").is_dir,
        "c's run, started by the hook's own apply",
        timeout=20,
        details=(world.state / "hook.log").read_text,
    )


def test_a_full_state_disk_fails_a_pass_and_the_next_one_goes_on(
    world: World, daemons: list[Daemon]
) -> None:
    world.lane("web")
    world.task("early", "web", "succeed")
    world.commit()
    with tmpfs(world.state, "size=2m,mode=700"):
        daemon = start(world, daemons)
        db = world.state / "state.db"
        conn = sqlite3.connect(db, isolation_level=None)
        conn.execute(  # recording the task `late` needs more room than the disk has
            "CREATE TRIGGER ballast AFTER INSERT ON tasks WHEN NEW.name = 'late' BEGIN"
            " INSERT INTO meta (key, value) VALUES ('ballast', zeroblob(8000000)); END"
        )
        world.task("late", "web", "succeed")
        world.commit("add late")

        def full() -> list[dict[str, Any]]:
            return [r for r in daemon.records if "no space left on the device" in r.get("msg", "")]

        failed = daemon.wait_for(full, "a pass failing on the full disk", timeout=20)[0]
        assert failed["level"] == "error" and f"{db} cannot be written" in failed["msg"], failed
        assert daemon.proc.poll() is None  # it goes on
        conn.execute("DROP TRIGGER ballast")
        conn.close()
        assert world.cli("poke").returncode == 0
        daemon.wait_for(
            (world.home / "worktrees/web/.runs/late/1.1").is_dir, "late's run", timeout=20
        )
        assert daemon.stop() == 0


def test_an_elapsed_backoff_retries_when_it_ends_not_at_the_interval(
    world: World, daemons: list[Daemon]
) -> None:
    world.lane("web")
    world.task("flaky", "web", "sigkill-first")  # dies on attempt 1, succeeds on attempt 2
    world.config = {"backoff": {"base": "4s", "max": "4s"}}  # 2 to 4 s: seen before it ends
    world.commit()
    daemon = start(world, daemons)
    # The crash is seen at once (exit.json); its backoff ends long before the 120 s interval:
    # only the plan's requeue can start attempt 2 this soon.
    daemon.wait_for((world.home / "worktrees/web/.runs/flaky/2.1").is_dir, "the retry", timeout=20)

    def due() -> list[dict[str, Any]]:
        return [r for r in daemon.records if r.get("event") == "requeue"]

    said = daemon.wait_for(due, "the requeue line", timeout=5)[0]
    assert said["level"] == "debug" and said["due"] == "backoff" and said["subject"] == "flaky"
    assert 0 < said["after"] < 120, said
    daemon.wait_for(
        lambda: any("requeue" in p["reasons"] for p in daemon.passes()),
        "the requeued pass",
        timeout=5,
    )
    daemon.wait_for(lambda: world.prs("web-repo"), "flaky's PR", timeout=20)
    assert daemon.stop() == 0


def test_pr_merge_pokes_run_so_the_task_is_done_at_once(
    world: World, daemons: list[Daemon]
) -> None:
    world.lane("web")
    world.task("m", "web", "succeed")
    world.commit()
    daemon = start(world, daemons)
    daemon.wait_for(lambda: world.prs("web-repo"), "m's PR", timeout=20)

    def recorded_done() -> bool:
        conn = sqlite3.connect(f"file:{world.state / 'state.db'}?mode=ro", uri=True)
        try:
            row = conn.execute("SELECT done FROM tasks WHERE name = 'm'").fetchone()
        finally:
            conn.close()
        return bool(row and row[0])

    daemon.wait_for(lambda: world.status()["m"]["phase"] == "pr-open", "m pr-open", timeout=20)
    merged = world.cli("pr", "merge", "m")
    assert merged.returncode == 0, merged.stderr
    assert f"Poked reconciler run (pid {daemon.proc.pid})" in merged.stdout, merged.stdout
    # with a 120 s interval, only the poke makes a pass this soon
    daemon.wait_for(recorded_done, "m recorded done", timeout=20)
    poked = daemon.wait_for(
        lambda: [p for p in daemon.passes() if "poke" in p["reasons"]], "the poked pass", timeout=10
    )
    assert "1 to complete" in poked[0]["msg"], poked
    assert daemon.stop() == 0
    after = world.cli("pr", "merge", "m")  # nothing open any more, and no `run` to poke
    assert after.returncode == 1 and "no open PR" in after.stderr


def test_a_slot_frees_when_a_supervisor_outlives_its_exit_json_not_at_the_interval(
    world: World, daemons: list[Daemon]
) -> None:
    """A supervisor writes exit.json, then exits. A pass that looks in between sees the run's
    end and a live supervisor (its slot still used), and no file event comes when it is gone:
    the plan looks again shortly (the `exiting` requeue), not at the 120 s interval."""
    slow_world(world)
    world.lanes["web"]["maxConcurrency"] = 1
    world.commit()
    daemon = start(world, daemons)
    [agent] = daemon.wait_for(lambda: world.live_agents().get("slow"), "the agent", timeout=10)
    world.task("next", "web", "succeed", priority=10)  # waits for the slot
    world.commit("add next")
    daemon.wait_for(lambda: "next" in world.status(), "next planned", timeout=30)
    run_dir = world.home / "worktrees/web/.runs/slow/1.1"
    supervisor = json.loads((run_dir / "pid.json").read_text())["pid"]
    # Held between its exit.json and its exit: stopped, the agent gone, the end recorded.
    os.kill(supervisor, signal.SIGSTOP)
    try:
        os.kill(agent, signal.SIGKILL)
        end: dict[str, Any] = {"exit_code": 0, "ended_at": time.time(), "checks": []}
        (run_dir / "exit.json.new").write_text(json.dumps(end))
        os.replace(run_dir / "exit.json.new", run_dir / "exit.json")

        def exiting() -> list[dict[str, Any]]:
            return [r for r in daemon.records if r.get("due") == "exiting"]

        daemon.wait_for(exiting, "the exiting requeue", timeout=10)
        assert exiting()[0]["subject"] == "slow/1.1"
        assert daemon.passes()[-1]["slots"] == {"web": "1/1"}  # held until it is gone
    finally:
        os.kill(supervisor, signal.SIGKILL)
    daemon.wait_for(
        (world.home / "worktrees/web/.runs/next/1.1").is_dir, "next in the freed slot", timeout=20
    )
    assert not any("interval" in p["reasons"] for p in daemon.passes())
    assert daemon.stop() == 0


def test_a_standby_run_starts_at_its_predecessors_end_and_a_pass_adopts_it(
    world: World, daemons: list[Daemon]
) -> None:
    """One slot: `second` waits on standby while `first` runs; `first`'s end starts it (its
    supervisor does, not a pass), and the pass that its exit.json wakes adopts and logs it."""
    world.lane("web", slots=1)
    release = world.root / "release"
    world.lanes["web"]["env"] = {"RELEASE_FILE": str(release)}
    world.task("first", "web", "until-released", priority=1)
    world.task("second", "web", "succeed")
    world.commit()
    daemon = start(world, daemons)
    queue = world.home / "worktrees/web/.runs/.standby"
    daemon.wait_for(lambda: queue.is_dir() and any(queue.iterdir()), "standby", timeout=30)
    release.touch()

    def adopted() -> list[dict[str, Any]]:
        said = "standby second: run 1.1 started as run first/1.1 ended"
        return [r for r in daemon.records if r.get("event") == "action" and r["msg"] == said]

    daemon.wait_for(adopted, "a pass to find the standby run started", timeout=30)
    pid = json.loads((world.home / "worktrees/web/.runs/second/1.1/pid.json").read_text())
    assert pid["claimed_from"] == "first/1.1"
    starts = [r for r in daemon.records if r.get("event") == "action"]
    assert not any(r["msg"].startswith("start second") for r in starts)  # no pass started it
    assert not any("interval" in p["reasons"] for p in daemon.passes())
    assert daemon.stop() == 0
