"""Table tests of the pure planner: (desired, observed, now) → actions and phases."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from reconciler.manifests.models import (
    AgentSpec,
    ConfigSpec,
    Desired,
    LaneSpec,
    TaskSpec,
    make_task,
)
from reconciler.plan import (
    Action,
    ActionKind,
    Completion,
    FailedAction,
    FinishRun,
    LaneView,
    NewRun,
    Observed,
    Phase,
    Plan,
    PrOfRun,
    PrRef,
    RepoView,
    RunKey,
    RunView,
    TaskRecord,
    Why,
    backoff_delay,
    plan,
)
from reconciler.plan.run_steps import EXITING_POLL
from reconciler.protocol import AgentResult, CheckResult, ExitInfo, PreflightCheck, PullRequest

NOW = 1_000_000.0
A = ActionKind


def lane(name: str = "web", slots: int = 2, forge: bool = True) -> LaneSpec:
    return LaneSpec.model_validate(
        {
            "maxConcurrency": slots,
            "repos": [
                {
                    "name": "app",
                    "checkout": "~/app",
                    **({"forge": {"kind": "local"}} if forge else {}),
                }
            ],
        }
    )


def task_spec(**kw: object) -> TaskSpec:
    data: dict[str, object] = {"lane": "web", "repo": "app", "agent": "bot", "prompt": "do it"}
    data.update(kw)
    return TaskSpec.model_validate(data)


def desired(
    *tasks: tuple[str, TaskSpec],
    lanes: dict[str, LaneSpec] | None = None,
    config: ConfigSpec | None = None,
) -> Desired:
    return Desired(
        revision="rev1",
        config=config or ConfigSpec(),
        lanes=lanes or {"web": lane()},
        agents={
            "bot": AgentSpec.model_validate(
                {"kind": "command", "command": ["bot"], "stallTimeout": "5m", "timeout": "1h"}
            )
        },
        tasks={name: make_task(name, spec) for name, spec in tasks},
    )


def gen(d: Desired, name: str) -> str:
    return d.tasks[name].generation


def run(
    d: Desired | None, name: str, attempt: int = 1, iteration: int = 1, **kw: object
) -> RunView:
    base: dict[str, object] = {
        "task": name,
        "lane": "web",
        "repo": "app",
        "attempt": attempt,
        "iteration": iteration,
        "generation": gen(d, name) if d else "old",
        "started_at": NOW - 100,
        "last_output_at": NOW - 10,
    }
    base.update(kw)
    return RunView(**base)  # type: ignore[arg-type]


def exited(
    code: int = 0,
    checks: list[CheckResult] | None = None,
    signal: int | None = None,
    at: float = NOW - 5,
) -> ExitInfo:
    return ExitInfo(
        exit_code=None if signal else code, signal=signal, ended_at=at, checks=checks or []
    )


def ok_result(text: str = "all done") -> AgentResult:
    return AgentResult(
        ok=True,
        subtype="success",
        session_id="s-1",
        cost_usd=0.5,
        input_tokens=10,
        output_tokens=5,
        final_text=text,
    )


def pr(
    number: int = 1, state: str = "open", task: str = "t", updated: float = NOW - 1
) -> PullRequest:
    return PullRequest(
        number=number,
        url=f"file:///x#pull/{number}",
        state=state,
        head=f"agent/{task}",
        base="main",
        title="t",
        task=task,
        updated_at=updated,
    )


def observed(
    runs: dict[str, list[RunView]] | None = None,
    records: dict[str, TaskRecord] | None = None,
    repo: RepoView | None = None,
    lanes: dict[str, LaneView] | None = None,
    preflight: tuple[PreflightCheck, ...] = (),
) -> Observed:
    return Observed(
        revision="rev1",
        serial=7,
        lanes=lanes
        or {
            "web": LaneView(
                "web", reachable=True, repos={"app": repo or RepoView(prs={})}, preflight=preflight
            )
        },
        records=records or {},
        runs={k: tuple(v) for k, v in (runs or {}).items()},
    )


def kinds(p: Plan) -> list[tuple[str, str]]:
    return [(a.kind.value, a.task) for a in p.actions]


def phase(p: Plan, name: str) -> Phase:
    return next(t.phase for t in p.tasks if t.name == name)


def test_new_task_starts_with_attempt_one() -> None:
    d = desired(("t", task_spec()))
    p = plan(d, observed(), NOW)
    assert kinds(p) == [("start", "t")]
    assert p.actions[0].attempt == 1 and p.actions[0].iteration == 1
    assert p.actions[0].generation == gen(d, "t")
    assert phase(p, "t") is Phase.PENDING
    assert p.revision == "rev1" and p.serial == 7


def test_plan_is_deterministic_and_empty_after_convergence() -> None:
    d = desired(("t", task_spec()))
    r = run(d, "t", exit=exited(0), result=ok_result(), commits_ahead=1, outcome="succeeded")
    o = observed(
        runs={"t": [r]},
        records={"t": TaskRecord("t", "web", "app", NOW - 500, pr_number=1)},
        repo=RepoView(
            prs={"agent/t": pr()}, branches={"agent/t": "a"}, remote_branches={"agent/t": "a"}
        ),
    )
    p1, p2 = plan(d, o, NOW), plan(d, o, NOW)
    assert p1 == p2
    assert p1.empty
    assert phase(p1, "t") is Phase.PR_OPEN


def test_slots_per_lane_filled_by_priority_then_age_then_name() -> None:
    d = desired(
        ("a", task_spec()),
        ("b", task_spec(priority=5)),
        ("c", task_spec()),
        ("d", task_spec()),
    )
    records = {
        "a": TaskRecord("a", "web", "app", NOW - 10),
        "c": TaskRecord("c", "web", "app", NOW - 50),
        "d": TaskRecord("d", "web", "app", NOW - 50),
    }
    p = plan(d, observed(records=records), NOW)
    # the two slots go in grant order; the lane is full then, and its next candidates, one per
    # run there, are prepared on standby in the same order (their queue places sort so)
    assert kinds(p) == [("start", "b"), ("start", "c"), ("standby", "d"), ("standby", "a")]
    assert phase(p, "a") is Phase.QUEUED and phase(p, "d") is Phase.QUEUED
    assert "2/2" in next(t.reason for t in p.tasks if t.name == "a")
    orders = [a.want(NewRun).order for a in p.actions if a.kind is A.STANDBY]
    assert orders == sorted(orders) and len(set(orders)) == 2


def test_global_cap_across_lanes() -> None:
    lanes = {"web": lane("web", 3), "docs": lane("docs", 3)}
    d = desired(
        ("a", task_spec()),
        ("b", task_spec(lane="docs")),
        ("c", task_spec()),
        lanes=lanes,
        config=ConfigSpec(max_concurrency=2),
    )
    views = {n: LaneView(n, True, repos={"app": RepoView(prs={})}) for n in lanes}
    p = plan(d, observed(lanes=views), NOW)
    # c waits for the cap; a run of its own lane ending frees a slot of both: it is on standby
    assert kinds(p) == [("start", "a"), ("start", "b"), ("standby", "c")]
    assert phase(p, "c") is Phase.QUEUED
    assert "2/2 in use across lanes" in next(t.reason for t in p.tasks if t.name == "c")


def test_live_runs_hold_slots() -> None:
    d = desired(("a", task_spec()), ("b", task_spec()), ("c", task_spec()))
    runs = {"a": [run(d, "a", alive=True)], "b": [run(d, "b", alive=True)]}
    p = plan(d, observed(runs=runs), NOW)
    assert kinds(p) == [("standby", "c")]  # no slot: prepared for the next run to end
    assert phase(p, "a") is Phase.RUNNING and phase(p, "c") is Phase.QUEUED


def test_crashed_run_is_marked_and_frees_its_slot_in_the_same_pass() -> None:
    d = desired(("a", task_spec()), ("b", task_spec()), ("c", task_spec()))
    runs = {
        "a": [run(d, "a", alive=True)],
        "b": [run(d, "b", alive=False)],  # no exit record: gone
    }
    p = plan(d, observed(runs=runs), NOW)
    assert kinds(p) == [("mark-crashed", "b"), ("start", "c")]
    assert "no exit record" in p.actions[0].reason
    assert phase(p, "b") is Phase.BACKOFF
    assert [o.outcome for o in p.outcomes] == ["crashed"]


def test_agent_killed_by_signal_is_a_crash() -> None:
    d = desired(("t", task_spec()))
    p = plan(d, observed(runs={"t": [run(d, "t", exit=exited(signal=9))]}), NOW)
    assert kinds(p) == [("mark-crashed", "t")]
    assert "SIGKILL" in p.actions[0].reason


def test_retry_after_backoff_elapses_with_a_new_attempt() -> None:
    d = desired(("t", task_spec()))
    crashed = run(d, "t", mark="crashed", marked_at=NOW - 1000)
    p = plan(d, observed(runs={"t": [crashed]}), NOW)
    assert kinds(p) == [("retry", "t")]
    assert p.actions[0].attempt == 2 and p.actions[0].iteration == 1


def test_backoff_not_elapsed_keeps_waiting_and_reports_next_attempt() -> None:
    d = desired(("t", task_spec()))
    crashed = run(d, "t", mark="crashed", marked_at=NOW - 1)
    p = plan(d, observed(runs={"t": [crashed]}), NOW)
    assert p.empty
    status = p.tasks[0]
    assert status.phase is Phase.BACKOFF
    assert status.next_attempt_at == pytest.approx(NOW - 1 + backoff_delay(d.config, "t", 1))


def test_backoff_is_capped_exponential_with_bounded_jitter() -> None:
    cfg = ConfigSpec.model_validate({"backoff": {"base": "10s", "max": "60s"}})
    delays = [backoff_delay(cfg, "t", n) for n in range(1, 8)]
    for n, value in enumerate(delays, start=1):
        full = min(60.0, 10.0 * 2 ** (n - 1))
        assert full / 2 <= value <= full
    assert backoff_delay(cfg, "t", 3) == backoff_delay(cfg, "t", 3)
    assert backoff_delay(cfg, "t", 3) != backoff_delay(cfg, "u", 3)


def test_attempts_exhausted_is_failed() -> None:
    d = desired(("t", task_spec(maxAttempts=2)))
    runs = [
        run(d, "t", 1, mark="crashed", marked_at=NOW - 5000),
        run(d, "t", 2, mark="stalled", marked_at=NOW - 4000),
    ]
    p = plan(d, observed(runs={"t": runs}), NOW)
    assert p.empty
    assert phase(p, "t") is Phase.FAILED
    assert "all 2 attempts failed" in p.tasks[0].reason
    one = desired(("t", task_spec(maxAttempts=1)))
    p = plan(
        one, observed(runs={"t": [run(one, "t", 1, mark="crashed", marked_at=NOW - 5000)]}), NOW
    )
    assert "the only attempt failed" in p.tasks[0].reason


def test_failed_criteria_iterate_with_feedback_and_session() -> None:
    d = desired(("t", task_spec(success={"checks": ["pytest -q"], "markers": ["DONE"]})))
    check = CheckResult(argv=["pytest", "-q"], exit_code=1, output_tail="E assert 1 == 2")
    r = run(
        d,
        "t",
        exit=exited(0, [check]),
        result=ok_result("nearly"),
        commits_ahead=1,
        dirty=(" M a.py",),
    )
    p = plan(d, observed(runs={"t": [r]}), NOW)
    assert kinds(p) == [("iterate", "t")]
    act = p.actions[0]
    assert (act.attempt, act.iteration) == (1, 2)
    assert act.resume_session == "s-1"
    text = "\n".join(act.feedback)
    assert "check `pytest -q` failed with status 1" in text
    assert "E assert 1 == 2" in text
    assert "marker DONE missing" in text
    assert " M a.py" in text
    assert [(o.outcome, o.iteration) for o in p.outcomes] == [("failed", 1)]


def test_the_next_iteration_resumes_the_session_the_agent_reported() -> None:
    d = desired(("t", task_spec(success={"markers": ["DONE"]})))
    # started to resume s-1, the agent answered under a new id (older claude versions do)
    failed = AgentResult(ok=False, subtype="success", session_id="s-2", final_text="hm")
    r = run(d, "t", exit=exited(0), result=failed, session_id="s-1", turns=3)
    p = plan(d, observed(runs={"t": [r]}), NOW)
    assert p.actions[0].resume_session == "s-2"
    # an error reported as "success" (is_error) is not called a success
    assert "agent reported an error" in p.actions[0].reason


def test_a_session_whose_agent_never_answered_is_not_resumed() -> None:
    # e.g. gemini --resume of a session it does not have: exit 42 before any event
    d = desired(("t", task_spec(success={"markers": ["DONE"]})))
    refused = AgentResult(ok=False, subtype="input_error", num_turns=0)
    r = run(d, "t", exit=exited(42), result=refused, session_id="s-gone", turns=0)
    p = plan(d, observed(runs={"t": [r]}), NOW)
    assert kinds(p) == [("iterate", "t")]
    assert p.actions[0].resume_session is None  # a fresh session, not the same failure again
    answered = replace(r, turns=2)
    assert plan(d, observed(runs={"t": [answered]}), NOW).actions[0].resume_session == "s-gone"
    unknown = replace(r, turns=None)  # an agent whose turns are not counted: resume as told
    assert plan(d, observed(runs={"t": [unknown]}), NOW).actions[0].resume_session == "s-gone"


def test_a_refused_commit_of_the_agents_changes_is_a_failure_with_its_output() -> None:
    d = desired(("t", task_spec()))
    commit = CheckResult(argv=["git", "commit"], exit_code=1, output_tail="hook: no TODOs")
    done = exited(0)
    done = done.model_copy(update={"commit": commit})
    r = run(d, "t", exit=done, result=ok_result(), commits_ahead=0, dirty=("?? a.py",))
    p = plan(d, observed(runs={"t": [r]}), NOW)
    assert kinds(p) == [("iterate", "t")]
    assert "committing the agent's changes failed with status 1" in p.actions[0].reason
    assert any("hook: no TODOs" in f for f in p.actions[0].feedback)


def test_no_commits_fails_require_commits() -> None:
    d = desired(("t", task_spec()))
    r = run(d, "t", exit=exited(0), result=ok_result(), commits_ahead=0)
    p = plan(d, observed(runs={"t": [r]}), NOW)
    assert kinds(p) == [("iterate", "t")]
    assert "no commits ahead" in p.actions[0].reason


def test_nonzero_exit_and_agent_error_fail_the_run() -> None:
    d = desired(("t", task_spec()))
    bad = AgentResult(ok=False, subtype="error_max_turns", final_text="x")
    p = plan(
        d, observed(runs={"t": [run(d, "t", exit=exited(0), result=bad, commits_ahead=3)]}), NOW
    )
    assert "agent reported error_max_turns" in p.actions[0].reason
    p = plan(d, observed(runs={"t": [run(d, "t", exit=exited(2), commits_ahead=3)]}), NOW)
    assert "agent exited with status 2" in p.actions[0].reason


def test_a_failed_run_says_what_the_agent_said() -> None:
    d = desired(("t", task_spec()))

    def reason(exit_code: int, result: AgentResult) -> str:
        ended = run(d, "t", exit=exited(exit_code), result=result, commits_ahead=1)
        return plan(d, observed(runs={"t": [ended]}), NOW).actions[0].reason

    aider = AgentResult(ok=False, subtype="api_error", error="litellm.AuthenticationError: no")
    assert "agent reported api_error: litellm.AuthenticationError: no" in reason(0, aider)
    gemini = AgentResult(ok=False, subtype="auth_error", error="[API Error: 401]")
    assert "agent exited with status 145 (auth_error): [API Error: 401]" in reason(145, gemini)
    turns = AgentResult(ok=False, subtype="error_max_turns", error="error_max_turns")
    assert "agent exited with status 1 (error_max_turns);" in reason(1, turns) + ";"


def test_iterations_exhausted_fail_the_attempt_into_backoff() -> None:
    d = desired(("t", task_spec(maxIterations=2)))
    runs = [
        run(d, "t", 1, 1, exit=exited(1, at=NOW - 50), outcome="failed", failures=("x",)),
        run(d, "t", 1, 2, exit=exited(1, at=NOW - 2), outcome="failed", failures=("y",)),
    ]
    p = plan(d, observed(runs={"t": runs}), NOW)
    assert p.empty
    assert phase(p, "t") is Phase.BACKOFF
    assert "used all 2 iterations" in p.tasks[0].reason


def test_stalled_and_timed_out_runs_are_marked() -> None:
    d = desired(("t", task_spec()))
    quiet = run(d, "t", alive=True, last_output_at=NOW - 301)
    p = plan(d, observed(runs={"t": [quiet]}), NOW)
    assert kinds(p) == [("mark-stalled", "t")]
    assert "no output for 5m" in p.actions[0].reason
    assert [(o.outcome, o.failures) for o in p.outcomes] == [
        ("stalled", (p.actions[0].reason.split(": ", 1)[1],))
    ]
    old = run(d, "t", alive=True, started_at=NOW - 3601, last_output_at=NOW - 1)
    p = plan(d, observed(runs={"t": [old]}), NOW)
    assert kinds(p) == [("mark-stalled", "t")]
    assert "past its timeout of 1h" in p.actions[0].reason


def test_success_opens_pr_then_adopts_after_state_loss() -> None:
    d = desired(("t", task_spec()))
    r = run(d, "t", exit=exited(0), result=ok_result(), commits_ahead=2)
    p = plan(d, observed(runs={"t": [r]}), NOW)
    assert kinds(p) == [("open-pr", "t")]
    # the PR exists on the forge but state does not know it (crash after create, or lost state)
    o = observed(runs={"t": [r]}, repo=RepoView(prs={"agent/t": pr(4)}))
    p = plan(d, o, NOW)
    assert kinds(p) == [("adopt-pr", "t")]
    assert p.actions[0].pr_number == 4


def test_new_commits_after_pr_update_it() -> None:
    d = desired(("t", task_spec()))
    r = run(d, "t", exit=exited(0), outcome="succeeded")
    repo = RepoView(
        prs={"agent/t": pr(1)}, branches={"agent/t": "b"}, remote_branches={"agent/t": "a"}
    )
    o = observed(
        runs={"t": [r]}, repo=repo, records={"t": TaskRecord("t", "web", "app", 0.0, pr_number=1)}
    )
    assert kinds(plan(d, o, NOW)) == [("update-pr", "t")]


def test_no_forge_completes_on_success() -> None:
    d = desired(("t", task_spec()), lanes={"web": lane(forge=False)})
    r = run(d, "t", exit=exited(0), result=ok_result(), commits_ahead=1)
    p = plan(d, observed(runs={"t": [r]}, repo=RepoView(prs=None)), NOW)
    assert kinds(p) == [("complete", "t")]
    assert phase(p, "t") is Phase.DONE
    rec = TaskRecord("t", "web", "app", 0.0, done=True, done_generation=gen(d, "t"))
    p = plan(d, observed(runs={"t": [r]}, repo=RepoView(prs=None), records={"t": rec}), NOW)
    assert p.empty and phase(p, "t") is Phase.DONE


def test_merged_pr_completes_and_cleans_up() -> None:
    d = desired(("t", task_spec()))
    repo = RepoView(prs={"agent/t": pr(1, "merged")}, worktrees={"t": "/w/app/t"})
    p = plan(
        d, observed(runs={"t": [run(d, "t", exit=exited(0), outcome="succeeded")]}, repo=repo), NOW
    )
    assert kinds(p) == [("complete", "t"), ("cleanup", "t")]
    assert phase(p, "t") is Phase.DONE


def test_closed_pr_fails_until_the_manifest_changes() -> None:
    d = desired(("t", task_spec()))
    r = run(d, "t", exit=exited(0), outcome="succeeded", started_at=NOW - 100)
    repo = RepoView(prs={"agent/t": pr(1, "closed", updated=NOW - 50)})
    p = plan(d, observed(runs={"t": [r]}, repo=repo), NOW)
    assert p.empty and phase(p, "t") is Phase.FAILED
    assert "closed without merging" in p.tasks[0].reason
    # the manifest changes: runs of the old generation no longer count, convergence restarts
    d2 = desired(("t", task_spec(prompt="do it better")))
    p = plan(d2, observed(runs={"t": [r]}, repo=repo), NOW)
    assert kinds(p) == [("start", "t")]
    assert p.actions[0].attempt == 2


def test_dependencies_block_until_done() -> None:
    d = desired(
        ("a", task_spec()), ("b", task_spec(dependsOn=["a"])), ("c", task_spec(dependsOn=["zzz"]))
    )
    p = plan(d, observed(), NOW)
    assert kinds(p) == [("start", "a")]
    reasons = {b.task: b.reason for b in p.blocked}
    assert reasons == {
        "b": "waiting for a to be done",
        "c": "depends on zzz, which is not a task in the control repo",
    }
    assert phase(p, "b") is Phase.BLOCKED
    repo = RepoView(prs={"agent/a": pr(1, "merged", task="a")})
    p = plan(d, observed(repo=repo), NOW)
    assert ("start", "b") in kinds(p)


def test_preflight_failure_blocks_with_the_fix() -> None:
    d = desired(("t", task_spec()))
    bad = PreflightCheck(
        name="checkout", ok=False, subject="app", detail="~/app does not exist", fix="clone it"
    )
    p = plan(d, observed(preflight=(bad,)), NOW)
    assert p.empty
    assert p.blocked[0].reason == "pre-flight checkout failed: ~/app does not exist (clone it)"


def test_an_advisory_preflight_failure_does_not_block_dispatch() -> None:
    d = desired(("t", task_spec()))
    home = PreflightCheck(
        name="home",
        ok=False,
        detail="The home /home/x is mode 755: every user on this host can read it.",
        fix="chmod 700 /home/x",
        advisory=True,
    )
    p = plan(d, observed(preflight=(home,)), NOW)
    assert kinds(p) == [("start", "t")] and not p.blocked
    # the same failure, not advisory, blocks the lane's tasks with its fix
    blocking = home.model_copy(update={"advisory": False})
    p = plan(d, observed(preflight=(home, blocking)), NOW)
    assert p.empty and "chmod 700 /home/x" in p.blocked[0].reason


def test_unreachable_lane_is_unknown_and_nothing_is_pruned() -> None:
    d = desired(("t", task_spec()))
    lanes = {"web": LaneView("web", reachable=False, error="ssh: connection refused")}
    records = {"gone": TaskRecord("gone", "web", "app", 0.0)}
    p = plan(d, observed(lanes=lanes, records=records), NOW)
    assert p.empty
    assert {t.name: t.phase for t in p.tasks} == {"t": Phase.UNKNOWN, "gone": Phase.UNKNOWN}


def test_paused_stops_and_keeps_everything() -> None:
    d = desired(("t", task_spec(paused=True)))
    p = plan(d, observed(runs={"t": [run(d, "t", alive=True)]}), NOW)
    assert kinds(p) == [("stop", "t")]
    assert phase(p, "t") is Phase.PAUSED
    # pausing does not change the generation
    assert gen(d, "t") == gen(desired(("t", task_spec())), "t")


def test_stopped_run_restarts_when_unpaused() -> None:
    d = desired(("t", task_spec()))
    stopped = run(d, "t", mark="stopped", marked_at=NOW - 3, exit=exited(signal=15))
    p = plan(d, observed(runs={"t": [stopped]}), NOW)
    assert kinds(p) == [("retry", "t")]


def test_spec_change_stops_the_old_run_and_starts_again_keeping_the_pr() -> None:
    old = desired(("t", task_spec()))
    new = desired(("t", task_spec(prompt="changed")))
    r = run(old, "t", alive=True)
    repo = RepoView(prs={"agent/t": pr(3)})
    p = plan(new, observed(runs={"t": [r]}, repo=repo), NOW)
    assert kinds(p) == [("stop", "t"), ("start", "t")]
    assert p.actions[1].attempt == 2
    assert p.tasks[0].pr is not None and p.tasks[0].pr.number == 3


def test_removed_task_stops_closes_and_cleans_up() -> None:
    d = desired()
    gone = RunView(
        task="old",
        lane="web",
        repo="app",
        attempt=1,
        iteration=1,
        generation="g",
        started_at=0.0,
        alive=True,
    )
    repo = RepoView(prs={"agent/old": pr(2, task="old")}, worktrees={"old": "/w/app/old"})
    p = plan(d, observed(runs={"old": [gone]}, repo=repo), NOW)
    assert kinds(p) == [("stop", "old"), ("close-pr", "old"), ("cleanup", "old")]
    assert phase(p, "old") is Phase.CLOSING
    # once everything is gone, the task disappears from the plan
    done = replace(gone, alive=False)
    p = plan(d, observed(runs={"old": [done]}, repo=RepoView(prs={})), NOW)
    assert p.empty and not p.tasks


def test_pr_of_another_task_on_the_same_branch_is_not_adopted() -> None:
    d = desired(("t", task_spec()))
    r = run(d, "t", exit=exited(0), result=ok_result(), commits_ahead=1)
    repo = RepoView(prs={"agent/t": pr(9, task="someone-else")})
    assert kinds(plan(d, observed(runs={"t": [r]}, repo=repo), NOW)) == [("open-pr", "t")]


def test_every_action_kind_carries_its_own_payload_and_round_trips_through_json() -> None:
    examples = [
        Action(A.START, "t", "web", "new", NewRun(1, 1, "g1", budget_usd=0.5)),
        Action(A.ITERATE, "t", "web", "again", NewRun(1, 2, "g1", "s-1", ("fix it",))),
        Action(A.RETRY, "t", "web", "retry", NewRun(2, 1, "g1", feedback=("crashed",))),
        Action(A.MARK_CRASHED, "t", "web", "gone", RunKey(1, 1)),
        Action(A.MARK_STALLED, "t", "web", "quiet", RunKey(1, 1)),
        Action(A.STOP, "t", "web", "paused", RunKey(1, 2)),
        Action(A.OPEN_PR, "t", "web", "success", RunKey(1, 1)),
        Action(A.ADOPT_PR, "t", "web", "exists", PrOfRun(4, 1, 1)),
        Action(A.UPDATE_PR, "t", "web", "commits", PrOfRun(4, 1, 2)),
        Action(A.CLOSE_PR, "t", "web", "removed", PrRef(4)),
        Action(A.CLEANUP, "t", "web", "done"),
        Action(A.COMPLETE, "t", "web", "merged", Completion("g1", pr_number=4)),
        Action(A.COMPLETE, "t", "web", "no forge", Completion("g1", attempt=1, iteration=1)),
        Action(A.FINISH_RUN, "t", "web", "supervisor died", FinishRun(1, 2, exit_code=1)),
        Action(A.REBASE, "t", "web", "base moved", PrOfRun(4, 1, 2)),
        Action(A.ITERATE, "t", "web", "conflict", NewRun(1, 3, "g1", fetch_base=True)),
        Action(A.STANDBY, "t", "web", "lane full", NewRun(1, 1, "g1", order="0.1")),
        Action(A.WITHDRAW, "t", "web", "paused", RunKey(1, 1)),
    ]
    assert {a.kind for a in examples} == set(A)
    for action in examples:
        assert Action.from_json(action.to_json()) == action
    assert examples[1].to_json() == {
        "action": "iterate",
        "task": "t",
        "lane": "web",
        "reason": "again",
        "attempt": 1,
        "iteration": 2,
        "generation": "g1",
        "resumeSession": "s-1",
        "feedback": ["fix it"],
    }
    # a payload that is not its kind's is refused where the action is made, not where applied
    with pytest.raises(TypeError, match="a close-pr action carries a PrRef, not a RunKey"):
        Action(A.CLOSE_PR, "t", "web", "removed", RunKey(1, 1))
    with pytest.raises(TypeError, match="close-pr carries no PrOfRun"):
        examples[9].want(PrOfRun)
    assert examples[9].want(PrRef).pr_number == 4
    d = desired(("t", task_spec()))
    r = run(d, "t", exit=exited(1), result=ok_result(), commits_ahead=1)
    for action in plan(d, observed(runs={"t": [r]}), NOW).actions:
        assert Action.from_json(action.to_json()) == action


def test_stopped_attempts_do_not_count_towards_max_attempts() -> None:
    d = desired(("t", task_spec(maxAttempts=2)))
    runs = [
        run(d, "t", 1, mark="stopped", marked_at=NOW - 900, exit=exited(signal=15, at=NOW - 900)),
        run(
            d, "t", 2, mark="crashed", marked_at=NOW - 500, failures=("could not start: disk full",)
        ),
    ]
    p = plan(d, observed(runs={"t": runs}), NOW)
    assert kinds(p) == [("retry", "t")]
    assert p.actions[0].attempt == 3
    assert "could not start: disk full" in p.actions[0].reason


def test_a_missing_base_blocks_only_the_tasks_on_that_base() -> None:
    d = desired(("a", task_spec(base="main")), ("b", task_spec(base="release")))
    bad = PreflightCheck(
        name="base-branch", ok=False, subject="app:release", detail="no release", fix="fetch it"
    )
    ok = PreflightCheck(name="base-branch", ok=True, subject="app:main", detail="fine")
    p = plan(d, observed(preflight=(ok, bad)), NOW)
    assert kinds(p) == [("start", "a")]
    assert [b.task for b in p.blocked] == ["b"]


def test_closing_the_pr_stops_a_live_run_of_the_same_spec() -> None:
    d = desired(("t", task_spec()))
    live = run(d, "t", 1, 2, alive=True, started_at=NOW - 100)
    repo = RepoView(prs={"agent/t": pr(1, "closed", updated=NOW - 10)})
    p = plan(d, observed(runs={"t": [live]}, repo=repo), NOW)
    assert kinds(p) == [("stop", "t")]
    assert phase(p, "t") is Phase.FAILED


def test_an_unreadable_repository_or_forge_decides_nothing_for_started_tasks() -> None:
    d = desired(("t", task_spec()), ("new", task_spec()))
    r = run(d, "t", exit=exited(0), result=ok_result(), commits_ahead=1)
    repo = RepoView(prs=None, error="GitHub did not answer")
    p = plan(d, observed(runs={"t": [r]}, repo=repo), NOW)
    assert p.empty  # no complete as if there were no forge, no start on a repo we cannot read
    assert phase(p, "t") is Phase.UNKNOWN and phase(p, "new") is Phase.BLOCKED
    assert p.tasks[1].reason == "GitHub did not answer"


def _pr_with(checks: str | None, sha: str = "a", **kw: Any) -> PullRequest:
    return pr(1).model_copy(update={"checks": checks, "head_sha": sha, **kw})


def _after_success(d: Desired, the_pr: PullRequest, pushed: str = "a", iteration: int = 1) -> Plan:
    r = run(d, "t", 1, iteration, exit=exited(0), outcome="succeeded", session_id="s-9")
    repo = RepoView(
        prs={"agent/t": the_pr}, branches={"agent/t": pushed}, remote_branches={"agent/t": pushed}
    )
    rec = TaskRecord("t", "web", "app", 0.0, pr_number=1)
    return plan(d, observed(runs={"t": [r]}, repo=repo, records={"t": rec}), NOW)


def test_failing_pr_checks_iterate_on_the_same_branch_with_their_output() -> None:
    d = desired(("t", task_spec()))
    p = _after_success(
        d, _pr_with("failure", check_feedback=["check `ci / test` failure:\n```\nE boom\n```"])
    )
    assert kinds(p) == [("iterate", "t")]
    act = p.actions[0]
    assert (act.attempt, act.iteration, act.resume_session) == (1, 2, "s-9")
    assert "E boom" in "\n".join(act.feedback)
    assert act.reason == "PR #1: check `ci / test` failure:"


def test_change_requests_iterate_and_iterate_on_can_turn_it_off() -> None:
    review = ["review by octo requests changes: rename it", "app.py:3: not this name"]
    d = desired(("t", task_spec()))
    p = _after_success(d, _pr_with("success", review_feedback=review))
    assert kinds(p) == [("iterate", "t")] and p.actions[0].feedback == tuple(review)
    checks_only = desired(("t", task_spec(pr={"iterateOn": ["checks"]})))
    assert _after_success(checks_only, _pr_with("success", review_feedback=review)).empty


def test_pending_stale_or_exhausted_feedback_does_not_iterate() -> None:
    d = desired(("t", task_spec(maxIterations=2)))
    failing: dict[str, Any] = {"check_feedback": ["check `ci` failure"]}
    assert _after_success(d, _pr_with("pending")).empty
    # feedback about a commit that is not the one pushed last was already answered
    assert _after_success(d, _pr_with("failure", sha="old", **failing)).empty
    p = _after_success(d, _pr_with("failure", **failing), iteration=2)
    assert p.empty
    assert "all 2 iterations are used" in p.tasks[0].reason


def test_a_spent_task_budget_ends_the_task_without_another_run() -> None:
    d = desired(("t", task_spec(budget={"maxCostUsd": 1.0})))
    check = CheckResult(argv=["pytest"], exit_code=1, output_tail="E fail")
    first = run(d, "t", exit=exited(0, [check]), result=ok_result(), cost_usd=0.4)
    p = plan(d, observed(runs={"t": [first]}), NOW)
    assert kinds(p) == [("iterate", "t")]  # $0.40 of $1.00: go on
    spent = run(d, "t", 1, 2, exit=exited(0, [check]), result=ok_result(), cost_usd=0.7)
    p = plan(d, observed(runs={"t": [first, spent]}), NOW)
    assert kinds(p) == []
    assert phase(p, "t") is Phase.FAILED
    assert "budget exhausted ($1.10 of $1.00)" in p.tasks[0].reason


def test_a_budget_with_less_than_a_cent_left_is_exhausted_not_a_failed_start() -> None:
    # claude refuses --max-budget-usd 0.00: a run with nothing to spend never starts
    d = desired(("t", task_spec(budget={"maxCostUsd": 1.0})))
    check = CheckResult(argv=["pytest"], exit_code=1, output_tail="E fail")
    almost = run(d, "t", exit=exited(0, [check]), result=ok_result(), cost_usd=0.996)
    p = plan(d, observed(runs={"t": [almost]}), NOW)
    assert kinds(p) == []
    assert phase(p, "t") is Phase.FAILED
    assert "budget exhausted ($0.996 of $1.00, less than a cent left)" in p.tasks[0].reason
    # with an open PR, the work stands: no further iteration, the PR stays for review
    tokens = desired(("t", task_spec(budget={"maxTokens": 100})))
    big = run(tokens, "t", exit=exited(0, [check]), result=ok_result(), tokens=150)
    p = plan(tokens, observed(runs={"t": [big]}, repo=RepoView(prs={"agent/t": pr()})), NOW)
    assert kinds(p) == [] and phase(p, "t") is Phase.PR_OPEN
    assert "150 of 100 tokens" in p.tasks[0].reason


def test_a_lane_past_its_daily_budget_starts_nothing_new_until_midnight() -> None:
    capped = lane()
    capped = capped.model_copy(
        update={"budget": capped.budget.model_copy(update={"max_cost_usd": 2.0})}
    )
    d = desired(("old", task_spec()), ("new", task_spec()), lanes={"web": capped})
    today = run(d, "old", exit=exited(0), result=ok_result(), cost_usd=2.5, started_at=NOW - 60)
    p = plan(d, observed(runs={"old": [today]}), NOW)
    assert ("start", "new") not in kinds(p)
    assert phase(p, "new") is Phase.BLOCKED
    assert "daily budget ($2.50 of $2.00)" in {b.task: b.reason for b in p.blocked}["new"]
    # another lane is not held back by this one's budget
    both = desired(
        ("old", task_spec()),
        ("new", task_spec()),
        ("elsewhere", task_spec(lane="ops")),
        lanes={"web": capped, "ops": lane("ops")},
    )
    ops_view = LaneView("ops", reachable=True, repos={"app": RepoView(prs={})})
    web_view = LaneView("web", reachable=True, repos={"app": RepoView(prs={})})
    p = plan(both, observed(runs={"old": [today]}, lanes={"web": web_view, "ops": ops_view}), NOW)
    assert ("start", "elsewhere") in kinds(p) and ("start", "new") not in kinds(p)
    # what was spent yesterday does not count today
    yesterday = replace(today, started_at=NOW - NOW % 86400 - 60)
    p = plan(d, observed(runs={"old": [yesterday]}), NOW)
    assert ("start", "new") in kinds(p)


def test_a_lane_crossing_its_daily_budget_mid_run_stops_its_runs() -> None:
    capped = lane()
    capped = capped.model_copy(
        update={"budget": capped.budget.model_copy(update={"max_cost_usd": 2.0})}
    )
    d = desired(("a", task_spec()), ("b", task_spec()), lanes={"web": capped})
    a = run(d, "a", alive=True, cost_usd=1.5, started_at=NOW - 60, last_progress_at=NOW - 1)
    b = run(d, "b", alive=True, cost_usd=0.4, started_at=NOW - 30, last_progress_at=NOW - 1)
    within = plan(d, observed(runs={"a": [a], "b": [b]}), NOW)
    assert kinds(within) == []
    over = plan(d, observed(runs={"a": [a], "b": [replace(b, cost_usd=0.6)]}), NOW)
    assert sorted(kinds(over)) == [("stop", "a"), ("stop", "b")]
    assert phase(over, "a") is Phase.BLOCKED  # not failed: the task goes on another day
    assert "lane web spent its daily budget ($2.10 of $2.00) during the run" in (
        over.tasks[0].reason or ""
    )
    ended = replace(a, alive=False, exit=exited(signal=15), mark="stopped", marked_at=NOW)
    again = plan(d, observed(runs={"a": [ended], "b": [replace(b, cost_usd=0.6)]}), NOW + 5)
    assert ("stop", "a") not in kinds(again) and ("retry", "a") not in kinds(again)
    assert phase(again, "a") is Phase.BLOCKED  # its next run waits for the lane's next day


def test_a_run_is_told_what_it_may_still_spend() -> None:
    capped = lane()
    capped = capped.model_copy(
        update={"budget": capped.budget.model_copy(update={"max_cost_usd": 5.0})}
    )
    d = desired(
        ("t", task_spec(budget={"maxCostUsd": 1.0})), ("u", task_spec()), lanes={"web": capped}
    )
    check = CheckResult(argv=["pytest"], exit_code=1, output_tail="E fail")
    first = run(d, "t", exit=exited(0, [check]), result=ok_result(), cost_usd=0.25)
    p = plan(d, observed(runs={"t": [first]}), NOW)
    budgets = {a.task: a.budget_usd for a in p.actions}
    assert budgets == {"t": 0.75, "u": 4.75}  # the task's own cap, else what the lane has left
    assert Action.from_json(p.actions[0].to_json()) == p.actions[0]
    free = desired(("v", task_spec()))
    assert plan(free, observed(), NOW).actions[0].budget_usd is None


def test_an_agent_that_only_prints_heartbeats_is_stalled() -> None:
    d = desired(("t", task_spec()))
    # output keeps growing (last write 1 s ago), but its last own event was 10 minutes ago
    beating = run(d, "t", alive=True, last_output_at=NOW - 1, last_progress_at=NOW - 600)
    p = plan(d, observed(runs={"t": [beating]}), NOW)
    assert kinds(p) == [("mark-stalled", "t")]
    assert "no agent event for 10m" in p.actions[0].reason
    working = replace(
        beating, last_progress_at=NOW - 5, tokens=4200, last_event="tool Bash: pytest"
    )
    p = plan(d, observed(runs={"t": [working]}), NOW)
    assert kinds(p) == []
    assert p.tasks[0].reason == (
        "run 1.1 started 1m40s ago, 4200 tokens so far; last: tool Bash: pytest"
    )
    busy = replace(working, turns=1, tool_calls=5, cost_usd=0.061)
    assert plan(d, observed(runs={"t": [busy]}), NOW).tasks[0].reason == (
        "run 1.1 started 1m40s ago, 1 turn, 5 tool calls, 4200 tokens, $0.06 so far; "
        "last: tool Bash: pytest"
    )


def test_a_run_crossing_its_budget_mid_stream_is_stopped() -> None:
    d = desired(("t", task_spec(budget={"maxTokens": 1000})))
    running = run(d, "t", alive=True, tokens=1200, last_progress_at=NOW - 1)
    p = plan(d, observed(runs={"t": [running]}), NOW)
    assert kinds(p) == [("stop", "t")]
    assert phase(p, "t") is Phase.FAILED
    assert "budget exhausted (1200 of 1000 tokens) during the run" in p.tasks[0].reason
    within = replace(running, tokens=900)
    assert kinds(plan(d, observed(runs={"t": [within]}), NOW)) == []


def test_an_action_that_failed_for_a_lasting_reason_backs_off() -> None:
    # The forge refused the PR (not a timeout or a full disk): trying again every pass would
    # only fail again; the task waits out a backoff that grows with each failure in a row.
    d = desired(("t", task_spec()), config=ConfigSpec.model_validate({"backoff": {"base": "60s"}}))
    r = run(d, "t", exit=exited(0), result=ok_result(), commits_ahead=2)
    refused = "the forge refused the PR: base branch main does not exist"

    def planned(count: int, ago: float) -> Plan:
        failed = FailedAction(kind="open-pr", message=refused, at=NOW - ago, count=count)
        record = TaskRecord(name="t", lane="web", repo="app", first_seen=NOW - 900, failed=failed)
        return plan(d, observed(runs={"t": [r]}, records={"t": record}), NOW)

    p = planned(1, ago=5)
    assert kinds(p) == []
    assert p.tasks[0].reason.startswith(f"open-pr failed once: {refused}; tried again in ")
    assert p.requeue is not None  # run wakes when the hold ends
    assert (p.requeue.due.value, p.requeue.subject) == ("held", "t")
    assert NOW + 25 <= p.requeue.at <= NOW + 55
    assert kinds(planned(1, ago=61)) == [("open-pr", "t")]  # 30-60s after one failure
    p = planned(3, ago=61)  # 120-240s after three in a row
    assert kinds(p) == []
    assert "open-pr failed 3 times in a row" in p.tasks[0].reason
    # a hold is for that kind of action only
    other = FailedAction(kind="update-pr", message=refused, at=NOW - 5, count=1)
    record = TaskRecord(name="t", lane="web", repo="app", first_seen=NOW - 900, failed=other)
    assert kinds(plan(d, observed(runs={"t": [r]}, records={"t": record}), NOW)) == [
        ("open-pr", "t")
    ]


# ------------------------------------------------------------------ when the next pass is due


def budget_lane(usd: float) -> LaneSpec:
    capped = lane()
    return capped.model_copy(
        update={"budget": capped.budget.model_copy(update={"max_cost_usd": usd})}
    )


def crashed(d: Desired, name: str, at: float) -> RunView:
    """Attempt 1 of ``name``, marked crashed at ``at``."""
    return run(d, name, mark="crashed", marked_at=at)


D = desired(("t", task_spec()))
D_ONCE = desired(("t", task_spec(maxAttempts=1)))
D_BUDGET = desired(("old", task_spec()), ("new", task_spec()), lanes={"web": budget_lane(2.0)})
DELAY_1 = backoff_delay(D.config, "t", 1)
MIDNIGHT = NOW - NOW % 86400 + 86400


def runs_of(d: Desired, name: str, **kw: Any) -> Observed:
    """The observation of one run of ``name`` (attempt 1.1), with ``kw`` as in ``run``."""
    return observed(runs={name: [replace(run(d, name), **kw)]})


# (what, desired, observed, the requeue as (seconds from now, reason, subject) or None)
REQUEUE_TABLE: list[tuple[str, Desired, Observed, tuple[float, str, str] | None]] = [
    ("a new task starts: nothing due by time", D, observed(), None),
    (
        "backoff not elapsed: due when it ends",
        D,
        observed(runs={"t": [crashed(D, "t", NOW - 1)]}),
        (DELAY_1 - 1, "backoff", "t"),
    ),
    (
        "backoff elapsed: retried now, nothing more due",
        D,
        observed(runs={"t": [crashed(D, "t", NOW - 1000)]}),
        None,
    ),
    (
        "a run that just crashed is marked and backs off from now",
        D,
        runs_of(D, "t", alive=False),
        (DELAY_1, "backoff", "t"),
    ),
    (
        "the only attempt crashed: failed, nothing due",
        D_ONCE,
        observed(runs={"t": [crashed(D_ONCE, "t", NOW - 1)]}),
        None,
    ),
    (
        "a live run is due at its stall deadline (last output + stallTimeout)",
        D,
        runs_of(D, "t", alive=True, last_output_at=NOW - 10),
        (290, "stall", "t/1.1"),
    ),
    (
        "an agent with events: its last own event counts, not its heartbeats",
        D,
        runs_of(D, "t", alive=True, last_output_at=NOW - 1, last_progress_at=NOW - 100),
        (200, "stall", "t/1.1"),
    ),
    (
        "a silent run is due a stallTimeout after its start",
        D,
        runs_of(D, "t", alive=True, started_at=NOW - 30, last_output_at=None),
        (270, "stall", "t/1.1"),
    ),
    (
        "a run whose end is recorded while its supervisor exits: looked at again shortly",
        D,
        runs_of(D, "t", alive=True, exit=exited(0, at=NOW), result=ok_result()),
        (EXITING_POLL, "exiting", "t/1.1"),
    ),
    (
        "one that lingers is looked at less and less often (after its checks, from their end)",
        D,
        runs_of(
            D,
            "t",
            alive=True,
            exit=exited(0, [CheckResult(argv=["make"], exit_code=0, duration=40)], at=NOW - 60),
            result=ok_result(),
        ),
        (10, "exiting", "t/1.1"),
    ),
    (
        "a live run close to its timeout is due at the timeout",
        D,
        runs_of(D, "t", alive=True, started_at=NOW - 3590, last_output_at=NOW - 1),
        (10, "timeout", "t/1.1"),
    ),
    (
        "a run marked stalled now: due when the backoff after it ends",
        D,
        runs_of(D, "t", alive=True, last_output_at=NOW - 301),
        (DELAY_1, "backoff", "t"),
    ),
    (
        "stalled with no attempt left: nothing due",
        D_ONCE,
        runs_of(D_ONCE, "t", alive=True, last_output_at=NOW - 301),
        None,
    ),
    (
        "a paused task: nothing due",
        desired(("t", task_spec(paused=True))),
        observed(),
        None,
    ),
    (
        "a lane past its daily budget: due at 00:00 UTC",
        D_BUDGET,
        runs_of(
            D_BUDGET,
            "old",
            exit=exited(0),
            result=ok_result(),
            cost_usd=2.5,
            started_at=NOW - 60,
        ),
        (MIDNIGHT - NOW, "budget-window", "web"),
    ),
    (
        "a run stopped for the lane's daily budget: its task is due at 00:00 UTC",
        D_BUDGET,
        runs_of(D_BUDGET, "old", alive=True, cost_usd=2.5, started_at=NOW - 60),
        (MIDNIGHT - NOW, "budget-window", "web"),
    ),
]


@pytest.mark.parametrize(
    ("desired_", "observed_", "expected"),
    [row[1:] for row in REQUEUE_TABLE],
    ids=[row[0] for row in REQUEUE_TABLE],
)
def test_the_plan_says_when_the_next_pass_is_due(
    desired_: Desired,
    observed_: Observed,
    expected: tuple[float, str, str] | None,
) -> None:
    p = plan(desired_, observed_, NOW)
    if expected is None:
        assert p.requeue is None and p.requeue_at is None and p.requeue_after is None
        return
    after, reason, subject = expected
    assert p.requeue is not None
    assert (p.requeue.due.value, p.requeue.subject) == (reason, subject)
    assert p.requeue_after == pytest.approx(after)
    assert p.requeue_at == pytest.approx(NOW + after)


def test_the_earliest_of_many_deadlines_wins_and_the_choice_is_deterministic() -> None:
    d = desired(("a", task_spec()), ("b", task_spec()), ("c", task_spec()), ("d", task_spec()))
    runs = {
        "a": [run(d, "a", alive=True, last_output_at=NOW - 1)],  # stall in 299 s
        "b": [crashed(d, "b", NOW - 0.2)],
        "c": [crashed(d, "c", NOW - 0.1)],
    }
    p = plan(d, observed(runs=runs), NOW)
    ends = {
        name: NOW - back + backoff_delay(d.config, name, 1)
        for name, back in (("b", 0.2), ("c", 0.1))
    }
    first = min(ends, key=lambda name: ends[name])
    assert p.requeue is not None and p.requeue.subject == first
    assert p.requeue_at == pytest.approx(ends[first])
    assert plan(d, observed(runs=runs), NOW) == p
    # a pass at exactly that moment retries it, and is due for the other one next
    later = plan(d, observed(runs=runs), ends[first])
    assert ("retry", first) in kinds(later)
    assert later.requeue is not None and later.requeue.subject != first


def test_requeue_is_never_in_the_past_and_renders_for_json() -> None:
    d = desired(("t", task_spec()))
    p = plan(d, observed(runs={"t": [crashed(d, "t", NOW - 1)]}), NOW)
    assert p.requeue is not None
    assert p.requeue.to_json(NOW) == {
        "at": p.requeue.at,
        "after": round(DELAY_1 - 1, 3),
        "reason": "backoff",
        "subject": "t",
        "message": "the backoff of t ends",
    }
    assert p.requeue.to_json(p.requeue.at + 5)["after"] == 0.0
    assert p.requeue.message == "the backoff of t ends"


def test_the_plan_carries_each_lanes_spend_today_as_its_budget_counts_it() -> None:
    # status shows these figures: the ones the planner holds the lane's daily budget to,
    # a live run's spend so far included
    d = desired(("t", task_spec()), ("u", task_spec()))
    ended = run(d, "t", exit=exited(0), cost_usd=0.25, tokens=1000)
    live = run(d, "u", alive=True, cost_usd=0.5, tokens=3000, last_output_at=NOW - 1)
    yesterday = run(d, "t", 1, 2, started_at=NOW - NOW % 86400 - 10, cost_usd=9.0, tokens=9)
    p = plan(d, observed(runs={"t": [yesterday, ended], "u": [live]}), NOW)
    [web] = p.lane_spend
    assert (web.lane, web.today_usd, web.today_tokens) == ("web", 0.75, 4000)


def _why(p: Plan, name: str) -> tuple[Phase, Why]:
    status = next(t for t in p.tasks if t.name == name)
    return status.phase, status.why


def test_every_status_carries_a_reason_code_a_script_can_match() -> None:
    d = desired(
        ("new", task_spec()),
        ("dep", task_spec(dependsOn=["new"])),
        ("nodep", task_spec(dependsOn=["zzz"])),
        ("live", task_spec()),
        ("quiet", task_spec()),
        ("crashed", task_spec()),
        ("gaveup", task_spec(maxAttempts=1)),
        ("success", task_spec()),
        ("review", task_spec()),
        ("merged", task_spec()),
        ("paused", task_spec(paused=True)),
        lanes={"web": lane(slots=9)},
    )
    ok: dict[str, Any] = {"exit": exited(0), "result": ok_result(), "commits_ahead": 1}
    runs = {
        "live": [run(d, "live", alive=True)],
        "quiet": [run(d, "quiet", alive=True, last_output_at=NOW - 301)],
        "crashed": [run(d, "crashed", mark="crashed", marked_at=NOW - 1)],
        "gaveup": [run(d, "gaveup", mark="crashed", marked_at=NOW - 1)],
        "success": [run(d, "success", **ok)],
        "review": [run(d, "review", outcome="succeeded", **ok)],
        "merged": [run(d, "merged", outcome="succeeded", **ok)],
    }
    repo = RepoView(
        prs={"agent/review": pr(2, task="review"), "agent/merged": pr(3, "merged", task="merged")},
        branches={"agent/review": "a"},
        remote_branches={"agent/review": "a"},
    )
    records = {"review": TaskRecord("review", "web", "app", 0.0, pr_number=2)}
    p = plan(d, observed(runs=runs, repo=repo, records=records), NOW)
    assert {t.name: (t.phase, t.why) for t in p.tasks} == {
        "new": (Phase.PENDING, Why.STARTING),
        "dep": (Phase.BLOCKED, Why.DEPENDENCY_PENDING),
        "nodep": (Phase.BLOCKED, Why.DEPENDENCY_MISSING),
        "live": (Phase.RUNNING, Why.RUNNING),
        "quiet": (Phase.BACKOFF, Why.STALLED),
        "crashed": (Phase.BACKOFF, Why.BACKING_OFF),
        "gaveup": (Phase.FAILED, Why.ATTEMPTS_EXHAUSTED),
        "success": (Phase.RUNNING, Why.OPENING_PR),
        "review": (Phase.PR_OPEN, Why.AWAITING_REVIEW),
        "merged": (Phase.DONE, Why.MERGED),
        "paused": (Phase.PAUSED, Why.PAUSED),
    }
    assert {b.task: b.why for b in p.blocked} == {
        "dep": Why.DEPENDENCY_PENDING,
        "nodep": Why.DEPENDENCY_MISSING,
    }
    # the slot a start waits for, a lane not observed, a held action: each its own code
    three = desired(
        ("a", task_spec()), ("b", task_spec()), ("c", task_spec()), lanes={"web": lane(slots=1)}
    )
    assert _why(plan(three, observed(), NOW), "b") == (Phase.QUEUED, Why.ON_STANDBY)
    assert _why(plan(three, observed(), NOW), "c") == (Phase.QUEUED, Why.WAITING_FOR_SLOT)
    gone = {"web": LaneView("web", reachable=False, error="ssh: connection refused")}
    assert _why(plan(d, observed(lanes=gone), NOW), "new") == (Phase.UNKNOWN, Why.LANE_UNREACHABLE)
    held = TaskRecord(
        "success", "web", "app", 0.0, failed=FailedAction("open-pr", "push refused", NOW - 1, 1)
    )
    p = plan(d, observed(runs=runs, repo=repo, records={**records, "success": held}), NOW)
    assert _why(p, "success") == (Phase.RUNNING, Why.ACTION_HELD)


def test_conditions_are_four_standing_ones_plus_the_pr_and_agree_with_the_phase() -> None:
    d = desired(("review", task_spec()), ("dep", task_spec(dependsOn=["zzz"])))
    ok: dict[str, Any] = {
        "exit": exited(0),
        "result": ok_result(),
        "commits_ahead": 1,
        "outcome": "succeeded",
    }
    repo = RepoView(
        prs={"agent/review": pr(2, task="review")},
        branches={"agent/review": "a"},
        remote_branches={"agent/review": "a"},
    )
    p = plan(
        d,
        observed(
            runs={"review": [run(d, "review", **ok)]},
            repo=repo,
            records={"review": TaskRecord("review", "web", "app", 0.0, pr_number=2)},
        ),
        NOW,
    )
    by_name = {t.name: {c.type: c for c in t.conditions} for t in p.tasks}
    review, dep = by_name["review"], by_name["dep"]
    assert [c.type for c in next(t for t in p.tasks if t.name == "review").conditions] == [
        "Done",
        "Progressing",
        "Blocked",
        "Degraded",
        "PullRequest",
    ]
    assert {k: c.status for k, c in review.items()} == {
        "Done": "False",
        "Progressing": "False",
        "Blocked": "False",
        "Degraded": "False",
        "PullRequest": "True",
    }
    assert review["PullRequest"].reason == "Open" and review["PullRequest"].message == "PR #2"
    assert "PullRequest" not in dep
    assert dep["Blocked"].status == "True" and dep["Blocked"].reason == "DependencyMissing"
    assert dep["Blocked"].message == "depends on zzz, which is not a task in the control repo"
    assert dep["Done"].message == ""  # a condition that does not hold says nothing more
    # what the lane cannot tell is unknown, not false
    gone = {"web": LaneView("web", reachable=False, error="ssh: connection refused")}
    unseen = {c.type: c.status for c in plan(d, observed(lanes=gone), NOW).tasks[0].conditions}
    assert unseen == {
        "Done": "Unknown",
        "Progressing": "Unknown",
        "Blocked": "True",
        "Degraded": "Unknown",
    }
    assert review["Done"].to_json() == {
        "type": "Done",
        "status": "False",
        "reason": "AwaitingReview",
        "message": "",
    }


def test_the_plan_tops_up_warm_pools_after_the_starts_that_take_from_them() -> None:
    pooled = LaneSpec.model_validate(
        {
            "maxConcurrency": 3,
            "repos": [{"name": "app", "checkout": "~/app", "pool": 2, "forge": {"kind": "local"}}],
        }
    )
    d = desired(("a", task_spec()), ("b", task_spec()), ("c", task_spec()), lanes={"web": pooled})
    full = RepoView(prs={}, pool={"main": 2})
    # two first starts take two of the two idle worktrees: top up from zero
    p = plan(d, observed(repo=full), NOW)
    assert [(f.lane, f.repo, f.base, f.ready, f.wanted) for f in p.pools] == [
        ("web", "app", "main", 0, 2)
    ]
    assert p.pools[0].to_json() == {
        "lane": "web",
        "repo": "app",
        "base": "main",
        "ready": 0,
        "wanted": 2,
    }
    # nothing starts and the pool is full: nothing to do; a pool not full is topped up
    live = {n: [run(d, n, alive=True)] for n in "abc"}
    assert plan(d, observed(runs=live, repo=full), NOW).pools == ()
    short = RepoView(prs={}, pool={"main": 1})
    assert [f.ready for f in plan(d, observed(runs=live, repo=short), NOW).pools] == [1]
    # an iteration reuses its task's worktree and takes nothing from the pool
    failed = run(d, "a", exit=exited(1), result=ok_result(), commits_ahead=1)
    iterate = RepoView(prs={}, pool={"main": 2}, worktrees={"a": "/w/app/a"})
    p = plan(d, observed(runs={"a": [failed], "b": live["b"], "c": live["c"]}, repo=iterate), NOW)
    assert kinds(p) == [("iterate", "a")] and p.pools == ()
    # an unpooled or unreachable lane has none
    assert plan(desired(("a", task_spec())), observed(repo=full), NOW).pools == ()
    gone = {"web": LaneView("web", reachable=False)}
    assert plan(d, observed(lanes=gone), NOW).pools == ()
    assert p.empty is False and plan(d, observed(runs=live, repo=short), NOW).empty
