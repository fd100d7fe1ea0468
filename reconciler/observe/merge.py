"""The merge of one pass: state's run records with the runs the lanes report.

Pure: no I/O and no clock of its own (``now`` is the engine's). For every run it gives the
planner's view (``RunView``) and, inside it, the run's record brought up to date
(``RunView.record``): what apply writes back to state. Both come from the same figures, so what
the planner counted of a run (its spend against the budgets, its progress against the stall
timeout) is what state keeps of it, the input and output tokens apart.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable, Mapping
from typing import Any, Literal, TypeVar

from reconciler.plan import History, RunView
from reconciler.protocol import RunObs
from reconciler.record import Run, RunId

Owners = Mapping[str, tuple[str, str]]  # task → (lane, repo) that may report its runs


def merge_runs(
    world: Iterable[tuple[str, RunObs]],
    records: Iterable[Run],
    unreachable: set[str],
    owners: Owners,
    now: float,
    *,
    generations: Mapping[str, str] | None = None,
    history: Mapping[str, History] | None = None,
    done: Collection[str] = (),
) -> tuple[dict[str, tuple[RunView, ...]], tuple[RunView, ...]]:
    """The runs the lanes report (``(lane, report)``, each lane's own already), merged with
    their records, plus the runs only state remembers, by task and in order; and apart, the
    recorded starts that never happened (which cost no attempt: they are planned again).

    A recorded run of another lane than the task's owner (the task moved, or a lane once
    reported a run of a task before it existed) is history of that lane, not of this task's
    convergence; a run of an unreachable lane is neither seen nor known to be gone.

    ``records`` are state's open runs; ``history`` each task's settled ones (a report of one of
    those is not a new run: it is dropped). Runs that are over for good and of an earlier
    generation than ``generations`` gives their task are settled in their records, and every
    run over of a task ``done`` for its generation (``settle``).
    """
    by_key: dict[RunId, Run] = {(r.task, r.attempt, r.iteration): r for r in records}
    seen: set[RunId] = set()
    merged: dict[str, list[RunView]] = {}
    unstarted: list[RunView] = []
    history = history or {}
    for lane, report in world:
        past = history.get(report.task)
        if past is not None and (report.attempt, report.iteration) <= (
            past.attempt,
            past.iteration,
        ):
            continue
        key = (report.task, report.attempt, report.iteration)
        seen.add(key)
        run = updated(by_key.get(key), report, lane, now)
        merged.setdefault(report.task, []).append(view_of(run, report, lane))
    for key, run in by_key.items():
        if key in seen or run.lane in unreachable:
            continue
        owner = owners.get(run.task)
        if owner is not None and owner != (run.lane, run.repo):
            continue
        # only state knows this run: its directory is gone (or never was); it is not alive
        view = view_of(run, None, run.lane)
        (unstarted if run.never_started else merged.setdefault(run.task, [])).append(view)
    generations = generations or {}
    by_task = {
        task: settle(
            sorted(views, key=lambda v: (v.attempt, v.iteration)),
            generations.get(task),
            done=task in done,
        )
        for task, views in merged.items()
    }
    return by_task, tuple(unstarted)


def settle(
    views: list[RunView], generation: str | None, *, done: bool = False
) -> tuple[RunView, ...]:
    """A task's runs in order, those over for good settled in their records: the oldest runs up
    to the first that is of the task's ``generation`` (None: the task left the manifests), still
    alive, being finished, or the newest (whose end may still be inspected). A settled run's
    figures no longer change, so state keeps them as its task's history; settling in order keeps
    the settled runs a prefix, which is what a lane is told to leave out.

    A task ``done`` for its generation (its record says so) has had its last end inspected and
    judged: every run of it that is over is settled, the newest and its own generation's too.
    A pass then reads nothing of a done task's runs, and costs what the open tasks do, however
    many tasks are done."""
    if generation is None:
        return tuple(views)
    for i, view in enumerate(views if done else views[:-1]):
        run = view.record
        if run is None or view.alive or view.finishing_since is not None:
            break
        if view.generation == generation and not done:
            break
        if not run.settled:
            views[i] = dataclasses.replace(view, record=dataclasses.replace(run, settled=True))
    return tuple(views)


def updated(record: Run | None, report: RunObs, lane: str, now: float) -> Run:
    """What state should hold of a run its lane reports: its record (a new one when state never
    recorded the run) with the run's directory, process, end, progress and spend as reported.
    Unchanged figures give back the record itself, so that nothing is written for them."""
    run = record or Run(
        task=report.task,
        attempt=report.attempt,
        iteration=report.iteration,
        generation=report.generation,
        lane=lane,
        repo=report.repo,
        run_dir=report.run_dir,
        started_at=report.started_at,
    )
    changes: dict[str, Any] = {}
    if not run.run_dir and report.run_dir:
        changes["run_dir"] = report.run_dir  # spawned, but not recorded as such
    fingerprint = report.supervisor
    if run.pid is None and fingerprint is not None:
        changes.update(
            pid=fingerprint.pid, boot_id=fingerprint.boot_id, start_time=fingerprint.start_time
        )
    if report.exit is not None and run.ended_at is None:
        end = report.exit
        changes.update(ended_at=end.ended_at, exit_code=end.exit_code, signal=end.signal)
    if report.progress_offset is not None and (
        run.progress_at is None or run.progress_offset != report.progress_offset
    ):
        # the agent's last own event moved since the record: it progressed now
        changes.update(progress_offset=report.progress_offset, progress_at=now)
    changes.update(_spend(run, report))
    changes = {k: v for k, v in changes.items() if getattr(run, k) != v}
    return dataclasses.replace(run, **changes) if changes else run


def _spend(run: Run, report: RunObs) -> dict[str, Any]:
    """A run's session and spend: its result's figures once it has one (what the result does
    not tell stays as counted so far), else the most its events have told, so that a run
    stopped before its result was read (a budget stop, a pause) stays counted."""
    result = report.result
    # the session the agent reported wins over the one it was started with
    session = (result.session_id if result else None) or run.session_id or report.session_id
    if result is not None:
        told = result.input_tokens is not None or result.output_tokens is not None
        return {
            "session_id": session,
            "cost_usd": run.cost_usd if result.cost_usd is None else result.cost_usd,
            "input_tokens": result.input_tokens if told else run.input_tokens,
            "output_tokens": result.output_tokens if told else run.output_tokens,
            "turns": result.num_turns,
            "tool_calls": result.tool_calls,
        }
    return {
        "session_id": session,
        "cost_usd": _most(run.cost_usd, report.cost_so_far),
        "input_tokens": _most(run.input_tokens, report.input_tokens_so_far),
        "output_tokens": _most(run.output_tokens, report.output_tokens_so_far),
        "turns": _latest(report.turns_so_far, run.turns),
        "tool_calls": _latest(report.tool_calls_so_far, run.tool_calls),
    }


N = TypeVar("N", int, float)


def _most(recorded: N | None, so_far: N | None) -> N | None:
    if so_far is None:
        return recorded
    return so_far if recorded is None else max(recorded, so_far)


def _latest(so_far: int | None, recorded: int | None) -> int | None:
    return recorded if so_far is None else so_far


def view_of(run: Run, report: RunObs | None, lane: str) -> RunView:
    """The planner's view of a run: its record, and what ``lane`` reports of it now (``None``:
    only state knows the run; it is not alive, and it ended when it was judged)."""
    recorded: dict[str, Any] = {
        "task": run.task,
        "lane": lane,
        "attempt": run.attempt,
        "iteration": run.iteration,
        "mark": run.mark,
        "outcome": _evaluation(run),
        "failures": tuple((run.failures or "").splitlines()),
        "session_id": run.session_id,
        "cost_usd": run.cost_usd or 0.0,
        "tokens": run.tokens,
        "turns": run.turns,
        "tool_calls": run.tool_calls,
        "record": run,
    }
    if report is None:
        return RunView(
            **recorded,
            repo=run.repo,
            generation=run.generation,
            started_at=run.started_at,
            run_dir=run.run_dir,
            marked_at=run.marked_at or run.ended_at,
            seen_by_lane=False,
        )
    return RunView(
        **recorded,
        repo=report.repo,
        generation=report.generation,
        started_at=report.started_at,  # on the reconciler's clock already (``on_our_clock``)
        run_dir=report.run_dir,
        marked_at=run.marked_at,
        seen_by_lane=True,
        alive=report.alive,
        exit=report.exit,
        last_output_at=report.last_output_at,
        result=report.result,
        commits_ahead=report.commits_ahead,
        dirty=tuple(report.dirty),
        progress_offset=report.progress_offset,
        last_progress_at=run.progress_at if report.progress_offset is not None else None,
        last_event=report.last_event,
        left=report.left,
        finishing_since=report.finishing_since,
        handed_to=report.handed_to,
        claimed_from=report.claimed_from,
    )


def _evaluation(run: Run) -> Literal["succeeded", "failed"] | None:
    """The planner's evaluation recorded of a run (a crash or stall is its mark instead)."""
    return run.outcome if run.outcome in ("succeeded", "failed") else None
