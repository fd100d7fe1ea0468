"""A task's settled runs (over for good, of earlier generations) reach the planner as sums
(``History``, and the lane's ``HourSpend`` of today) instead of one view each. The plan must be
the one the runs themselves would give: attempt numbers, budgets, the lane's daily budget,
statuses and the lanes' spend by hour."""

from __future__ import annotations

from collections.abc import Mapping

from reconciler.manifests.models import Desired, LaneSpec
from reconciler.plan import History, HourSpend, Observed, RunView, plan
from reconciler.plan.timing import DAY, HOUR
from reconciler.report import spend_by_hour
from tests.plan.test_planner import NOW, desired, exited, lane, observed, run, task_spec

MIDNIGHT = NOW - NOW % DAY


def folded(d: Desired, full: Observed) -> Observed:
    """``full`` with each task's runs of earlier generations, but its newest, as state keeps
    them once settled."""
    runs: dict[str, tuple[RunView, ...]] = {}
    history: dict[str, History] = {}
    hours: dict[tuple[str, float], tuple[float, int]] = {}
    for name, views in full.runs.items():
        generation = d.tasks[name].generation
        settled: list[RunView] = []
        for view in views[:-1]:
            if view.generation == generation or view.alive:
                break
            settled.append(view)
        runs[name] = views[len(settled) :]
        if settled:
            last = settled[-1]
            history[name] = History(
                len(settled),
                last.attempt,
                last.iteration,
                sum(v.cost_usd for v in settled),
                sum(v.tokens for v in settled),
            )
        for view in settled:
            key = (view.lane, view.started_at - view.started_at % HOUR)
            cost, tokens = hours.get(key, (0.0, 0))
            hours[key] = (cost + view.cost_usd, tokens + view.tokens)
    spend = tuple(
        HourSpend(lane_name, hour, cost, tokens)
        for (lane_name, hour), (cost, tokens) in hours.items()
        if hour >= MIDNIGHT
    )
    return Observed(
        revision=full.revision,
        serial=full.serial,
        lanes=full.lanes,
        records=full.records,
        runs=runs,
        history=history,
        settled_spend=spend,
    )


def old(name: str, attempt: int, cost: float, started: float, tokens: int = 0) -> RunView:
    return run(
        None,
        name,
        attempt,
        generation="earlier",
        started_at=started,
        exit=exited(),
        outcome="succeeded",
        cost_usd=cost,
        tokens=tokens,
    )


def same_plan(d: Desired, runs: Mapping[str, list[RunView]]) -> None:
    full = observed(runs=dict(runs))
    short = folded(d, full)
    assert sum(len(v) for v in short.runs.values()) < sum(len(v) for v in full.runs.values())
    a, b = plan(d, full, NOW), plan(d, short, NOW)
    assert a.actions == b.actions
    assert a.tasks == b.tasks
    assert a.blocked == b.blocked
    assert a.lane_spend == b.lane_spend
    assert a.requeue == b.requeue and a.outcomes == b.outcomes
    assert spend_by_hour(full, NOW) == spend_by_hour(short, NOW)


def test_a_new_generation_starts_after_its_settled_attempts_and_counts_their_spend() -> None:
    d = desired(("a", task_spec()), ("b", task_spec()))
    runs = {
        "a": [
            old("a", 1, 0.5, NOW - 2 * DAY),
            old("a", 2, 0.25, MIDNIGHT + 60, tokens=40),
            old("a", 3, 1.0, NOW - 100, tokens=7),
        ],
        "b": [old("b", 1, 0.5, NOW - 50), run(d, "b", 2, alive=True, cost_usd=0.25)],
    }
    same_plan(d, runs)
    p = plan(d, folded(d, observed(runs=runs)), NOW)
    (start,) = [x for x in p.actions if x.task == "a"]
    assert start.attempt == 4
    status = {s.name: s for s in p.tasks}
    assert status["a"].cost_usd == 1.75 and status["a"].tokens == 47
    assert status["b"].cost_usd == 0.75


def test_a_task_budget_spent_by_settled_runs_holds() -> None:
    d = desired(("a", task_spec(budget={"maxCostUsd": 1.5})), ("b", task_spec()))
    runs = {
        "a": [old("a", 1, 1.0, NOW - 300), old("a", 2, 1.0, NOW - 200)],
        "b": [old("b", 1, 0.5, NOW - 300), old("b", 2, 0.5, NOW - 200)],
    }
    same_plan(d, runs)
    p = plan(d, folded(d, observed(runs=runs)), NOW)
    assert {s.name: s.why.value for s in p.tasks}["a"] == "BudgetExhausted"


def test_a_lane_s_daily_budget_counts_today_s_settled_runs_only() -> None:
    spent_lane = LaneSpec.model_validate(
        {**lane().model_dump(by_alias=True, exclude_none=True), "budget": {"maxCostUsd": 2.0}}
    )
    d = desired(("a", task_spec()), ("b", task_spec()), lanes={"web": spent_lane})
    runs = {
        # yesterday's spend does not count; today's settled 1.0 + 0.75 leaves 0.25
        "a": [old("a", 1, 5.0, MIDNIGHT - 60), old("a", 2, 1.0, MIDNIGHT + 10)],
        "b": [old("b", 1, 0.75, NOW - 30), old("b", 2, 0.25, NOW - 20)],
    }
    same_plan(d, runs)
    p = plan(d, folded(d, observed(runs=runs)), NOW)
    (today,) = p.lane_spend
    assert today.today_usd == 2.0
    assert {s.name: s.why.value for s in p.tasks} == {
        "a": "LaneBudgetExhausted",
        "b": "LaneBudgetExhausted",
    }
