"""Slots and warm pools: which waiting starts run now, and which pools to top up after them.

A lane has ``maxConcurrency`` slots and the config may cap all lanes together; a live run holds
its slot until this pass stops or marks it. Waiting starts and iterations are granted in order of
priority, then age (first seen), then name, so the order is stable from pass to pass.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from reconciler.manifests.models import Desired
from reconciler.plan.model import Action, ActionKind, Observed, Phase, PoolFill, RepoView
from reconciler.plan.reasons import Why

# Starts that begin a new attempt; a task with no worktree yet takes a pooled one.
_FIRST_STARTS = frozenset({ActionKind.START, ActionKind.RETRY})


@dataclass(slots=True)
class Candidate:
    """A slot-needing action waiting for the slot filler (never changed once made)."""

    action: Action
    priority: int
    first_seen: float
    phase_with_slot: Phase
    why: Why
    reason_without_slot: str


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
    for cand in sorted(candidates, key=lambda c: (-c.priority, c.first_seen, c.action.task)):
        lane = cand.action.lane
        lane_slots = desired.lanes[lane].max_concurrency
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
