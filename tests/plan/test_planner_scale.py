"""The planner's shortcuts for large backlogs give the same plan as the plain way would: the
status built without the dataclass constructor, the grant order of the waiting starts, the
action a waiting start becomes only once it has its slot."""

from __future__ import annotations

import random
from dataclasses import fields

from reconciler.manifests.models import make_task
from reconciler.plan import ActionKind, LaneView, Phase, RepoView, TaskRecord, TaskStatus, Why, plan
from reconciler.plan.budget import Spend
from reconciler.plan.model import task_status
from reconciler.plan.planner import _Planner
from reconciler.plan.slots import Candidate, grant_order
from reconciler.protocol import PullRequest
from tests.plan.test_planner import NOW, desired, lane, observed, pr, run, task_spec


def test_a_status_built_without_its_constructor_is_the_same_value() -> None:
    values: dict[str, object] = {
        "name": "t",
        "phase": Phase.QUEUED,
        "lane": "web",
        "repo": "app",
        "branch": "agent/t",
        "attempt": 2,
        "iteration": 3,
        "reason": "waiting",
        "pr": pr(),
        "next_attempt_at": NOW,
        "cost_usd": 0.25,
        "tokens": 7,
        "why": Why.WAITING_FOR_SLOT,
    }
    # every field of TaskStatus, so a field added there must be added to task_status too
    assert [f.name for f in fields(TaskStatus)] == list(values)
    fast = task_status(**values)  # type: ignore[arg-type]
    made = TaskStatus(**values)  # type: ignore[arg-type]
    assert fast == made and repr(fast) == repr(made)
    assert fast.conditions == made.conditions
    assert isinstance(fast.pr, PullRequest)


def test_grant_order_is_priority_then_age_then_name_whatever_the_arrival() -> None:
    d = desired(*((f"t{i}", task_spec(priority=i % 3)) for i in range(30)))
    rng = random.Random(7)
    cands = [
        Candidate(
            task,
            ActionKind.START,
            1,
            1,
            "new task (attempt 1)",
            task.spec.priority,
            NOW - rng.choice((0, 10, 20)),
            Phase.PENDING,
            Why.STARTING,
        )
        for task in d.tasks.values()
    ]
    expected = sorted(cands, key=lambda c: (-c.priority, c.first_seen, c.task.name))
    for _ in range(5):
        rng.shuffle(cands)
        assert [c.task.name for c in grant_order(cands)] == [c.task.name for c in expected]


def test_a_waiting_start_becomes_its_action_only_when_granted_with_its_budget_then() -> None:
    spec = task_spec(budget={"maxCostUsd": 2.0})
    d = desired(("a", spec), ("b", spec), ("c", spec), lanes={"web": lane(slots=1)})
    spent = run(d, "b", cost_usd=0.5, mark="stopped")
    first_seen = {"a": NOW - 9, "b": NOW - 99, "c": NOW - 9}  # b is the oldest: it goes first
    records = {n: TaskRecord(n, "web", "app", at) for n, at in first_seen.items()}
    o = observed(runs={"b": [spent]}, records=records)
    p = plan(d, o, NOW)
    start, standby = p.actions
    assert (start.kind, start.task, start.attempt, start.iteration) == (ActionKind.RETRY, "b", 2, 1)
    # the lane's one live run gets one standby run: the next in grant order, with its budget
    assert (standby.kind, standby.task, standby.budget_usd) == (ActionKind.STANDBY, "a", 2.0)
    assert start.reason == "its last run was stopped; starting a fresh attempt"
    assert start.budget_usd == 1.5 and start.generation == d.tasks["b"].generation
    statuses = {s.name: s for s in p.tasks}
    assert statuses["b"].phase is Phase.PENDING and statuses["b"].reason == start.reason
    assert (statuses["a"].phase, statuses["a"].why) == (Phase.QUEUED, Why.ON_STANDBY)
    assert statuses["a"].reason == "on standby in lane web: starts as a run there ends (1/1 in use)"
    assert (statuses["c"].phase, statuses["c"].why) == (Phase.QUEUED, Why.WAITING_FOR_SLOT)
    assert statuses["c"].reason == "waiting for a slot in lane web (1/1 in use)"
    # the candidate builds the same action the planner granted
    task = make_task("b", spec)
    cand = Candidate(
        task, ActionKind.RETRY, 2, 1, start.reason, 0, NOW, Phase.PENDING, Why.STARTING
    )
    built = cand.action(Spend(d, o, NOW))
    assert (built.kind, built.task, built.lane, built.budget_usd) == (
        ActionKind.RETRY,
        "b",
        "web",
        1.5,
    )


def test_done_tasks_are_those_is_done_finds_one_by_one() -> None:
    d = desired(
        *((f"t{i}", task_spec()) for i in range(4)),
        *((f"u{i}", task_spec(lane="other")) for i in range(4)),
        lanes={"web": lane(), "other": lane("other")},
    )
    done_record = {
        name: TaskRecord(name, spec_lane, "app", NOW, done=True, done_generation=generation)
        for name, spec_lane, generation in (
            ("t1", "web", d.tasks["t1"].generation),
            ("t2", "web", "an older spec"),
            ("u1", "other", d.tasks["u1"].generation),
            ("u2", "other", "an older spec"),
        )
    }
    merged = {"agent/t3": pr(3, state="merged", task="t3"), "agent/t0": pr(4, task="t0")}
    others = {"agent/u3": pr(5, state="merged", task="someone-else")}  # not u3's PR
    o = observed(
        records=done_record,
        lanes={
            "web": LaneView("web", reachable=True, repos={"app": RepoView(prs=merged)}),
            "other": LaneView("other", reachable=True, repos={"app": RepoView(prs=others)}),
        },
    )
    planner = _Planner(d, o, NOW)
    one_by_one = {name for name, task in d.tasks.items() if planner.is_done(task)}
    assert planner.done_tasks() == one_by_one == {"t1", "t3", "u1"}
    no_prs = observed(records=done_record, repo=RepoView(prs={}))
    assert _Planner(d, no_prs, NOW).done_tasks() == {"t1", "u1"}
