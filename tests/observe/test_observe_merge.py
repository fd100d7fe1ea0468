"""Merging state's run rows with what the lanes report: a recorded start with no trace anywhere
never happened; a run that did happen and vanished is still a crash."""

from __future__ import annotations

import dataclasses
from typing import Any

from reconciler.observe import _merge_runs, never_started
from reconciler.protocol import RunObs
from reconciler.state import RunRow

NOW = 200.0  # the engine clock of the pass
INTENT = RunRow(
    task="t",
    attempt=1,
    iteration=2,
    generation="g",
    lane="web",
    repo="app",
    run_dir="",
    started_at=100.0,
)


def row(**kw: Any) -> RunRow:
    return dataclasses.replace(INTENT, **kw)


def reported(attempt: int, iteration: int) -> RunObs:
    return RunObs(
        task="t",
        repo="app",
        attempt=attempt,
        iteration=iteration,
        generation="g",
        run_dir=f"/w/.runs/t/{attempt}.{iteration}",
        workspace="/w/app/t",
        started_at=90.0,
        supervisor=None,
        alive=False,
    )


def keys(views: tuple[Any, ...]) -> list[tuple[int, int]]:
    return [(v.attempt, v.iteration) for v in views]


def test_an_intent_its_lane_does_not_know_never_started() -> None:
    earlier = row(iteration=1, run_dir="/w/.runs/t/1.1", outcome="failed", ended_at=95.0)
    merged, unstarted = _merge_runs([("web", reported(1, 1))], [earlier, INTENT], set(), {}, NOW)
    assert keys(merged["t"]) == [(1, 1)]  # the planner sees 1.1 and plans 1.2 again
    assert keys(unstarted) == [(1, 2)]
    assert unstarted[0].run_dir == "" and unstarted[0].lane == "web"


def test_an_intent_on_an_unreachable_lane_is_left_alone() -> None:
    merged, unstarted = _merge_runs([], [INTENT], {"web"}, {}, NOW)
    assert merged == {} and unstarted == ()


def test_an_intent_its_lane_reports_was_spawned() -> None:
    merged, unstarted = _merge_runs([("web", reported(1, 2))], [INTENT], set(), {}, NOW)
    assert keys(merged["t"]) == [(1, 2)] and merged["t"][0].seen_by_lane
    assert merged["t"][0].run_dir == "/w/.runs/t/1.2"
    assert unstarted == ()


def test_a_run_that_happened_and_vanished_is_not_taken_for_an_unstarted_one() -> None:
    for trace in (
        {"run_dir": "/w/.runs/t/1.2"},
        {"pid": 4242},
        {"ended_at": 120.0},
        {"mark": "crashed", "marked_at": 130.0},
        {"outcome": "failed"},
    ):
        assert not never_started(row(**trace)), trace
        merged, unstarted = _merge_runs([], [row(**trace)], set(), {}, NOW)
        assert keys(merged["t"]) == [(1, 2)] and not merged["t"][0].seen_by_lane, trace
        assert unstarted == (), trace
    assert never_started(INTENT)
