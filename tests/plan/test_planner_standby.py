"""Standby starts: a full lane's next candidates prepared ahead, one per live run there, in grant
order; a free slot goes to a queued one first; an entry no candidate holds is withdrawn; a slot
handed to a standby run the observation still saw queued stays used."""

from __future__ import annotations

from typing import Any

from reconciler.manifests.models import Desired, LaneSpec
from reconciler.plan import (
    FailedAction,
    LaneView,
    NewRun,
    Phase,
    Plan,
    RepoView,
    TaskRecord,
    Why,
    plan,
)
from reconciler.protocol import StandbyObs
from tests.plan.test_planner import (
    NOW,
    A,
    desired,
    exited,
    gen,
    kinds,
    lane,
    observed,
    ok_result,
    run,
    task_spec,
)


def queued(d: Desired, name: str, attempt: int = 1, iteration: int = 1, **kw: str) -> StandbyObs:
    fields = {"generation": gen(d, name), "order": "1"}
    fields.update(kw)
    return StandbyObs(task=name, attempt=attempt, iteration=iteration, **fields)


def web(*entries: StandbyObs) -> dict[str, LaneView]:
    return {"web": LaneView("web", True, repos={"app": RepoView(prs={})}, standby=entries)}


def why(p: Plan, name: str) -> tuple[Phase, Why]:
    status = next(t for t in p.tasks if t.name == name)
    return status.phase, status.why


def one_slot(*names: str, **specs: object) -> Desired:
    tasks = [(n, task_spec(**specs)) for n in names]
    return desired(*tasks, lanes={"web": lane(slots=1)})


def test_a_full_lane_gets_one_standby_run_per_live_run_in_grant_order() -> None:
    d = desired(*[(n, task_spec()) for n in "abcde"], lanes={"web": lane(slots=2)})
    live = {"a": [run(d, "a", alive=True)], "b": [run(d, "b", alive=True)]}
    records = {n: TaskRecord(n, "web", "app", NOW - ord(n)) for n in "cde"}  # e is oldest
    p = plan(d, observed(runs=live, records=records), NOW)
    assert kinds(p) == [("standby", "e"), ("standby", "d")]
    first, second = p.actions
    assert first.want(NewRun).order < second.want(NewRun).order  # the queue keeps that order
    assert (first.attempt, first.iteration, first.generation) == (1, 1, gen(d, "e"))
    assert why(p, "e") == why(p, "d") == (Phase.QUEUED, Why.ON_STANDBY)
    assert why(p, "c") == (Phase.QUEUED, Why.WAITING_FOR_SLOT)
    # a lane with a free slot starts instead: nothing waits, nothing is on standby
    roomy = desired(("c", task_spec()), lanes={"web": lane(slots=3)})
    assert kinds(plan(roomy, observed(runs={}), NOW)) == [("start", "c")]


def test_a_queued_standby_run_is_left_as_it_is_and_keeps_its_place() -> None:
    d = one_slot("a", "b", "c")
    live = {"a": [run(d, "a", alive=True)]}
    # c is queued; b, older, arrives with a higher priority: c keeps the standby run
    hi = desired(
        ("a", task_spec()),
        ("b", task_spec(priority=9)),
        ("c", task_spec()),
        lanes={"web": lane(slots=1)},
    )
    p = plan(hi, observed(runs=live, lanes=web(queued(hi, "c"))), NOW)
    assert kinds(p) == []
    assert why(p, "c") == (Phase.QUEUED, Why.ON_STANDBY)
    assert why(p, "b") == (Phase.QUEUED, Why.WAITING_FOR_SLOT)


def test_a_free_slot_goes_to_the_queued_run_first_and_its_start_takes_the_entry() -> None:
    d = desired(
        ("a", task_spec()),
        ("b", task_spec(priority=9)),
        ("c", task_spec()),
        lanes={"web": lane(slots=1)},
    )
    done = {"a": [run(d, "a", exit=exited(1), mark="crashed", marked_at=NOW - 1)]}
    p = plan(d, observed(runs=done, lanes=web(queued(d, "c"))), NOW)
    starts = [(a.kind, a.task, a.attempt, a.iteration) for a in p.actions if a.kind is A.START]
    assert starts == [(A.START, "c", 1, 1)]  # the same run the entry holds
    assert ("standby", "b") in kinds(p) and ("withdraw", "c") not in kinds(p)


def test_an_entry_no_candidate_holds_is_withdrawn() -> None:
    d = one_slot("a", "b")
    live = {"a": [run(d, "a", alive=True)]}
    # paused: withdrawn, and nothing else is queued for it
    paused = desired(
        ("a", task_spec()), ("b", task_spec(paused=True)), lanes={"web": lane(slots=1)}
    )
    assert gen(paused, "b") == gen(d, "b")  # pausing is not a change of spec
    p = plan(paused, observed(runs=live, lanes=web(queued(d, "b"))), NOW)
    assert kinds(p) == [("withdraw", "b")]
    assert (p.actions[0].attempt, p.actions[0].iteration) == (1, 1)
    # removed from the manifests
    gone = one_slot("a")
    assert kinds(plan(gone, observed(runs=live, lanes=web(queued(d, "b"))), NOW)) == [
        ("withdraw", "b")
    ]
    # its spec changed: the old run is withdrawn before the new one is queued
    old = queued(d, "b", generation="0123456789abcdef")
    p = plan(d, observed(runs=live, lanes=web(old)), NOW)
    assert kinds(p) == [("withdraw", "b"), ("standby", "b")]
    assert p.actions[1].generation == gen(d, "b")
    # a second entry of the same task: the first is kept, the other withdrawn
    twice = web(queued(d, "b"), queued(d, "b", attempt=2, order="2"))
    p = plan(d, observed(runs=live, lanes=twice), NOW)
    assert [(a.kind, a.attempt) for a in p.actions] == [(A.WITHDRAW, 2)]


def test_a_slot_handed_to_an_entry_still_seen_queued_stays_used() -> None:
    d = one_slot("a", "b", "c")
    ok: dict[str, Any] = {"exit": exited(0), "result": ok_result(), "commits_ahead": 1}
    # a's supervisor took b's entry after the queue was read, and ended before its run was
    # read: b is not among the runs yet, but a's slot is b's
    handed = {"a": [run(d, "a", handed_to="b/1.1", **ok)]}
    p = plan(d, observed(runs=handed, lanes=web(queued(d, "b"))), NOW)
    assert not [a for a in p.actions if a.kind in (A.START, A.RETRY, A.ITERATE)]
    assert why(p, "c") == (Phase.QUEUED, Why.WAITING_FOR_SLOT)
    # the next observation sees b's run: it counts once, and its entry is no longer queued
    b_run = run(d, "b", alive=True, claimed_from="a/1.1")
    p = plan(d, observed(runs={**handed, "b": [b_run]}), NOW)
    assert why(p, "b") == (Phase.RUNNING, Why.RUNNING)
    assert ("start", "c") not in kinds(p) and ("standby", "c") in kinds(p)
    # an entry seen both queued and as a run (taken between the reads) is the run, not withdrawn
    p = plan(d, observed(runs={**handed, "b": [b_run]}, lanes=web(queued(d, "b"))), NOW)
    assert ("withdraw", "b") not in kinds(p) and ("start", "c") not in kinds(p)
    # once b's entry is gone and b's run is not seen either, a's slot is free again
    p = plan(d, observed(runs=handed), NOW)
    assert ("start", "b") in kinds(p)


def test_a_repository_with_a_before_run_hook_queues_nothing() -> None:
    hooked = LaneSpec.model_validate(
        {
            "maxConcurrency": 1,
            "repos": [{"name": "app", "checkout": "~/app", "hooks": {"beforeRun": ["prep"]}}],
        }
    )
    d = desired(("a", task_spec()), ("b", task_spec()), lanes={"web": hooked})
    p = plan(d, observed(runs={"a": [run(d, "a", alive=True)]}), NOW)
    assert kinds(p) == []
    assert why(p, "b") == (Phase.QUEUED, Why.WAITING_FOR_SLOT)


def test_withdrawals_come_first_in_the_plan_and_round_trip_through_json() -> None:
    d = one_slot("a", "b", "c")
    live = {"a": [run(d, "a", alive=True)]}
    stale = queued(d, "c", generation="0123456789abcdef")
    p = plan(d, observed(runs=live, lanes=web(stale)), NOW)
    assert kinds(p) == [("withdraw", "c"), ("standby", "b")]
    for action in p.actions:
        assert type(action).from_json(action.to_json()) == action
    assert p.actions[1].to_json()["standbyOrder"] == p.actions[1].want(NewRun).order


def test_a_lane_over_its_slots_queues_nothing_and_withdraws_what_it_queued() -> None:
    # its slots were lowered to 1 while two runs were live: the lane drains before it refills
    d = one_slot("a", "b", "c")
    live = {"a": [run(d, "a", alive=True)], "b": [run(d, "b", alive=True)]}
    p = plan(d, observed(runs=live, lanes=web(queued(d, "c"))), NOW)
    assert kinds(p) == [("withdraw", "c")]
    assert why(p, "c") == (Phase.QUEUED, Why.WAITING_FOR_SLOT)


def test_a_standby_that_failed_for_a_lasting_reason_waits_its_backoff() -> None:
    d = one_slot("a", "b")
    live = {"a": [run(d, "a", alive=True)]}
    failed = FailedAction("standby", "prepare-workspace failed: a directory is in the way", NOW, 1)
    records = {"b": TaskRecord("b", "web", "app", NOW - 9, failed=failed)}
    p = plan(d, observed(runs=live, records=records), NOW)
    assert kinds(p) == []  # not queued again every pass: it waits for a slot, as any task
    assert why(p, "b") == (Phase.QUEUED, Why.WAITING_FOR_SLOT)
    assert p.requeue is not None and p.requeue.subject == "b"
    later = plan(d, observed(runs=live, records=records), p.requeue.at)  # its backoff ended
    assert kinds(later) == [("standby", "b")]
