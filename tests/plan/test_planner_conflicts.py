"""Table tests of the planner when a task's base moves under its open PR: a clean move is rebased
by the reconciler, a conflict is the agent's to resolve in an iteration, within its limits."""

from __future__ import annotations

from typing import Any

from reconciler.manifests.models import Desired
from reconciler.plan import NewRun, Phase, Plan, PrOfRun, RepoView, TaskRecord, Why, plan
from reconciler.protocol import PullRequest
from tests.plan.test_planner import (
    NOW,
    desired,
    exited,
    kinds,
    observed,
    pr,
    run,
    task_spec,
)


def moved(mergeable: bool | None, conflicts: tuple[str, ...] = (), **kw: Any) -> PullRequest:
    """The task's open PR at the pushed head "a", its base moved since."""
    fields = {"head_sha": "a", "mergeable": mergeable, "behind": True, "conflicts": conflicts}
    return pr(1).model_copy(update={**fields, **kw})


def after_success(
    d: Desired, the_pr: PullRequest, *, iteration: int = 1, local: str = "a", **run_kw: Any
) -> Plan:
    """A pass after run 1.``iteration`` succeeded and its commit "a" was pushed to the PR."""
    r = run(d, "t", 1, iteration, exit=exited(0), outcome="succeeded", session_id="s-9", **run_kw)
    repo = RepoView(
        prs={"agent/t": the_pr}, branches={"agent/t": local}, remote_branches={"agent/t": "a"}
    )
    rec = TaskRecord("t", "web", "app", 0.0, pr_number=1)
    return plan(d, observed(runs={"t": [r]}, repo=repo, records={"t": rec}), NOW)


def test_a_clean_base_move_is_rebased_by_the_reconciler_without_an_agent() -> None:
    d = desired(("t", task_spec()))
    p = after_success(d, moved(True))
    assert kinds(p) == [("rebase", "t")]
    action = p.actions[0]
    assert action.payload == PrOfRun(1, 1, 1)
    assert action.reason == "main moved; rebasing agent/t on it and pushing to PR #1"
    (status,) = p.tasks
    assert (status.phase, status.why) == (Phase.PR_OPEN, Why.REBASING)
    assert status.reason == "main moved; the reconciler rebases agent/t on it (no conflict)"
    assert {c.type: c.status for c in status.conditions}["Progressing"] == "True"
    assert action.to_json()["action"] == "rebase" and action.to_json()["pr"] == 1


def test_a_conflict_asks_the_agent_in_an_iteration_that_fetches_the_base_first() -> None:
    d = desired(("t", task_spec()))
    p = after_success(d, moved(False, ("a.txt", "b.txt")), iteration=2)
    assert kinds(p) == [("iterate", "t")]
    action = p.actions[0]
    run_ = action.want(NewRun)
    assert (run_.attempt, run_.iteration, run_.resume_session, run_.fetch_base) == (
        1,
        3,
        "s-9",
        True,
    )
    (feedback,) = run_.feedback
    assert "PR #1 conflicts with main in a.txt, b.txt" in feedback
    assert "`git merge origin/main`" in feedback and "Do not push" in feedback
    (status,) = p.tasks
    assert (status.phase, status.why) == (Phase.PR_OPEN, Why.CONFLICT)
    assert status.reason == (
        "PR #1 conflicts with main in a.txt, b.txt; iteration 3 asks the agent to resolve it"
    )
    conditions = {c.type: c for c in status.conditions}
    assert conditions["Progressing"].status == "True" and conditions["Degraded"].status == "True"
    assert conditions["Degraded"].reason == "Conflict"
    assert action.to_json()["fetchBase"] is True


def test_a_conflict_on_github_names_no_files_and_the_remote_is_the_lanes() -> None:
    from tests.plan.test_planner import lane

    fork = lane().model_copy(
        update={
            "repos": [lane().repos[0].model_copy(update={"remote": "upstream"})],
        }
    )
    d = desired(("t", task_spec()), lanes={"web": fork})
    p = after_success(d, moved(False))
    (feedback,) = p.actions[0].feedback
    assert feedback.startswith("PR #1 conflicts with main: main moved on")
    assert "`git rebase upstream/main`" in feedback
    assert (
        p.tasks[0].reason == "PR #1 conflicts with main; iteration 2 asks the agent to resolve it"
    )


def test_a_conflict_with_no_iteration_left_says_what_to_do() -> None:
    d = desired(("t", task_spec(maxIterations=2)))
    p = after_success(d, moved(False, ("a.txt",)), iteration=2)
    assert p.empty
    (status,) = p.tasks
    assert (status.phase, status.why) == (Phase.PR_OPEN, Why.ITERATIONS_EXHAUSTED)
    assert status.reason == (
        "PR #1 conflicts with main in a.txt, but all 2 iterations are used; resolve it by hand "
        "(rebase agent/t on main and push) or raise maxIterations"
    )


def test_a_spent_budget_asks_no_agent_to_resolve_a_conflict() -> None:
    d = desired(("t", task_spec(budget={"maxCostUsd": 1.0})))
    p = after_success(d, moved(False, ("a.txt",)), cost_usd=1.5)
    assert p.empty
    assert (p.tasks[0].phase, p.tasks[0].why) == (Phase.PR_OPEN, Why.BUDGET_EXHAUSTED)


def test_nothing_is_decided_on_unknown_stale_or_current_mergeability() -> None:
    d = desired(("t", task_spec()))
    # GitHub has not computed it yet: a later pass asks again
    assert after_success(d, moved(None)).empty
    # about a head that is not the one pushed last: stale
    assert after_success(d, moved(False, ("a.txt",), head_sha="old")).empty
    # up to date with its base
    assert after_success(d, moved(True, behind=False)).empty
    assert after_success(d, moved(True, behind=False)).tasks[0].why is Why.AWAITING_REVIEW
    # new local commits (e.g. the agent's resolution, or a rebase whose push was lost) go first
    assert kinds(after_success(d, moved(False, ("a.txt",)), local="b")) == [("update-pr", "t")]
    assert kinds(after_success(d, moved(True), local="b")) == [("update-pr", "t")]


def test_a_pr_merged_or_closed_meanwhile_wins_over_its_conflict() -> None:
    d = desired(("t", task_spec()))
    merged = after_success(d, moved(False, ("a.txt",), state="merged"))
    assert [a.kind.value for a in merged.actions] == ["complete"]
    closed = after_success(d, moved(False, ("a.txt",), state="closed", updated_at=NOW))
    assert closed.empty and closed.tasks[0].why is Why.PR_CLOSED


def test_a_conflict_iteration_waits_for_a_slot_like_any_other() -> None:
    d = desired(("t", task_spec()), ("busy", task_spec()))
    r = run(d, "t", 1, 1, exit=exited(0), outcome="succeeded")
    live = run(d, "busy", alive=True)
    repo = RepoView(
        prs={"agent/t": moved(False, ("a.txt",))},
        branches={"agent/t": "a"},
        remote_branches={"agent/t": "a"},
    )
    rec = TaskRecord("t", "web", "app", 0.0, pr_number=1)
    one_slot = desired(("t", task_spec()), ("busy", task_spec()))
    one_slot.lanes["web"] = one_slot.lanes["web"].model_copy(update={"max_concurrency": 1})
    p = plan(
        one_slot, observed(runs={"t": [r], "busy": [live]}, repo=repo, records={"t": rec}), NOW
    )
    # the lane is full: the iteration is prepared on standby, fetching the base like a start
    assert kinds(p) == [("standby", "t")]
    assert p.actions[0].fetch_base and p.actions[0].iteration == 2
    status = next(s for s in p.tasks if s.name == "t")
    assert (status.phase, status.why) == (Phase.QUEUED, Why.ON_STANDBY)
