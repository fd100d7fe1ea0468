"""Merging state's run records with what the lanes report, on the engine's clock: a recorded
start with no trace anywhere never happened; a run that did happen and vanished is still a
crash; and the record each view carries is what state keeps of the run — its end, its progress
and its spend with input and output tokens apart, live spend included, never dropping."""

from __future__ import annotations

import dataclasses
from typing import Any

from reconciler.manifests.models import Desired, TaskSpec, make_task
from reconciler.observe import owners_of
from reconciler.observe.merge import merge_runs, updated, view_of
from reconciler.plan import History
from reconciler.protocol import AgentResult, ExitInfo, Fingerprint, RunObs
from reconciler.record import Run
from reconciler.state import TaskRow

NOW = 200.0  # the engine clock of the pass
INTENT = Run(
    task="t",
    attempt=1,
    iteration=2,
    generation="g",
    lane="web",
    repo="app",
    run_dir="",
    started_at=100.0,
)
SPAWNED = dataclasses.replace(INTENT, run_dir="/w/.runs/t/1.2", pid=41, session_id="s-1")


def row(**kw: Any) -> Run:
    return dataclasses.replace(INTENT, **kw)


def reported(attempt: int = 1, iteration: int = 2, **kw: Any) -> RunObs:
    return RunObs(
        task="t",
        repo="app",
        attempt=attempt,
        iteration=iteration,
        run_dir=f"/w/.runs/t/{attempt}.{iteration}",
        workspace="/w/app/t",
        started_at=90.0,
        **{"generation": "g", "supervisor": None, "alive": False, **kw},
    )


def keys(views: tuple[Any, ...]) -> list[tuple[int, int]]:
    return [(v.attempt, v.iteration) for v in views]


def test_an_intent_its_lane_does_not_know_never_started() -> None:
    earlier = row(iteration=1, run_dir="/w/.runs/t/1.1", outcome="failed", ended_at=95.0)
    merged, unstarted = merge_runs([("web", reported(1, 1))], [earlier, INTENT], set(), {}, NOW)
    assert keys(merged["t"]) == [(1, 1)]  # the planner sees 1.1 and plans 1.2 again
    assert keys(unstarted) == [(1, 2)]
    assert unstarted[0].run_dir == "" and unstarted[0].lane == "web"


def test_an_intent_on_an_unreachable_lane_is_left_alone() -> None:
    merged, unstarted = merge_runs([], [INTENT], {"web"}, {}, NOW)
    assert merged == {} and unstarted == ()


def test_an_intent_its_lane_reports_was_spawned() -> None:
    merged, unstarted = merge_runs([("web", reported(1, 2))], [INTENT], set(), {}, NOW)
    assert keys(merged["t"]) == [(1, 2)] and merged["t"][0].seen_by_lane
    assert merged["t"][0].run_dir == "/w/.runs/t/1.2"
    assert merged["t"][0].record == row(run_dir="/w/.runs/t/1.2")  # recorded as spawned
    assert unstarted == ()


def test_a_run_that_happened_and_vanished_is_not_taken_for_an_unstarted_one() -> None:
    for trace in (
        {"run_dir": "/w/.runs/t/1.2"},
        {"pid": 4242},
        {"ended_at": 120.0},
        {"mark": "crashed", "marked_at": 130.0},
        {"outcome": "failed"},
    ):
        assert not row(**trace).never_started, trace
        merged, unstarted = merge_runs([], [row(**trace)], set(), {}, NOW)
        assert keys(merged["t"]) == [(1, 2)] and not merged["t"][0].seen_by_lane, trace
        assert merged["t"][0].record == row(**trace), trace  # nothing to learn: unchanged
        assert unstarted == (), trace
    assert INTENT.never_started


def test_a_recorded_run_of_another_lane_is_that_lanes_history() -> None:
    moved = {"t": ("api", "app")}  # the task is api's now
    merged, unstarted = merge_runs([], [row(outcome="failed")], set(), moved, NOW)
    assert merged == {} and unstarted == ()


def test_a_live_run_keeps_its_token_split_and_never_spends_less() -> None:
    live = reported(
        alive=True,
        cost_so_far=0.12,
        input_tokens_so_far=900,
        output_tokens_so_far=80,
        turns_so_far=3,
        tool_calls_so_far=2,
    )
    run = updated(SPAWNED, live, "web", NOW)
    assert (run.cost_usd, run.input_tokens, run.output_tokens) == (0.12, 900, 80)
    assert (run.turns, run.tool_calls) == (3, 2)
    view = view_of(run, live, "web")
    assert (view.cost_usd, view.tokens, view.turns) == (0.12, 980, 3)
    # a later report that tells less (its meter started over) takes nothing back
    less = live.model_copy(update={"cost_so_far": 0.05, "input_tokens_so_far": 100})
    again = updated(run, less, "web", NOW + 10)
    assert (again.cost_usd, again.input_tokens, again.output_tokens) == (0.12, 900, 80)
    assert again is run  # unchanged: nothing to write


def test_the_result_replaces_the_spend_so_far_with_its_own_split() -> None:
    so_far = row(run_dir="/w/.runs/t/1.2", cost_usd=0.1, input_tokens=500, output_tokens=40)
    result = AgentResult(
        ok=True,
        session_id="s-2",
        cost_usd=0.2,
        input_tokens=1200,
        output_tokens=90,
        num_turns=4,
        tool_calls=5,
    )
    ended = reported(exit=ExitInfo(exit_code=0, ended_at=150.0), result=result)
    run = updated(so_far, ended, "web", NOW)
    assert (run.cost_usd, run.input_tokens, run.output_tokens) == (0.2, 1200, 90)
    assert (run.turns, run.tool_calls, run.session_id) == (4, 5, "s-2")
    assert (run.ended_at, run.exit_code, run.signal) == (150.0, 0, None)
    # a result that tells no spend leaves what was counted while the run went on
    silent = ended.model_copy(update={"result": AgentResult(ok=True)})
    kept = updated(so_far, silent, "web", NOW)
    assert (kept.cost_usd, kept.input_tokens, kept.output_tokens) == (0.1, 500, 40)
    assert view_of(kept, silent, "web").tokens == 540


def test_progress_is_when_the_agent_s_last_event_moved_on_the_engine_clock() -> None:
    first = updated(SPAWNED, reported(alive=True, progress_offset=10), "web", NOW)
    assert (first.progress_offset, first.progress_at) == (10, NOW)
    same = updated(first, reported(alive=True, progress_offset=10), "web", NOW + 30)
    assert same is first  # no new event: it last progressed at NOW
    assert view_of(same, reported(alive=True, progress_offset=10), "web").last_progress_at == NOW
    moved = updated(first, reported(alive=True, progress_offset=25), "web", NOW + 30)
    assert (moved.progress_offset, moved.progress_at) == (25, NOW + 30)


def test_a_run_state_never_recorded_is_recorded_whole() -> None:
    fp = Fingerprint(boot_id="b", pid=77, start_time=5)
    lost = reported(
        alive=True,
        supervisor=fp,
        session_id="s-9",
        input_tokens_so_far=10,
        output_tokens_so_far=2,
    )
    run = updated(None, lost, "web", NOW)
    assert run == row(
        started_at=90.0,  # the lane's, on the reconciler's clock
        run_dir="/w/.runs/t/1.2",
        session_id="s-9",
        input_tokens=10,
        output_tokens=2,
        pid=77,
        boot_id="b",
        start_time=5,
    )


def test_a_remembered_run_ended_when_it_was_judged_and_its_verdict_is_the_planners() -> None:
    crashed = row(run_dir="/w/.runs/t/1.2", ended_at=120.0, outcome="crashed", mark="crashed")
    view = view_of(crashed, None, "web")
    assert (view.alive, view.seen_by_lane, view.marked_at) == (False, False, 120.0)
    assert (view.mark, view.outcome) == ("crashed", None)  # a crash is a mark, not an evaluation
    failed = view_of(row(outcome="failed", failures="a\nb"), None, "web")
    assert (failed.outcome, failed.failures) == ("failed", ("a", "b"))


def test_owners_are_the_manifests_then_what_state_last_knew() -> None:
    spec = TaskSpec.model_validate({"lane": "a", "repo": "app", "agent": "x", "prompt": "p"})
    desired = Desired(revision="r", tasks={"moved": make_task("moved", spec)})
    records = {
        "moved": TaskRow(name="moved", lane="old", repo="app", first_seen=0.0),
        "gone": TaskRow(name="gone", lane="b", repo="lib", first_seen=0.0),
    }
    owners = owners_of(desired, records)
    assert dict(owners) == {"moved": ("a", "app"), "gone": ("b", "lib")}
    assert len(owners) == 2 and list(owners) == ["moved", "gone"]
    assert owners.get("never") is None and "gone" in owners


def ended(attempt: int, generation: str, **kw: Any) -> Run:
    fields: dict[str, Any] = {"ended_at": 95.0, "exit_code": 0, "outcome": "succeeded", **kw}
    return row(
        attempt=attempt,
        iteration=1,
        generation=generation,
        run_dir=f"/w/.runs/t/{attempt}.1",
        **fields,
    )


def settled_keys(views: tuple[Any, ...]) -> list[tuple[int, int]]:
    return [(v.attempt, v.iteration) for v in views if v.record.settled]


def test_runs_over_for_good_of_earlier_generations_are_settled_oldest_first() -> None:
    records = [
        ended(1, "g1"),
        ended(2, "g1", outcome=None, mark="stopped"),
        ended(3, "g2"),
        ended(4, "g3"),
        ended(5, "g3"),
    ]
    merged, _ = merge_runs([], records, set(), {}, NOW, generations={"t": "g3"})
    assert settled_keys(merged["t"]) == [(1, 1), (2, 1), (3, 1)]  # never the current generation's
    # a run still alive (being stopped) holds back itself and every later one: the settled
    # runs stay a prefix, which is what the lane is told to leave out
    alive = [("web", reported(2, 1, generation="g1", alive=True))]
    merged, _ = merge_runs(alive, records, set(), {}, NOW, generations={"t": "g3"})
    assert settled_keys(merged["t"]) == [(1, 1)]
    finishing = [("web", reported(1, 1, generation="g1", finishing_since=90.0))]
    merged, _ = merge_runs(finishing, records, set(), {}, NOW, generations={"t": "g3"})
    assert settled_keys(merged["t"]) == []
    # the newest run is never settled: its end may still be inspected
    merged, _ = merge_runs([], records[:2], set(), {}, NOW, generations={"t": "g3"})
    assert settled_keys(merged["t"]) == [(1, 1)]
    # a task that left the manifests has no generation to be earlier than
    merged, _ = merge_runs([], records, set(), {}, NOW, generations={})
    assert settled_keys(merged["t"]) == []


def test_every_run_over_of_a_task_done_for_its_generation_is_settled() -> None:
    records = [ended(1, "g1"), ended(2, "g2", outcome="failed"), ended(3, "g2")]
    merged, _ = merge_runs([], records, set(), {}, NOW, generations={"t": "g2"}, done={"t"})
    # its own generation's runs and its newest too: its end was judged, the task is done
    assert settled_keys(merged["t"]) == [(1, 1), (2, 1), (3, 1)]
    # not done: its generation's runs and its newest stay open, as before
    merged, _ = merge_runs([], records, set(), {}, NOW, generations={"t": "g2"})
    assert settled_keys(merged["t"]) == [(1, 1)]
    # a run still alive, or being finished, holds back itself and every later one
    alive = [("web", reported(2, 1, generation="g2", alive=True))]
    merged, _ = merge_runs(alive, records, set(), {}, NOW, generations={"t": "g2"}, done={"t"})
    assert settled_keys(merged["t"]) == [(1, 1)]
    finishing = [("web", reported(3, 1, generation="g2", finishing_since=90.0))]
    merged, _ = merge_runs(finishing, records, set(), {}, NOW, generations={"t": "g2"}, done={"t"})
    assert settled_keys(merged["t"]) == [(1, 1), (2, 1)]
    # a run state never recorded (adopted this pass) is recorded first, then settled
    unknown = [("web", reported(4, 1, generation="g2"))]
    merged, _ = merge_runs(unknown, records, set(), {}, NOW, generations={"t": "g2"}, done={"t"})
    assert settled_keys(merged["t"]) == [(1, 1), (2, 1), (3, 1), (4, 1)]
    # a task that left the manifests has no generation: nothing of it is settled
    merged, _ = merge_runs([], records, set(), {}, NOW, generations={}, done={"t"})
    assert settled_keys(merged["t"]) == []


def test_a_lane_s_report_of_a_settled_run_is_not_a_new_run() -> None:
    history = {"t": History(runs=2, attempt=2, iteration=1, cost_usd=1.5, tokens=10)}
    world = [("web", reported(2, 1, generation="g1")), ("web", reported(3, 1, generation="g2"))]
    merged, _ = merge_runs(world, [], set(), {}, NOW, generations={"t": "g2"}, history=history)
    assert keys(merged["t"]) == [(3, 1)]
