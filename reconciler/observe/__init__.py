"""Observation: read the world through the lanes and merge it with the state records.

Read-only: nothing here changes a lane, a process, a repository or the state. One batched request
per lane per pass (pre-flight + observe); a lane that cannot be reached is reported unreachable so
that the planner treats its tasks as ``unknown`` and prunes or restarts nothing of it.

A lane belongs to one state directory (the owner its node records): one that another state owns is
reported unreachable, with the owner and the fix, and nothing is planned for it, so two state
directories never drive the same lane.

Observations are owned: a lane may lie about its own tasks, never about another lane's. A run
counts only when the lane reporting it is the lane its task is assigned to at this revision
(or, for a task no longer in the manifests, the lane state last knew it in), in that task's
repository; anything else becomes a ``Foreign`` entry — reported, never planned on — so no run,
exit, check output or spend of one lane can stop, complete, open a PR for, or reach the prompt
of another lane's task. Worktrees, branches and PRs are owned by construction: the planner reads
them only from the task's own lane and repository.

The merge of the runs the lanes report with state's records of them is pure (``merge``): it
gives the planner its views and, within each, the record apply writes back.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Set
from dataclasses import dataclass, field
from typing import Literal

from reconciler import workers
from reconciler.lanes import LaneClient, LaneUnavailable, RequestFailed, unwrap
from reconciler.manifests.models import NAME_PATTERN, Desired
from reconciler.observe.merge import Owners, merge_runs
from reconciler.plan import (
    Expired,
    FailedAction,
    Foreign,
    History,
    HourSpend,
    LaneView,
    Observed,
    RepoView,
    RunView,
    TaskRecord,
)
from reconciler.plan.timing import DAY
from reconciler.protocol import (
    ObserveRequest,
    ObserveResult,
    PreflightCheck,
    PreflightRequest,
    PreflightResult,
    PullRequest,
    RateLimit,
    Recheck,
    RepoObs,
    RunObs,
    owned_elsewhere,
    owns,
)
from reconciler.record import Run
from reconciler.state import HistoryRow, HistoryRows, SpendRow, Store, TaskRow, Version

NAME = re.compile(NAME_PATTERN)
PRUNED = 200  # expired run directories a pass removes at most: a backlog goes over a few passes
OBSERVE_WORKERS = 32  # lanes asked at once (each mostly waits on its node, or the network)


def _needs_inspection(runs: list[Run]) -> str | None:
    """The latest recorded run of a task, when its outcome has not been recorded yet."""
    if not runs or runs[-1].judged:
        return None
    return runs[-1].key


class _Owners(Mapping[str, tuple[str, str]]):
    """Each task's owning (lane, repo): the manifests', else what state last knew. Looked up
    when asked: a pass asks only about the tasks that have runs, of 100,000 perhaps a few."""

    def __init__(self, desired: Desired, records: Mapping[str, TaskRow]) -> None:
        self._tasks = desired.tasks
        self._records = records

    def __getitem__(self, name: str) -> tuple[str, str]:
        task = self._tasks.get(name)
        if task is not None:
            return task.spec.lane, task.spec.repo
        row = self._records[name]
        return row.lane, row.repo

    def __iter__(self) -> Iterator[str]:
        yield from self._tasks
        yield from (name for name in self._records if name not in self._tasks)

    def __len__(self) -> int:
        return len(self._tasks) + sum(1 for name in self._records if name not in self._tasks)


def owners_of(desired: Desired, records: Mapping[str, TaskRow]) -> Mapping[str, tuple[str, str]]:
    """Each task's owning (lane, repo): the manifests', else what state last knew."""
    return _Owners(desired, records)


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


def _feedback(
    desired: Desired, here: str, removed: list[str]
) -> dict[str, list[Literal["checks", "reviews"]]]:
    """Branch → the PR feedback to read, where it is not all of it: a task's ``iterateOn`` may
    ask for less, and a removed task's PR is about to be closed and needs none. (Tasks share
    equal pr settings: each is looked at once.)"""
    prefix = desired.config.branch_prefix
    feedback: dict[str, list[Literal["checks", "reviews"]]] = {}
    partial: dict[int, list[Literal["checks", "reviews"]] | None] = {}
    for name, task in desired.by_lane.get(here, {}).items():
        pr = task.spec.pr
        key = id(pr)
        if key not in partial:
            asked = list(pr.iterate_on)
            partial[key] = asked if set(asked) != {"checks", "reviews"} else None
        wanted = partial[key]
        if wanted is not None:
            feedback[f"{prefix}{name}"] = list(wanted)
    for name in removed:
        feedback[f"{prefix}{name}"] = []
    return feedback


def _exchange(
    lane: LaneClient,
    preflight: PreflightRequest,
    request: ObserveRequest,
    clock: Callable[[], float],
) -> tuple[ObserveResult, list[PreflightCheck]]:
    """The lane's observation and its pre-flight checks, in one batch; a pre-flight that passed
    recently is not asked again (``LaneClient.passed_preflight``)."""
    asked_at = clock()
    passed = lane.passed_preflight(preflight, asked_at)
    if passed is not None:
        (answer,) = lane.call([request])
        return unwrap(answer, ObserveResult), passed
    checked, answer = lane.call([preflight, request])
    checks = unwrap(checked, PreflightResult).checks
    lane.preflight_seen(preflight, asked_at, checks)
    return unwrap(answer, ObserveResult), checks


LaneAnswer = tuple[LaneView, list[RunObs], list[Foreign]]  # a lane's view, its runs, the refused


@dataclass
class _Share:
    """What of a pass's records concerns one lane: its removed tasks (recorded on it, gone
    from the manifests) and the runs it is to read in full."""

    removed: list[str] = field(default_factory=list)
    inspect: list[str] = field(default_factory=list)


def _shares(
    desired: Desired, records: Mapping[str, TaskRow], runs_by_task: Mapping[str, list[Run]]
) -> dict[str, _Share]:
    """Every lane's share, in one go over the records (one go per lane costs lanes times tasks)."""
    shares: dict[str, _Share] = {}
    lane_of: dict[str, str] = {}
    for name, row in records.items():
        if name not in desired.tasks:
            shares.setdefault(row.lane, _Share()).removed.append(name)
            lane_of[name] = row.lane
    for name, runs in runs_by_task.items():
        task = desired.tasks.get(name)
        lane = task.spec.lane if task is not None else lane_of.get(name)
        if lane is not None and (key := _needs_inspection(runs)):
            shares.setdefault(lane, _Share()).inspect.append(key)
    for share in shares.values():
        share.inspect.sort()
    return shares


def _observe_lane(
    desired: Desired,
    lane: LaneClient,
    share: _Share,
    runs_by_task: Mapping[str, list[Run]],
    owners: Owners,
    *,
    clock: Callable[[], float],
    recheck: Sequence[Recheck] = (),
    rates: dict[tuple[str, str], RateLimit] | None = None,
    settled: Mapping[str, tuple[int, int]] | None = None,
) -> LaneAnswer:
    spec = lane.spec
    here = lane.name
    removed, inspect = share.removed, share.inspect
    preflight = lane.preflight_request(desired)
    prefix = desired.config.branch_prefix
    feedback = _feedback(desired, here, removed)

    def request(keys: list[str]) -> ObserveRequest:
        return ObserveRequest(
            lane=lane.ref,
            branch_prefix=prefix,
            inspect=keys,
            feedback=feedback,
            recheck=list(recheck),
            settled=dict(settled or {}),
        )

    repos_of_lane = {r.name for r in spec.repos}
    try:
        result, checks = _exchange(lane, preflight, request(inspect), clock)
        if result.owner is not None and not owns(result.owner, lane.state):
            detail, fix = owned_elsewhere(lane.name, result.owner)
            return LaneView(lane.name, reachable=False, error=f"{detail}; {fix}"), [], []
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
    skew = clock() - result.now
    for repo in spec.repos:
        obs = result.repos.get(repo.name)
        repos[repo.name] = _repo_view(desired, obs) if obs else RepoView(error="not observed")
        if rates is not None and obs is not None and obs.rate_limit is not None:
            rate = obs.rate_limit
            rates[(lane.name, repo.name)] = rate.model_copy(update={"at": rate.at + skew})
    view = LaneView(
        lane.name,
        reachable=True,
        repos=repos,
        preflight=tuple(checks),
        standby=tuple(result.standby),
    )
    return view, on_our_clock(runs, skew), foreign


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
    runs: list[RunObs], runs_by_task: Mapping[str, list[Run]], inspected: set[str]
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
        judged = recorded is not None and recorded.judged
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


def observe(
    desired: Desired,
    store: Store,
    lanes: Mapping[str, LaneClient],
    clock: Callable[[], float] = time.time,
    *,
    recheck: Sequence[Recheck] = (),
    rates: dict[tuple[str, str], RateLimit] | None = None,
) -> Observed:
    """Observe every lane of ``desired`` (in parallel) and merge with the state records.

    ``recheck`` names PRs whose forge feedback is read anew (a webhook named them); ``rates``,
    when given, is filled with what each (lane, repo)'s forge said of its token's rate limit.

    The records, the runs and the serial are read in one snapshot, before any lane is asked: a
    plan saved with that serial is refused once anything was recorded after what it saw (an
    ``apply`` committing while the lanes answer included). Times are ``clock``'s, the engine's.
    """
    seen = _recorded(desired, store, clock())
    records, recorded, histories, spend = seen.tasks, seen.runs, seen.histories, seen.spend
    runs_by_task: dict[str, list[Run]] = {}
    for run in recorded:
        runs_by_task.setdefault(run.task, []).append(run)
    owners = owners_of(desired, records)
    history, settled = _history_of(histories, desired, owners)

    shares = _shares(desired, records, runs_by_task)

    def ask(lane: LaneClient) -> LaneAnswer:
        return _observe_lane(
            desired,
            lane,
            shares.get(lane.name, _Share()),
            runs_by_task,
            owners,
            clock=clock,
            recheck=recheck,
            rates=rates,
            settled=settled.get(lane.name, {}),
        )

    views: dict[str, LaneView] = {}
    world: list[tuple[str, RunObs]] = []
    foreign: list[Foreign] = []
    with _each_lane(lanes, ask) as answers:
        # the planner's records, made while the lanes answer (mostly waiting on git)
        task_records = _records_of(records)
        for name, (view, runs, refused) in answers():
            views[name] = view
            # a run's lane is the lane whose workspace holds its directory
            world.extend((name, run) for run in runs)
            foreign.extend(refused)
    views.update(_gone_lanes(records, views.keys() | lanes.keys()))
    merged, unstarted = _merge(
        desired,
        world,
        views,
        recorded=recorded,
        owners=owners,
        history=history,
        records=task_records,
        now=clock(),
    )
    return Observed(
        revision=desired.revision,
        serial=seen.serial,
        lanes=views,
        records=task_records,
        runs=merged,
        foreign=tuple(foreign),
        unstarted=unstarted,
        history=history,
        settled_spend=tuple(HourSpend(r.lane, r.hour, r.cost_usd, r.tokens) for r in spend),
        expired=tuple(Expired(r.lane, r.task, r.attempt, r.iteration) for r in seen.expired),
    )


@contextlib.contextmanager
def _each_lane(
    lanes: Mapping[str, LaneClient], ask: Callable[[LaneClient], LaneAnswer]
) -> Iterator[Callable[[], Iterator[tuple[str, LaneAnswer]]]]:
    """Every lane asked at once (``OBSERVE_WORKERS`` at a time), by name; the caller works
    meanwhile and then takes the answers, in the lanes' name order."""
    with workers.fanout("observe", OBSERVE_WORKERS) as pool:
        futures = {name: pool.submit(ask, lane) for name, lane in sorted(lanes.items())}
        yield lambda: ((name, future.result()) for name, future in futures.items())


@dataclass(frozen=True)
class _Recorded:
    """What a pass reads of the state, in one snapshot."""

    tasks: Mapping[str, TaskRow]  # one version of them (``Store.task_rows``)
    runs: list[Run]  # the open ones
    histories: HistoryRows
    spend: list[SpendRow]  # settled runs' spend by hour, today's
    expired: list[Run]  # settled runs kept past the retention period, a few
    serial: int


def _gone_lanes(records: Mapping[str, TaskRow], asked: Set[str]) -> dict[str, LaneView]:
    """The lanes of removed tasks, themselves gone from the manifests: nothing of them can be
    asked."""
    return {
        gone: LaneView(gone, reachable=False, error=f"lane {gone} is no longer in the manifests")
        for gone in sorted({r.lane for r in records.values()} - asked)
    }


def _merge(
    desired: Desired,
    world: list[tuple[str, RunObs]],
    views: Mapping[str, LaneView],
    *,
    recorded: list[Run],
    owners: Owners,
    history: Mapping[str, History],
    records: Mapping[str, TaskRecord],
    now: float,
) -> tuple[dict[str, tuple[RunView, ...]], tuple[RunView, ...]]:
    """The runs the lanes reported merged with the open runs state recorded (``merge_runs``):
    those of an earlier generation, and those of a task done, settled when over."""
    unreachable = {name for name, view in views.items() if not view.reachable}
    generations = {name: task.generation for name, task in desired.tasks.items()}
    with_runs = {run.task for _lane, run in world} | {run.task for run in recorded}
    return merge_runs(
        world,
        recorded,
        unreachable,
        owners,
        now,
        generations=generations,
        history=history,
        done=_done(records, generations, with_runs),
    )


def _done(
    records: Mapping[str, TaskRecord], generations: Mapping[str, str], tasks: Iterable[str]
) -> set[str]:
    """Which of ``tasks`` (those with runs: of 100,000 tasks perhaps a few) are done for their
    current generation."""
    done = set()
    for name in tasks:
        record = records.get(name)
        if record is not None and record.done and record.done_generation == generations.get(name):
            done.add(name)
    return done


def _recorded(desired: Desired, store: Store, now: float) -> _Recorded:
    retention = desired.config.run_retention
    with store.snapshot():
        return _Recorded(
            tasks=store.task_rows(),
            runs=store.open_runs(),
            histories=store.histories(),
            spend=store.lane_spend(now // DAY * DAY),
            expired=[] if retention is None else store.expired_runs(now - retention, PRUNED),
            serial=store.serial(),
        )


# The last pass's histories: the store's rows (one version of them: ``HistoryRows``), the
# manifests' tasks they were owned by, and what was made of them. A pass over 100,000 done tasks
# would otherwise make 100,000 histories again each time.
_Histories = tuple[dict[str, History], dict[str, dict[str, tuple[int, int]]]]
_KEPT_HISTORY: list[tuple[HistoryRows, object, _Histories]] = []


def _history_of(rows: HistoryRows, desired: Desired, owners: Owners) -> _Histories:
    """``_history``, kept while its inputs are the same objects, and brought up to date in the
    tasks whose rows changed when the rows are a later version of the same reading, for the
    same manifests (the store's log also names a task whose record moved, which may change its
    owner; a task's owner is otherwise its manifest's, the same while the manifests' tasks
    are)."""
    for kept_rows, kept_tasks, made in _KEPT_HISTORY:
        if kept_tasks is not desired.tasks:
            continue
        if kept_rows is rows:
            return made
        changed = rows.changed_since(kept_rows)
        if changed is not None:
            patched = _patched(made, kept_rows, rows, changed, owners)
            _KEPT_HISTORY[:] = [(rows, desired.tasks, patched)]
            return patched
    made = _history(rows.rows(), owners)
    _KEPT_HISTORY[:] = [(rows, desired.tasks, made)]
    return made


def _history(rows: Iterable[HistoryRow], owners: Owners) -> _Histories:
    """Each task's settled runs in its owning lane and repository (those of a lane the task
    left are that lane's history, as its runs were), and per lane, the last settled run of each
    task: the lane leaves out that run and every earlier one."""
    history: dict[str, History] = {}
    settled: dict[str, dict[str, tuple[int, int]]] = {}
    for row in rows:
        _add(row, owners, history, settled)
    return history, settled


def _add(
    row: HistoryRow,
    owners: Owners,
    history: dict[str, History],
    settled: dict[str, dict[str, tuple[int, int]]],
) -> None:
    last = (row.attempt, row.iteration)
    per_lane = settled.setdefault(row.lane, {})
    per_lane[row.task] = max(per_lane.get(row.task, last), last)
    if owners.get(row.task) == (row.lane, row.repo):
        history[row.task] = History(row.runs, row.attempt, row.iteration, row.cost_usd, row.tokens)


def _patched(
    made: _Histories,
    before: HistoryRows,
    rows: HistoryRows,
    changed: frozenset[str],
    owners: Owners,
) -> _Histories:
    """``made`` (of ``before``) brought up to date in the tasks that changed since: new dicts
    (the last pass's observation keeps its own), the per-lane ones copied only where a changed
    task was or is."""
    history = dict(made[0])
    settled = dict(made[1])
    copied: set[str] = set()
    for task in changed:
        history.pop(task, None)
        for row in (*before.get(task, ()), *rows.get(task, ())):
            if row.lane not in copied:
                settled[row.lane] = dict(settled.get(row.lane, {}))
                copied.add(row.lane)
            settled[row.lane].pop(task, None)
    for task in changed:
        for row in rows.get(task, ()):
            _add(row, owners, history, settled)
    for lane in copied:
        if not settled[lane]:
            del settled[lane]  # as made whole: a lane with no settled run has no entry
    return history, settled


# The last pass's task records: the store's rows (one version of them) and what was made of them.
_KEPT_RECORDS: list[tuple[Mapping[str, TaskRow], dict[str, TaskRecord]]] = []


def _records_of(rows: Mapping[str, TaskRow]) -> dict[str, TaskRecord]:
    """The planner's record of each task row: the last pass's while the rows are the same
    version, made anew only for the tasks that changed when they are a later version of the
    same reading (a new dict: the last pass's observation keeps its own)."""
    for kept_rows, made in _KEPT_RECORDS:
        if kept_rows is rows:
            return made
        changed = (
            rows.changed_since(kept_rows)
            if isinstance(rows, Version) and isinstance(kept_rows, Version)
            else None
        )
        if changed is not None:
            records = dict(made)
            for name in changed:
                row = rows.get(name)
                if row is None:
                    records.pop(name, None)
                else:
                    records[name] = _record(row)
            _KEPT_RECORDS[:] = [(rows, records)]
            return records
    made = {name: _record(row) for name, row in rows.items()}
    _KEPT_RECORDS[:] = [(rows, made)]
    return made


_new_record = TaskRecord.__new__


def _record(row: TaskRow) -> TaskRecord:
    failed = (
        FailedAction(
            kind=row.failed_action,
            message=row.failed_message or "",
            at=row.failed_at or 0.0,
            count=row.failed_count,
        )
        if row.failed_action
        else None
    )
    # One per task of the state, every pass: filled directly, as the store fills its rows (a
    # frozen dataclass's __init__ costs a setattr per field).
    # Key by key in field order, so that the records share one table of keys as __init__'s do.
    record = _new_record(TaskRecord)
    fields = record.__dict__
    fields["name"] = row.name
    fields["lane"] = row.lane
    fields["repo"] = row.repo
    fields["first_seen"] = row.first_seen
    fields["done"] = row.done
    fields["done_generation"] = row.done_generation
    fields["pr_number"] = row.pr_number
    fields["failed"] = failed
    return record
