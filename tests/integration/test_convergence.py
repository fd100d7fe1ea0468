"""End to end: real git, real agent processes, the real CLI. Every task reaches its phase."""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from reconciler.engine import Context, Engine
from reconciler.state import Store
from tests.integration.world import World
from tests.support.git import git
from tests.support.waiting import wait_for


def test_every_kind_of_agent_reaches_its_phase_and_slots_hold(world: World) -> None:
    world.lane("web", slots=2)
    world.lane("ops", slots=1)
    world.task("ok", "web", "succeed")
    world.task(
        "feedback", "web", "needs-feedback", success={"checks": [["test", "-f", "fixed.txt"]]}
    )
    world.task("crashy", "web", "sigkill-first")
    world.task("nocommit", "web", "no-commit", maxIterations=2, maxAttempts=1)
    world.task("hangs", "ops", "hang", maxAttempts=1)
    world.task("broken", "ops", "exit-3", maxIterations=2, maxAttempts=2)
    world.task("later", "ops", "succeed", dependsOn=["ok"])
    world.commit()

    # Sample the process table while converging: never more live runs in a lane than slots.
    worst: dict[str, int] = {}
    stop = threading.Event()
    lane_of = {name: spec["lane"] for name, spec in world.tasks.items()}

    def sample() -> None:
        while not stop.is_set():
            per_lane: dict[str, int] = {}
            for task in world.live_agents():
                lane = lane_of.get(task, "?")
                per_lane[lane] = per_lane.get(lane, 0) + 1
            for lane, n in per_lane.items():
                worst[lane] = max(worst.get(lane, 0), n)
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        world.converge(timeout=90)
    finally:
        stop.set()
        sampler.join()

    status = world.status()
    phases = {name: t["phase"] for name, t in status.items()}
    assert phases == {
        "ok": "pr-open",
        "feedback": "pr-open",
        "crashy": "pr-open",
        "nocommit": "failed",
        "hangs": "failed",
        "broken": "failed",
        "later": "blocked",
    }
    assert status["feedback"]["iteration"] == 2
    assert status["crashy"]["attempt"] == 2
    assert "no commits ahead" in status["nocommit"]["reason"]
    assert "stalled" in status["hangs"]["reason"]
    assert "agent exited with status 3" in status["broken"]["reason"]
    assert status["later"]["reason"] == "waiting for ok to be done"
    assert worst.get("web", 0) <= 2 and worst.get("ops", 0) <= 1
    assert worst.get("web", 0) >= 1  # the sampler did see runs

    # Converged: a second plan is empty, and --detailed-exitcode says so.
    assert world.plan_json()["actions"] == []
    assert world.cli("plan", "--detailed-exitcode").returncode == 0

    # Exactly one PR per successful task, each with the hidden marker.
    prs = world.prs("web-repo")
    assert sorted(p["head"] for p in prs) == ["agent/crashy", "agent/feedback", "agent/ok"]
    assert all(f"<!-- reconciler:task={p['head'][6:]} -->" in p["body"] for p in prs)

    # Merging releases the dependency; the dependent task then converges too.
    merged = world.cli("pr", "merge", "ok")
    assert merged.returncode == 0, merged.stderr
    world.converge(timeout=60)
    status = world.status()
    assert status["ok"]["phase"] == "done"
    assert status["later"]["phase"] == "pr-open"
    assert not any(p.endswith("/ok") for p in world.worktrees("web-repo"))
    assert world.live_agents() == {}


def test_feedback_reaches_the_agent_with_the_failing_check(world: World) -> None:
    world.lane("web")
    world.task(
        "feedback",
        "web",
        "needs-feedback",
        success={
            "checks": [["sh", "-c", "test -f fixed.txt || { echo 'missing fixed.txt'; exit 1; }"]]
        },
    )
    world.commit()
    world.converge()
    run_dir = world.home / "worktrees" / "web" / ".runs" / "feedback" / "1.2"
    prompt = (run_dir / "prompt.md").read_text()
    assert prompt.startswith("Please do feedback.\n")
    assert "check `sh -c test -f fixed.txt" in prompt
    assert "missing fixed.txt" in prompt  # the tail of the check's output
    described = world.cli("describe", "feedback", "--json")
    import json

    runs = json.loads(described.stdout)["runs"]
    assert [(r["iteration"], r["outcome"]) for r in runs] == [(1, "failed"), (2, "succeeded")]


def test_prompt_reaches_the_agent_byte_exact(world: World) -> None:
    prompt = (
        "Quote ' and \" and `ticks` and $HOME and $(rm -rf /) \\n\n  indented\n\tтекст ✓ 日本\n"
    )
    world.lane("web")
    (world.control / "manifests" / "prompts").mkdir(parents=True)
    (world.control / "manifests" / "prompts" / "p.md").write_bytes(prompt.encode())
    world.task("echo", "web", "echo-prompt", promptFile="manifests/prompts/p.md")
    del world.tasks["echo"]["prompt"]
    world.commit()
    world.converge()
    received = (world.home / "worktrees/web/.runs/echo/1.1/received.bin").read_bytes()
    assert received == prompt.encode()


def test_restarting_mid_run_adopts_instead_of_duplicating(world: World) -> None:
    world.lane("web")
    world.task("slow", "web", "slow")
    # 10 s: two CLI calls fit even on a busy machine (agents get the lane's env, not ours)
    world.lanes["web"]["env"] = {"SLOW_STEPS": "40"}
    world.commit()
    assert world.cli("apply", "--yes").returncode == 0
    first = world.live_agents()
    assert list(first) == ["slow"]
    # Another reconciler process (a restart) while the agent runs: nothing new is started.
    again = world.cli("apply", "--yes")
    assert again.returncode == 0
    assert "No changes." in again.stdout
    assert world.status()["slow"]["phase"] == "running"
    assert world.live_agents() == first
    world.converge()
    assert [p["head"] for p in world.prs("web-repo")] == ["agent/slow"]


def test_deleting_the_state_directory_duplicates_nothing(world: World) -> None:
    import shutil

    world.lane("web", slots=3)
    world.task("a", "web", "succeed")
    world.task("b", "web", "needs-feedback", success={"checks": [["test", "-f", "fixed.txt"]]})
    world.commit()
    world.converge()
    shutil.rmtree(world.state)
    plan = world.plan_json()
    assert {a["action"] for a in plan["actions"]} <= {"adopt-pr"}
    world.converge()
    assert sorted(p["head"] for p in world.prs("web-repo")) == ["agent/a", "agent/b"]
    assert world.status()["a"]["phase"] == "pr-open"
    # no new runs were started: the run directories are still those of the first life
    runs = sorted(p.name for p in (world.home / "worktrees/web/.runs/b").iterdir())
    assert runs == ["1.1", "1.2"]


def test_removed_manifest_stops_closes_cleans_and_keeps_the_branch(world: World) -> None:
    world.lane("web")
    world.task("keep", "web", "succeed")
    world.task("drop", "web", "succeed")
    world.commit()
    world.converge()
    del world.tasks["drop"]
    revision = world.commit("remove drop")
    world.converge()
    pr = next(p for p in world.prs("web-repo") if p["head"] == "agent/drop")
    assert pr["state"] == "closed"
    assert revision in pr["comments"][-1]["body"]
    assert not any(p.endswith("/drop") for p in world.worktrees("web-repo"))
    branches = (Path(world.home / "src/web-repo")).joinpath(".git/refs/heads/agent")
    assert (branches / "drop").exists() or "agent/drop" in (
        world.home / "src/web-repo/.git/packed-refs"
    ).read_text()
    assert "drop" not in world.status()


def test_pause_stops_the_run_and_keeps_the_workspace(world: World) -> None:
    world.lane("web")
    world.task("slow", "web", "slow")
    world.lanes["web"]["env"] = {"SLOW_STEPS": "40"}
    world.commit()
    assert world.cli("apply", "--yes").returncode == 0
    assert "slow" in world.live_agents()
    world.tasks["slow"]["paused"] = True
    world.commit("pause")
    applied = world.cli("apply", "--yes")
    assert "- stop" in applied.stdout
    assert world.live_agents() == {}
    assert world.status()["slow"]["phase"] == "paused"
    assert any(p.endswith("/slow") for p in world.worktrees("web-repo"))
    # resume: a new attempt in the same workspace, then convergence
    world.tasks["slow"]["paused"] = False
    world.lanes["web"]["env"] = {"SLOW_STEPS": "2"}
    world.commit("resume")
    world.converge()
    assert world.status()["slow"]["phase"] == "pr-open"


def test_spec_change_restarts_convergence_and_keeps_the_pr(world: World) -> None:
    world.lane("web")
    world.task("t", "web", "succeed")
    world.commit()
    world.converge()
    world.tasks["t"]["prompt"] = "Please do t, differently."
    world.commit("change t")
    plan = world.plan_json()
    assert [(a["action"], a["attempt"]) for a in plan["actions"]] == [("start", 2)]
    world.converge()
    prs = world.prs("web-repo")
    assert len(prs) == 1 and prs[0]["state"] == "open"
    sha = world.git_head("web-repo", "agent/t")
    assert prs[0]["head_sha"] == sha


def test_earlier_generations_runs_are_settled_into_history_and_still_counted(
    world: World,
) -> None:
    world.lane("web")
    world.task("t", "web", "succeed")
    world.commit()
    world.converge()
    for n in (2, 3):
        world.tasks["t"]["prompt"] = f"Please do t, take {n}."
        world.commit(f"change t ({n})")
        world.converge()
    with Store.open_readonly(world.state) as store:
        assert [(r.attempt, r.settled) for r in store.runs("t")] == [
            (1, True),
            (2, True),
            (3, False),
        ]
        assert [(r.attempt, r.iteration) for r in store.open_runs()] == [(3, 1)]
        (history,) = store.histories().rows()
        assert (history.task, history.runs, history.attempt) == ("t", 2, 2)
        cost, tokens = store.totals("t")
    status = world.status()["t"]
    assert status["phase"] == "pr-open" and status["attempt"] == 3
    assert status["costUsd"] == round(cost, 6) and status["tokens"] == tokens
    runs = json.loads(world.cli("describe", "t", "--json").stdout)["runs"]
    assert [r["attempt"] for r in runs] == [1, 2, 3]  # the settled runs' records stay
    world.tasks["t"]["prompt"] = "Please do t, take 4."
    world.commit("change t (4)")
    assert [(a["action"], a["attempt"]) for a in world.plan_json()["actions"]] == [("start", 4)]


def test_settled_runs_directories_go_after_the_retention_period(world: World) -> None:
    world.lane("web")
    world.task("t", "web", "succeed")
    world.commit()
    world.converge()
    world.tasks["t"]["prompt"] = "Please do t, again."
    world.commit("change t")
    world.converge()
    with Store.open_readonly(world.state) as store:
        first, second = store.runs("t")
    assert first.settled and Path(first.run_dir).is_dir()  # kept for 30 days by default
    world.config["runRetention"] = "1s"
    world.commit("keep runs for a second")

    def pruned() -> bool:
        world.cli("apply", "--yes")
        return not Path(first.run_dir).exists()

    wait_for(pruned, "the settled run's directory to be removed")
    assert Path(second.run_dir).is_dir()  # the current generation's run stays
    with Store.open_readonly(world.state) as store:
        assert [(r.attempt, r.settled, r.run_dir) for r in store.runs("t")] == [
            (1, True, ""),
            (2, False, second.run_dir),
        ]
        assert [e.kind for e in store.events("t")].count("pruned") == 1
    logs = world.cli("logs", "t", "--run", "1.1")
    assert logs.returncode == 1 and "removed after the retention period" in logs.stderr
    runs = json.loads(world.cli("describe", "t", "--json").stdout)["runs"]
    assert [r["attempt"] for r in runs] == [1, 2]


def test_a_done_task_s_runs_are_settled_and_its_generation_s_directories_stay(
    world: World,
) -> None:
    world.lane("web", forge=False)  # success with no forge: done
    world.task("t", "web", "succeed")
    world.config["runRetention"] = "1s"
    world.commit()
    world.converge()
    assert world.status()["t"]["phase"] == "done"
    world.converge()  # the pass after `complete` settles what the task is done with
    with Store.open_readonly(world.state) as store:
        (only,) = store.runs("t")
        assert only.settled and store.open_runs() == []
        (history,) = store.histories().rows()
        assert (history.task, history.runs, history.attempt, history.iteration) == ("t", 1, 1, 1)
        cost, tokens = store.totals("t")
    status = world.status()["t"]
    assert (status["phase"], status["attempt"], status["iteration"]) == ("done", 1, 1)
    assert status["costUsd"] == round(cost, 6) and status["tokens"] == tokens
    # past the retention period, a run of the generation the task is done for still stays
    wait_for(lambda: time.time() > only.started_at + 1.5, "the retention period to pass")
    assert world.plan_json()["actions"] == []
    world.converge()
    assert Path(only.run_dir).is_dir()
    assert world.cli("logs", "t").returncode == 0
    runs = json.loads(world.cli("describe", "t", "--json").stdout)["runs"]
    assert [(r["attempt"], r["outcome"]) for r in runs] == [(1, "succeeded")]


def test_a_pr_closed_by_hand_fails_the_task_until_its_manifest_changes(world: World) -> None:
    world.lane("web")
    world.task("t", "web", "succeed")
    world.commit()
    world.converge()
    closed = world.cli("pr", "close", "t", "--comment", "Not like this.")
    assert closed.returncode == 0, closed.stderr
    world.converge()
    status = world.status()["t"]
    assert status["phase"] == "failed"
    assert "closed without merging" in status["reason"]
    assert len(world.prs("web-repo")) == 1  # not reopened, no second PR
    world.tasks["t"]["prompt"] = "Please do t, the way the reviewer asked."
    world.commit("retry t")
    world.converge()
    prs = world.prs("web-repo")
    assert [(p["number"], p["state"]) for p in prs] == [(1, "closed"), (2, "open")]
    assert world.status()["t"]["phase"] == "pr-open"


def test_without_a_forge_success_pushes_the_branch_and_completes(world: World) -> None:
    world.lane("web", forge=False)
    world.task("t", "web", "succeed")
    world.commit()
    world.converge()
    assert world.status()["t"]["phase"] == "done"
    local = world.home / "src/web-repo"
    from tests.support.git import git

    assert world.git_head("web-repo", "agent/t") == git(local, "rev-parse", "agent/t")


def test_lane_git_ignores_the_callers_git_location(world: World) -> None:
    """A post-receive hook runs with GIT_DIR set: lane-side git must not follow it."""
    world.lane("web")
    world.task("t", "web", "succeed")
    world.commit()
    world.extra_env["GIT_DIR"] = str(world.control / ".git")
    world.converge()
    assert world.status()["t"]["phase"] == "pr-open"


def test_backoff_says_when_the_next_attempt_is_and_the_next_pass_is_due_then(
    world: World,
) -> None:
    world.config = {"backoff": {"base": "30s", "max": "1m"}}
    world.lane("web")
    world.task("crashy", "web", "sigkill-first")
    world.commit()
    began = time.time()
    assert world.cli("apply", "--yes").returncode == 0

    def in_backoff() -> bool:
        if world.status()["crashy"]["phase"] == "backoff":
            return True
        assert world.cli("apply", "--yes").returncode == 0
        return False

    wait_for(in_backoff, "crashy's backoff", timeout=20, every=0.1)
    assert world.cli("apply", "--yes").returncode == 0  # the pass that records the crash
    status = world.status()["crashy"]
    assert status["phase"] == "backoff"
    next_at = status["nextAttemptAt"]
    assert next_at is not None
    # 15 to 30 s (the base, jittered) after the pass that saw the crash, wherever it fell
    assert began + 15 <= next_at <= time.time() + 30
    # the next pass is due when the backoff ends: `run` wakes then, and the JSON says so
    due = json.loads(world.cli("status", "--json").stdout)["requeue"]
    assert (due["reason"], due["subject"], due["at"]) == ("backoff", "crashy", next_at)
    assert 0 < due["after"] <= 30
    assert world.plan_json()["requeue"]["at"] == next_at


def test_a_lane_with_a_warm_pool_converges_and_keeps_the_pool_full(world: World) -> None:
    world.lane("web", slots=3)
    world.lanes["web"]["repos"][0]["pool"] = 2
    world.lanes["web"]["repos"][0]["hooks"] = {
        "afterCreate": [sys.executable, "-c", "open('.deps', 'w').write('ok')"]
    }
    for name in ("p1", "p2", "p3"):
        world.task(name, "web", "succeed")
    world.commit()
    world.converge()
    assert sorted(p["head"] for p in world.prs("web-repo")) == ["agent/p1", "agent/p2", "agent/p3"]
    pool_dir = world.home / "worktrees" / "web" / ".pool" / "web-repo" / "main"
    assert len(list(pool_dir.iterdir())) == 2  # refilled after the starts used it
    for entry in pool_dir.iterdir():
        assert (entry / ".deps").read_text() == "ok"  # afterCreate ran when it was made
    for name in ("p1", "p2", "p3"):
        assert (world.home / "worktrees/web/web-repo" / name / ".deps").is_file()
    listed = git(world.home / "src" / "web-repo", "worktree", "list", "--porcelain")
    assert listed.count("detached") == 2  # the idle ones; the tasks' are on their branches


class SkewedTransport:
    """A lane on a host whose clock is an hour behind: every time it reports is off."""

    def __init__(self, skew: float) -> None:
        from reconciler.lanes import InProcessTransport

        self.inner = InProcessTransport()
        self.skew = skew

    def exchange(self, batch: Any) -> Any:
        from reconciler.protocol import BatchResult

        result = self.inner.exchange(batch)
        responses = []
        for response in result.responses:
            data = response.result
            if response.ok and data and "runs" in data and "now" in data:
                data = json.loads(json.dumps(data))
                data["now"] += self.skew
                for run in data["runs"]:
                    run["started_at"] += self.skew
                    if run.get("last_output_at") is not None:
                        run["last_output_at"] += self.skew
                    if run.get("exit"):
                        run["exit"]["ended_at"] += self.skew
                responses.append(response.model_copy(update={"result": data}))
            else:
                responses.append(response)
        return BatchResult(responses=responses)


def test_a_lane_whose_clock_is_off_is_judged_on_the_reconcilers_clock(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    import reconciler.lanes as lanes

    world.lane("web")
    world.lanes["web"]["env"] = {"SLOW_STEPS": "40"}
    world.task("slow", "web", "slow")
    world.commit()
    assert world.cli("apply", "--yes").returncode == 0
    assert "slow" in world.live_agents()
    monkeypatch.setattr(lanes, "transport_for", lambda _n, _s, _p=None: SkewedTransport(-3600.0))
    engine = Engine(Context(control=str(world.control), state_dir=world.state))
    desired = engine.load()
    with engine.reading() as store:
        plan, _ = engine.observe_and_plan(desired, store)
    # an hour-old clock would make the busy agent look silent for an hour: stalled
    assert [a.kind.value for a in plan.actions] == [], plan.actions
    assert {t.name: t.phase.value for t in plan.tasks}["slow"] == "running"


def claude_script_task(world: World, task: str, script_text: str, **spec: Any) -> None:
    """A task on lane web whose agent is a claude-kind Agent running ``script_text``."""
    world.lane("web")
    world.lanes["web"]["env"] = {"ANTHROPIC_API_KEY": "not-a-real-key"}
    script = world.root / "agents" / f"{task}.py"
    script.write_text(script_text)
    # The lane runs as root, where Claude refuses to bypass permissions: pre-flight blocks a
    # claude Agent that chooses no permissions there (the script ignores its arguments).
    agent_spec = {"args": ["--permission-mode", "acceptEdits"], **spec.pop("agent_spec", {})}
    world.task(task, "web", "succeed", **spec)
    world.tasks[task]["agent"] = f"{task}-agent"
    world.commit()
    agent = {
        "apiVersion": "reconciler/v1",
        "kind": "Agent",
        "metadata": {"name": f"{task}-agent"},
        "spec": {"kind": "claude", "command": [sys.executable, str(script)], **agent_spec},
    }
    (world.control / "manifests" / f"{task}-agent.yaml").write_text(json.dumps(agent) + "\n")
    git(world.control, "add", "-A")
    git(world.control, "commit", "-qm", f"a claude agent for {task}")


BEATING = """
import json, sys, time
sys.stdin.read()
print(json.dumps({"type": "system", "subtype": "init", "session_id": "s-1", "model": "m"}))
print(json.dumps({"type": "assistant", "message": {"content": [{"type": "text", "text": "hi"}]}}))
sys.stdout.flush()
for _ in range(600):  # heartbeats: output keeps growing, but no event of the agent's own
    print("...", flush=True)
    time.sleep(0.1)
"""


def test_an_agent_that_only_prints_heartbeats_is_marked_stalled(world: World) -> None:
    claude_script_task(world, "beat", BEATING, maxAttempts=1, agent_spec={"stallTimeout": "2s"})
    assert world.cli("apply", "--yes").returncode == 0

    def running_with_its_event() -> bool:
        status = world.status()["beat"]
        return status["phase"] == "running" and "last: assistant: hi" in (status["reason"] or "")

    wait_for(running_with_its_event, "beat running, its first event in its status", timeout=30)

    def failed() -> dict[str, Any] | None:
        world.cli("apply", "--yes")
        status: dict[str, Any] = world.status()["beat"]
        return status if status["phase"] == "failed" else None

    status = wait_for(failed, "beat to fail", timeout=30, every=0.5)
    assert "no agent event" in status["reason"], status
    output = (world.home / "worktrees/web/.runs/beat/1.1/output.log").read_text()
    assert output.count("...") > 20  # its output did grow all along


SPENDING = """
import json, os, sys, time
sys.stdin.read()
print(json.dumps({"type": "system", "subtype": "init", "session_id": "s-1"}), flush=True)
for n in range(300):  # each message: 1000 tokens in, 1000 out, on claude-sonnet-4-5 ($0.018)
    message = {
        "id": f"msg_{n}",
        "model": "claude-sonnet-4-5-20250929",
        "content": [{"type": "text", "text": f"step {n}"}],
        "usage": {"input_tokens": 1000, "output_tokens": 1000},
    }
    print(json.dumps({"type": "assistant", "message": message}), flush=True)
    while not os.path.exists(RELEASE):  # one message's spend, until the test has seen it
        time.sleep(0.05)
    time.sleep(0.6)
"""


def test_an_agent_whose_spend_crosses_the_budget_mid_run_is_stopped(world: World) -> None:
    release = world.root / "release-spend"  # the agent spends once, then waits for it
    script = SPENDING.replace("RELEASE", repr(str(release)))
    claude_script_task(world, "spend", script, maxAttempts=3, budget={"maxCostUsd": 0.1})
    assert world.cli("apply", "--yes").returncode == 0

    def spending() -> dict[str, Any] | None:
        world.cli("apply", "--yes")
        status: dict[str, Any] = world.status()["spend"]
        return status if "so far" in (status["reason"] or "") else None

    status = wait_for(spending, "status to show the spend so far", timeout=30, every=0.3)
    assert status["phase"] == "running", status  # status shows its spend while it runs
    release.touch()

    def failed() -> dict[str, Any] | None:
        world.cli("apply", "--yes")
        status: dict[str, Any] = world.status()["spend"]
        return status if status["phase"] == "failed" else None

    status = wait_for(failed, "spend to fail", timeout=30, every=0.3)
    assert "budget exhausted ($0.1" in status["reason"], status
    assert world.cli("apply", "--yes").returncode == 0  # if status saw it first: apply stops it
    events = json.loads(world.cli("describe", "spend", "--json").stdout)["events"]
    [stopped] = [e["message"] for e in events if e["kind"] == "stopped"]
    assert re.fullmatch(
        r"run 1\.1 stopped: budget exhausted \(\$0\.1\d of \$0\.10\) during the run", stopped
    ), stopped
    wait_for(
        lambda: "spend" not in world.live_agents(),
        "the stopped agent to be gone",
        details=lambda: world.cli("describe", "spend").stdout,
    )
    output = (world.home / "worktrees/web/.runs/spend/1.1/output.log").read_text()
    assert '"type": "result"' not in output  # stopped mid-stream, not ended by itself
    # The stopped run's spend is kept (priced from its tokens): no retry, no second run.
    for _ in range(3):
        assert world.cli("apply", "--yes").returncode == 0
    status = world.status()["spend"]
    assert status["phase"] == "failed" and "budget exhausted" in status["reason"], status
    described = json.loads(world.cli("describe", "spend", "--json").stdout)
    [run] = described["runs"]
    assert run["costUsd"] >= 0.1 and run["tokens"] >= 10_000, run
    assert run["turns"] >= 6 and run["toolCalls"] == 0, run  # one turn per message, no tools
    from reconciler.state import Store

    with Store.open_readonly(world.state) as store:
        [recorded] = store.runs("spend")
    # recorded while it ran, input and output apart: each message was 1000 in, 1000 out
    assert recorded.input_tokens == recorded.output_tokens == run["tokens"] // 2, recorded
