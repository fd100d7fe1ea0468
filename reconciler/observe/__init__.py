"""Observation: read the world through the lanes and merge it with the state records.

Read-only: nothing here changes a lane, a process, a repository or the state. One batched request
per lane per pass (pre-flight + observe); a lane that cannot be reached is reported unreachable so
that the planner treats its tasks as ``unknown`` and prunes or restarts nothing of it.

Observations are owned: a lane may lie about its own tasks, never about another lane's. A run
counts only when the lane reporting it is the lane its task is assigned to at this revision
(or, for a task no longer in the manifests, the lane state last knew it in), in that task's
repository; anything else becomes a ``Foreign`` entry — reported, never planned on — so no run,
exit, check output or spend of one lane can stop, complete, open a PR for, or reach the prompt
of another lane's task. Worktrees, branches and PRs are owned by construction: the planner reads
them only from the task's own lane and repository.
"""

from __future__ import annotations

import concurrent.futures
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from reconciler.lanes import LaneClient, LaneUnavailable, RequestFailed, unwrap
from reconciler.manifests.models import NAME_PATTERN, Desired
from reconciler.plan import (
    FailedAction,
    Foreign,
    LaneView,
    Observed,
    RepoView,
    RunView,
    TaskRecord,
)
from reconciler.protocol import (
    ObserveRequest,
    ObserveResult,
    PreflightResult,
    PullRequest,
    RepoObs,
    RunObs,
)
from reconciler.state import RunRow, Store, TaskRow

NAME = re.compile(NAME_PATTERN)


def _needs_inspection(rows: list[RunRow]) -> str | None:
    """The latest recorded run of a task, when its outcome has not been recorded yet."""
    if not rows:
        return None
    last = rows[-1]
    if last.outcome is None and last.mark is None:
        return f"{last.task}/{last.attempt}.{last.iteration}"
    return None


Owners = Mapping[str, tuple[str, str]]  # task → (lane, repo) that may report its runs


def owners_of(desired: Desired, records: Mapping[str, TaskRow]) -> dict[str, tuple[str, str]]:
    """Each task's owning (lane, repo): the manifests', else what state last knew."""
    owners = {name: (row.lane, row.repo) for name, row in records.items()}
    owners.update((name, (t.spec.lane, t.spec.repo)) for name, t in desired.tasks.items())
    return owners


def _sort_owned(
    lane: str, spec_repos: set[str], runs: list[RunObs], owners: Owners
) -> tuple[list[RunObs], list[Foreign]]:
    """The runs ``lane`` may report, and the rest as foreign observations. A run of a task no
    one owns (found only in this lane's world, e.g. after the state was lost) is the lane's own
    when it names a real task name and one of the lane's repositories."""
    owned: list[RunObs] = []
    foreign: list[Foreign] = []
    for run in runs:
        owner = owners.get(run.task)
        if owner is None:
            ok = bool(NAME.match(run.task)) and run.repo in spec_repos
        else:
            ok = owner == (lane, run.repo)
        if ok:
            owned.append(run)
        else:
            foreign.append(
                Foreign(
                    lane=lane,
                    task=run.task[:100],
                    run=f"{run.attempt}.{run.iteration}",
                    repo=run.repo[:100],
                    owner=owner[0] if owner else "",
                )
            )
    return owned, foreign


def _observe_lane(
    desired: Desired,
    lane: LaneClient,
    records: Mapping[str, TaskRow],
    runs_by_task: Mapping[str, list[RunRow]],
    owners: Owners,
    *,
    clock: Callable[[], float],
) -> tuple[LaneView, list[RunObs], list[Foreign]]:
    spec = lane.spec
    mine = [n for n, t in desired.tasks.items() if t.spec.lane == lane.name]
    mine += [n for n, r in records.items() if r.lane == lane.name and n not in desired.tasks]
    inspect = sorted(k for n in mine if (k := _needs_inspection(runs_by_task.get(n, []))))
    preflight = lane.preflight_request(desired)

    prefix = desired.config.branch_prefix
    # PR feedback is read in full unless a task's iterateOn asks for less; a removed task's
    # PR is about to be closed and needs none.
    feedback: dict[str, list[Literal["checks", "reviews"]]] = {}
    for name in mine:
        task = desired.tasks.get(name)
        wanted = list(task.spec.pr.iterate_on) if task is not None else []
        if set(wanted) != {"checks", "reviews"}:
            feedback[f"{prefix}{name}"] = wanted

    def request(keys: list[str]) -> ObserveRequest:
        return ObserveRequest(lane=lane.ref, branch_prefix=prefix, inspect=keys, feedback=feedback)

    repos_of_lane = {r.name for r in spec.repos}
    try:
        pre_resp, obs_resp = lane.call([preflight, request(inspect)])
        result = unwrap(obs_resp, ObserveResult)
        checks = unwrap(pre_resp, PreflightResult).checks
        runs, foreign = _sort_owned(lane.name, repos_of_lane, result.runs, owners)
        # Runs that ended but that state never recorded (a crash between spawn and record, or a
        # lost state directory) are inspected in a second, rare round trip.
        extra = _unrecorded_ends(runs, runs_by_task, set(inspect))
        if extra:
            result = lane.one(request(sorted(set(inspect) | set(extra))), ObserveResult)
            runs, foreign = _sort_owned(lane.name, repos_of_lane, result.runs, owners)
    except (LaneUnavailable, RequestFailed) as exc:
        return LaneView(lane.name, reachable=False, error=str(exc)), [], []

    repos: dict[str, RepoView] = {}
    for repo in spec.repos:
        obs = result.repos.get(repo.name)
        repos[repo.name] = _repo_view(desired, obs) if obs else RepoView(error="not observed")
    view = LaneView(
        lane.name,
        reachable=True,
        repos=repos,
        preflight=tuple(checks),
    )
    return view, on_our_clock(runs, clock() - result.now), foreign


SKEW_TOLERANCE = 2.0  # seconds: a round trip and ordinary drift


def on_our_clock(runs: list[RunObs], skew: float) -> list[RunObs]:
    """A lane's run timestamps moved onto the reconciler's clock. A host whose clock is off
    (no NTP) would otherwise make runs look stalled, or never stall, and backoffs wrong."""
    if abs(skew) < SKEW_TOLERANCE:
        return runs
    moved = []
    for run in runs:
        update: dict[str, object] = {"started_at": run.started_at + skew}
        if run.last_output_at is not None:
            update["last_output_at"] = run.last_output_at + skew
        if run.exit is not None:
            update["exit"] = run.exit.model_copy(update={"ended_at": run.exit.ended_at + skew})
        moved.append(run.model_copy(update=update))
    return moved


def _unrecorded_ends(
    runs: list[RunObs], runs_by_task: Mapping[str, list[RunRow]], inspected: set[str]
) -> list[str]:
    """Keys of each task's latest run when it has ended and state has no verdict on it."""
    latest: dict[str, RunObs] = {}
    for run in runs:
        best = latest.get(run.task)
        if best is None or (run.attempt, run.iteration) > (best.attempt, best.iteration):
            latest[run.task] = run
    keys = []
    for run in latest.values():
        key = f"{run.task}/{run.attempt}.{run.iteration}"
        recorded = next(
            (
                r
                for r in runs_by_task.get(run.task, [])
                if (r.attempt, r.iteration) == (run.attempt, run.iteration)
            ),
            None,
        )
        judged = recorded is not None and (recorded.outcome is not None or bool(recorded.mark))
        if run.exit is not None and key not in inspected and not judged:
            keys.append(key)
    return sorted(keys)


def _repo_view(desired: Desired, obs: RepoObs) -> RepoView:
    prefix = desired.config.branch_prefix
    worktrees = {
        wt.branch[len(prefix) :]: wt.path
        for wt in obs.worktrees
        if wt.branch and wt.branch.startswith(prefix)
    }
    prs: dict[str, PullRequest] | None = None
    if obs.prs is not None:
        prs = {}
        for pr in sorted(obs.prs, key=lambda p: p.number):
            prs[pr.head] = pr  # the newest PR of a branch wins
    return RepoView(
        worktrees=worktrees,
        branches=dict(obs.branches),
        remote_branches=dict(obs.remote_branches),
        prs=prs,
        error=None if obs.ok else (obs.error or "repository not usable"),
        pool=dict(obs.pool),
    )


def never_started(row: RunRow) -> bool:
    """A run that state recorded as about to start (the intent) and nothing more: no process,
    no run directory, no end, no verdict. When its reachable lane does not report it either,
    the start never happened (the reconciler died before spawning it)."""
    return (
        row.pid is None
        and not row.run_dir
        and row.ended_at is None
        and row.outcome is None
        and row.mark is None
    )


def _merge_runs(
    world: list[tuple[str, RunObs]],
    rows: list[RunRow],
    unreachable: set[str],
    owners: Owners,
    now: float,
) -> tuple[dict[str, tuple[RunView, ...]], tuple[RunView, ...]]:
    """Runs as the lanes report them, plus the runs only state remembers, by task; and apart,
    the recorded starts that never happened (which cost no attempt: they are planned again).
    A recorded run of another lane than the task's owner (the task moved, or a lane once
    reported a run of a task before it existed) is history of that lane, not of this task's
    convergence."""
    by_key: dict[tuple[str, int, int], RunRow] = {(r.task, r.attempt, r.iteration): r for r in rows}
    seen: set[tuple[str, int, int]] = set()
    merged: dict[str, list[RunView]] = {}
    unstarted: list[RunView] = []
    for lane, obs in world:
        key = (obs.task, obs.attempt, obs.iteration)
        seen.add(key)
        merged.setdefault(obs.task, []).append(_reported(lane, obs, by_key.get(key), now))
    for row in rows:
        key = (row.task, row.attempt, row.iteration)
        if key in seen or row.lane in unreachable:
            continue
        owner = owners.get(row.task)
        if owner is not None and owner != (row.lane, row.repo):
            continue
        # only state knows this run: its directory is gone (or never was); it is not alive
        view = _remembered(row)
        (unstarted if never_started(row) else merged.setdefault(row.task, [])).append(view)
    by_task = {
        task: tuple(sorted(views, key=lambda v: (v.attempt, v.iteration)))
        for task, views in merged.items()
    }
    return by_task, tuple(unstarted)


@dataclass(frozen=True)
class _Spend:
    cost_usd: float
    tokens: int
    turns: int | None
    tool_calls: int | None


def _spend(obs: RunObs, row: RunRow | None) -> _Spend:
    """What a reported run spent: its result's figures, else state's, and for a running agent
    at least what its events say so far."""
    result = obs.result
    recorded = _recorded_spend(row) if row is not None else _Spend(0.0, 0, None, None)
    if result is not None:
        cost = result.cost_usd if result.cost_usd is not None else recorded.cost_usd
        tokens = (result.input_tokens or 0) + (result.output_tokens or 0)
        return _Spend(cost or recorded.cost_usd, tokens, result.num_turns, result.tool_calls)
    return _Spend(
        max(recorded.cost_usd, obs.cost_so_far or 0.0),
        max(recorded.tokens, obs.tokens_so_far or 0),
        obs.turns_so_far if obs.turns_so_far is not None else recorded.turns,
        obs.tool_calls_so_far if obs.tool_calls_so_far is not None else recorded.tool_calls,
    )


def _recorded_spend(row: RunRow) -> _Spend:
    tokens = (row.input_tokens or 0) + (row.output_tokens or 0)
    return _Spend(row.cost_usd or 0.0, tokens, row.turns, row.tool_calls)


def _progress_at(obs: RunObs, row: RunRow | None, now: float) -> float | None:
    """When the agent last progressed: now if its last own event moved since state's record."""
    if obs.progress_offset is None:
        return None
    if row is None or row.progress_at is None or row.progress_offset != obs.progress_offset:
        return now
    return row.progress_at


def _reported(lane: str, obs: RunObs, row: RunRow | None, now: float) -> RunView:
    """A run its lane reports, with what state recorded of it."""
    spent = _spend(obs, row)
    result = obs.result
    return RunView(
        task=obs.task,
        lane=lane,
        repo=obs.repo,
        attempt=obs.attempt,
        iteration=obs.iteration,
        generation=obs.generation,
        started_at=obs.started_at,
        run_dir=obs.run_dir,
        alive=obs.alive,
        exit=obs.exit,
        last_output_at=obs.last_output_at,
        result=result,
        commits_ahead=obs.commits_ahead,
        dirty=tuple(obs.dirty),
        mark=row.mark if row else None,  # type: ignore[arg-type]
        marked_at=row.marked_at if row else None,
        seen_by_lane=True,
        outcome=_outcome(row),
        failures=tuple(row.failures.splitlines()) if row and row.failures else (),
        session_id=(row.session_id if row else None) or (result.session_id if result else None),
        cost_usd=spent.cost_usd,
        tokens=spent.tokens,
        turns=spent.turns,
        tool_calls=spent.tool_calls,
        progress_offset=obs.progress_offset,
        last_event=obs.last_event,
        last_progress_at=_progress_at(obs, row, now),
    )


def _remembered(row: RunRow) -> RunView:
    """A run only state knows: not alive, its figures as recorded."""
    spent = _recorded_spend(row)
    return RunView(
        task=row.task,
        lane=row.lane,
        repo=row.repo,
        attempt=row.attempt,
        iteration=row.iteration,
        generation=row.generation,
        started_at=row.started_at,
        run_dir=row.run_dir,
        alive=False,
        mark=row.mark,  # type: ignore[arg-type]
        marked_at=row.marked_at or row.ended_at,
        seen_by_lane=False,
        outcome=_outcome(row),
        failures=tuple((row.failures or "").splitlines()),
        session_id=row.session_id,
        cost_usd=spent.cost_usd,
        tokens=spent.tokens,
        turns=spent.turns,
        tool_calls=spent.tool_calls,
    )


def _outcome(row: RunRow | None) -> Literal["succeeded", "failed"] | None:
    if row is None:
        return None
    if row.outcome == "succeeded":
        return "succeeded"
    if row.outcome == "failed":
        return "failed"
    return None


def observe(
    desired: Desired,
    store: Store,
    lanes: Mapping[str, LaneClient],
    clock: Callable[[], float] = time.time,
) -> Observed:
    """Observe every lane of ``desired`` (in parallel) and merge with the state records.

    The records, the runs and the serial are read in one snapshot, before any lane is asked: a
    plan saved with that serial is refused once anything was recorded after what it saw (an
    ``apply`` committing while the lanes answer included). Times are ``clock``'s, the engine's.
    """
    with store.snapshot():
        records = store.tasks()
        rows = store.runs()
        serial = store.serial()
    runs_by_task: dict[str, list[RunRow]] = {}
    for row in rows:
        runs_by_task.setdefault(row.task, []).append(row)
    views: dict[str, LaneView] = {}
    world: list[tuple[str, RunObs]] = []
    foreign: list[Foreign] = []
    owners = owners_of(desired, records)
    workers = max(1, min(8, len(lanes)))
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {
            name: pool.submit(
                _observe_lane, desired, lane, records, runs_by_task, owners, clock=clock
            )
            for name, lane in sorted(lanes.items())
        }
        for name, future in futures.items():
            view, runs, refused = future.result()
            views[name] = view
            # a run's lane is the lane whose workspace holds its directory
            world.extend((name, run) for run in runs)
            foreign.extend(refused)
    for record in records.values():
        if record.lane not in views and record.lane not in lanes:
            views[record.lane] = LaneView(
                record.lane,
                reachable=False,
                error=f"lane {record.lane} is no longer in the manifests",
            )
    unreachable = {name for name, view in views.items() if not view.reachable}
    merged, unstarted = _merge_runs(world, rows, unreachable, owners, clock())
    return Observed(
        revision=desired.revision,
        serial=serial,
        lanes=views,
        records={name: _record(row) for name, row in records.items()},
        runs=merged,
        foreign=tuple(foreign),
        unstarted=unstarted,
    )


def _record(row: TaskRow) -> TaskRecord:
    return TaskRecord(
        name=row.name,
        lane=row.lane,
        repo=row.repo,
        first_seen=row.first_seen,
        done=row.done,
        done_generation=row.done_generation,
        pr_number=row.pr_number,
        pr_intent=row.pr_intent,
        failed=FailedAction(
            kind=row.failed_action,
            message=row.failed_message or "",
            at=row.failed_at or 0.0,
            count=row.failed_count,
        )
        if row.failed_action
        else None,
    )
