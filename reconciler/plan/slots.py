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


def allot(
    desired: Desired, observed: Observed, freed: set[str], candidates: Iterable[Candidate]
) -> list[tuple[Candidate, str | None]]:
    """Each candidate in grant order with None when it gets a slot, else why it waits."""
    used: dict[str, int] = {}
    for runs in observed.runs.values():
        for run in runs:
            if run.alive and run.key not in freed:
                used[run.lane] = used.get(run.lane, 0) + 1
    total = sum(used.values())
    cap = desired.config.max_concurrency
    allotted: list[tuple[Candidate, str | None]] = []
    # once a lane is full, each of its waiting candidates waits for the same words: made once
    waits: dict[tuple[str, int], str] = {}
    slots = {name: lane.max_concurrency for name, lane in desired.lanes.items()}
    for cand in grant_order(candidates):
        lane = cand.task.spec.lane
        lane_slots = slots[lane]
        in_lane = used.get(lane, 0)
        if in_lane >= lane_slots:
            key = (lane, in_lane)
            wait = waits.get(key)
            if wait is None:
                wait = f"waiting for a slot in lane {lane} ({in_lane}/{lane_slots} in use)"
                waits[key] = wait
            allotted.append((cand, wait))
        elif cap is not None and total >= cap:
            key = ("", total)  # no lane is named ""
            wait = waits.get(key)
            if wait is None:
                wait = f"waiting for a slot ({total}/{cap} in use across lanes)"
                waits[key] = wait
            allotted.append((cand, wait))
        else:
            used[lane] = in_lane + 1
            total += 1
            allotted.append((cand, None))
    return allotted


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
        if action.kind in _FIRST_STARTS and (view is None or action.task not in view.worktrees):
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
