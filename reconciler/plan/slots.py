"""Slots and warm pools: which waiting starts run now, and which pools to top up after them.

A lane has ``maxConcurrency`` slots and the config may cap all lanes together; a live run holds
its slot until this pass stops or marks it. Waiting starts and iterations are granted in order of
priority, then age (first seen), then name, so the order is stable from pass to pass.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from operator import attrgetter

from reconciler.manifests.models import Desired, Task
from reconciler.plan.budget import Spend
from reconciler.plan.model import (
    Action,
    ActionKind,
    NewRun,
    Observed,
    Phase,
    PoolFill,
    RepoView,
)
from reconciler.plan.reasons import Why
from reconciler.protocol import StandbyObs

# Starts that begin a new attempt; a task with no worktree yet takes a pooled one.
_FIRST_STARTS = frozenset({ActionKind.START, ActionKind.RETRY})


@dataclass(slots=True)
class Candidate:
    """A run to create, waiting for the slot filler (never changed once made).

    Most candidates of a large backlog wait, so a candidate holds only what its action is made
    of: the ``Action`` (its payload, its budget) is built by ``action`` once a slot is granted.
    A finish-run comes whole (``ready``).
    """

    task: Task
    kind: ActionKind
    attempt: int
    iteration: int
    reason: str  # the action's reason, and the task's status once it has its slot
    priority: int
    first_seen: float
    phase_with_slot: Phase
    why: Why
    resume_session: str | None = None
    feedback: tuple[str, ...] = ()
    fetch_base: bool = False
    ready: Action | None = None

    def action(self, spend: Spend) -> Action:
        """The action, now that it has its slot."""
        if self.ready is not None:
            return self.ready
        task = self.task
        return Action(
            kind=self.kind,
            task=task.name,
            lane=task.spec.lane,
            reason=self.reason,
            payload=NewRun(
                self.attempt,
                self.iteration,
                task.generation,
                resume_session=self.resume_session,
                feedback=self.feedback,
                budget_usd=spend.left(task),
                fetch_base=self.fetch_base,
            ),
        )


def grant_order(candidates: Iterable[Candidate]) -> list[Candidate]:
    """Priority (highest first), then age (first seen), then name: three stable sorts on plain
    keys, cheaper than one on a built tuple (most candidates arrive sorted by name already)."""
    ordered = sorted(candidates, key=attrgetter("task.name"))
    ordered.sort(key=attrgetter("first_seen"))
    ordered.sort(key=attrgetter("priority"), reverse=True)
    return ordered


# Runs a standby start may be granted for: a new run (a finish-run takes its own run's slot back).
_STANDBY_KINDS = frozenset({ActionKind.START, ActionKind.RETRY, ActionKind.ITERATE})


@dataclass(slots=True)
class Allotted:
    """A candidate's verdict: a slot now (``wait`` None), or why it waits; a waiting one may be
    on standby, with its queue entry (``entry``) or to be queued now (``queue``)."""

    cand: Candidate
    wait: str | None
    in_use: str = ""  # what its wait names: "2/2 in use", "3/3 in use across lanes"
    entry: StandbyObs | None = None
    queue: bool = False


@dataclass(slots=True)
class Allotment:
    allotted: list[Allotted]
    withdraw: list[tuple[str, StandbyObs]]  # (lane, entry): standby runs no longer wanted


def allot(
    desired: Desired, observed: Observed, freed: set[str], candidates: Iterable[Candidate]
) -> Allotment:
    """Each candidate in grant order, with a slot or why it waits; standby starts for the full
    lanes' next candidates, and the queued standby runs to withdraw.

    A live run holds its slot. So does a run whose supervisor, at its end, started a standby
    run that this observation still saw queued (the queue is read before the runs, so the
    entry was taken in between): the slot is that run's now. A candidate with a standby run
    queued for it gets a free slot first (its start takes the entry). Then each full lane keeps
    one standby run per live run there, for its next candidates in that order: a standby run
    keeps its place once queued (a newcomer of higher priority gets the next one). An entry no
    candidate holds any more (its task changed, was paused, removed, or started otherwise) is
    withdrawn."""
    used: dict[str, int] = {}
    seen: set[str] = set()
    handed: list[tuple[str, str]] = []  # (lane, run) an ended run's supervisor started
    for runs in observed.runs.values():
        for run in runs:
            seen.add(run.key)
            if run.alive:
                if run.key not in freed:
                    used[run.lane] = used.get(run.lane, 0) + 1
            elif run.handed_to is not None:
                handed.append((run.lane, run.handed_to))
    held, withdraw = _queued(observed, seen, handed, used)
    ordered = grant_order(candidates)
    if held:
        holding = [c for c in ordered if _holds(c, held)]
        ordered = holding + [c for c in ordered if not _holds(c, held)]
    total = sum(used.values())
    cap = desired.config.max_concurrency
    allotted: list[Allotted] = []
    waiting: dict[str, list[Allotted]] = {}
    # once a lane is full, each of its waiting candidates waits for the same words: made once
    waits: dict[tuple[str, int], tuple[str, str]] = {}  # → (the wait, the slots in use)
    slots = {name: lane.max_concurrency for name, lane in desired.lanes.items()}
    for cand in ordered:
        lane = cand.task.spec.lane
        lane_slots = slots[lane]
        in_lane = used.get(lane, 0)
        if in_lane >= lane_slots:
            key = (lane, in_lane)
            words = waits.get(key)
            if words is None:
                in_use = f"{in_lane}/{lane_slots} in use"
                words = waits[key] = (f"waiting for a slot in lane {lane} ({in_use})", in_use)
        elif cap is not None and total >= cap:
            key = ("", total)  # no lane is named ""
            words = waits.get(key)
            if words is None:
                in_use = f"{total}/{cap} in use across lanes"
                words = waits[key] = (f"waiting for a slot ({in_use})", in_use)
        else:
            used[lane] = in_lane + 1
            total += 1
            allotted.append(Allotted(cand, None))
            held.pop((lane, cand.task.name), None)  # its start takes the entry
            continue
        verdict = Allotted(cand, words[0], in_use=words[1])
        allotted.append(verdict)
        waiting.setdefault(lane, []).append(verdict)
    for lane, verdicts in waiting.items():
        live = used.get(lane, 0)
        # a lane (or the whole) over its slots, after they were lowered, is let drain first
        over = live > slots[lane] or (cap is not None and total > cap)
        _stand_by(desired, lane, verdicts, 0 if over else live, held)
    withdraw += sorted(held.items())
    return Allotment(allotted, [(lane, entry) for (lane, _task), entry in withdraw])


def _queued(
    observed: Observed, seen: set[str], handed: list[tuple[str, str]], used: dict[str, int]
) -> tuple[dict[tuple[str, str], StandbyObs], list[tuple[tuple[str, str], StandbyObs]]]:
    """The standby runs queued, by (lane, task), and the extra entries of a task (to withdraw);
    ``used`` counts the slots ``handed`` to entries taken after the queue was read."""
    held: dict[tuple[str, str], StandbyObs] = {}
    extra: list[tuple[tuple[str, str], StandbyObs]] = []
    queued: dict[str, set[str]] = {}
    for lane, view in observed.lanes.items():
        if not view.reachable:
            continue
        for entry in view.standby:
            key = f"{entry.task}/{entry.attempt}.{entry.iteration}"
            if key in seen:
                continue  # taken between the two reads: it is a run now, and counts as one
            queued.setdefault(lane, set()).add(key)
            if (lane, entry.task) in held:
                extra.append(((lane, entry.task), entry))
            else:
                held[(lane, entry.task)] = entry
    for lane, run in handed:
        if run in queued.get(lane, ()):
            used[lane] = used.get(lane, 0) + 1
    return held, extra


def _holds(cand: Candidate, held: dict[tuple[str, str], StandbyObs]) -> bool:
    entry = held.get((cand.task.spec.lane, cand.task.name))
    return (
        entry is not None
        and cand.kind in _STANDBY_KINDS
        and (entry.attempt, entry.iteration, entry.generation)
        == (cand.attempt, cand.iteration, cand.task.generation)
    )


def _stand_by(
    desired: Desired,
    lane: str,
    verdicts: list[Allotted],
    live: int,
    held: dict[tuple[str, str], StandbyObs],
) -> None:
    """One standby run per live run of the lane, for its first waiting candidates (those
    holding one come first); what stays in ``held`` is withdrawn."""
    hooked = {r.name for r in desired.lanes[lane].repos if r.hooks.before_run}
    room = live
    for verdict in verdicts:
        if room == 0:
            return
        cand = verdict.cand
        if cand.kind not in _STANDBY_KINDS or cand.task.spec.repo in hooked:
            continue  # a beforeRun hook runs just before the agent: such runs start at a pass
        room -= 1
        if _holds(cand, held):
            verdict.entry = held.pop((lane, cand.task.name))
        else:
            verdict.queue = True


def standby_order(cand: Candidate) -> str:
    """A standby run's place in its lane's queue, as text that sorts in grant order: priority
    (highest first), then age; the queue entry's name adds the task's."""
    priority = max(-(10**11), min(10**11, cand.priority))
    return f"{10**12 - priority:013d}.{max(0.0, cand.first_seen):017.6f}"


def _repo(observed: Observed, lane: str, repo: str) -> RepoView | None:
    view = observed.lanes.get(lane)
    return view.repos.get(repo) if view is not None and view.reachable else None


def pool_fills(desired: Desired, observed: Observed, granted: Sequence[Action]) -> list[PoolFill]:
    """Pools to top up: per pooled repository of a reachable lane, each base its tasks use,
    where fewer idle worktrees are left than asked once this pass's first starts have taken
    theirs (an iteration keeps its task's worktree and takes none)."""
    sizes = {
        (name, repo.name): repo.pool
        for name, lane in desired.lanes.items()
        for repo in lane.repos
        if repo.pool > 0 and (seen := observed.lanes.get(name)) is not None and seen.reachable
    }
    if not sizes:
        return []  # no pool anywhere: nothing to count
    taken: dict[tuple[str, str, str], int] = {}
    for action in granted:
        spec = desired.tasks[action.task].spec
        view = _repo(observed, action.lane, spec.repo)
        # a standby run is prepared now, in a pooled worktree too (an iteration's task has one)
        first = action.kind in _FIRST_STARTS or action.kind is ActionKind.STANDBY
        if first and (view is None or action.task not in view.worktrees):
            key = (action.lane, spec.repo, spec.base)
            taken[key] = taken.get(key, 0) + 1
    wanted: dict[tuple[str, str, str], int] = {}
    for task in desired.tasks.values():
        spec = task.spec
        size = sizes.get((spec.lane, spec.repo))
        if size is not None:
            wanted[(spec.lane, spec.repo, spec.base)] = size
    fills: list[PoolFill] = []
    for (lane, repo, base), size in sorted(wanted.items()):
        view = _repo(observed, lane, repo)
        idle = view.pool.get(base, 0) if view is not None else 0
        ready = max(0, idle - taken.get((lane, repo, base), 0))
        if ready < size:
            fills.append(PoolFill(lane, repo, base, ready, size))
    return fills
