"""Budgets: what a task's runs, and a lane's runs of the day (UTC), spent against their limits.

One reckoning for the planner that enforces the budgets and for ``status`` that shows the
spend (``Plan.lane_spend``), so the two can never count differently.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from reconciler.manifests.models import Budget, Desired, Task
from reconciler.plan.model import LaneSpend, Observed, RunView
from reconciler.plan.timing import DAY

MIN_RUN_USD = 0.01  # the least budget a run starts with; below it the budget is exhausted


def over_budget(budget: Budget, runs: Iterable[RunView]) -> str | None:
    """ "$x of $y" (or tokens) when ``runs`` spent ``budget``; None while within it."""
    if budget.max_cost_usd is None and budget.max_tokens is None:
        return None  # no budget: nothing to add up
    spent = list(runs)
    cost = sum(r.cost_usd for r in spent)
    tokens = sum(r.tokens for r in spent)
    if budget.max_cost_usd is not None and cost > budget.max_cost_usd - MIN_RUN_USD:
        if cost < budget.max_cost_usd:  # a run cannot start with less (claude refuses it)
            return f"${cost:.3f} of ${budget.max_cost_usd:.2f}, less than a cent left"
        return f"${cost:.2f} of ${budget.max_cost_usd:.2f}"
    if budget.max_tokens is not None and tokens >= budget.max_tokens:
        return f"{tokens} of {budget.max_tokens} tokens"
    return None


@dataclass
class Spend:
    """The spend of one plan's inputs, each lane's day read once."""

    desired: Desired
    observed: Observed
    now: float
    _over: dict[str, str | None] = field(default_factory=dict)
    _today: dict[str, tuple[RunView, ...]] = field(default_factory=dict)

    def task_over(self, task: Task) -> str | None:
        """What the task's runs spent, when that exhausts its budget; else None."""
        return over_budget(task.spec.budget, self.observed.runs.get(task.name, ()))

    def left(self, task: Task) -> float | None:
        """Dollars the next run of ``task`` may spend under its own and its lane's budgets."""
        left: list[float] = []
        if task.spec.budget.max_cost_usd is not None:
            spent = sum(r.cost_usd for r in self.observed.runs.get(task.name, ()))
            left.append(task.spec.budget.max_cost_usd - spent)
        lane_budget = self.desired.lanes[task.spec.lane].budget.max_cost_usd
        if lane_budget is not None:
            left.append(lane_budget - sum(r.cost_usd for r in self.lane_today(task.spec.lane)))
        return round(max(0.0, min(left)), 4) if left else None

    def lane_today(self, lane: str) -> tuple[RunView, ...]:
        """The lane's runs started since 00:00 UTC."""
        if lane not in self._today:
            midnight = self.now - self.now % DAY
            self._today[lane] = tuple(
                r
                for runs in self.observed.runs.values()
                for r in runs
                if r.lane == lane and r.started_at >= midnight
            )
        return self._today[lane]

    def today(self, lane: str) -> LaneSpend:
        runs = self.lane_today(lane)
        cost = round(sum(r.cost_usd for r in runs), 6)
        return LaneSpend(lane, cost, sum(r.tokens for r in runs))

    def lane_over(self, lane: str) -> str | None:
        """What the lane's runs of today spent, when it is past its daily budget; else None."""
        if lane not in self._over:  # asked once per waiting start: answered once per lane
            budget = self.desired.lanes[lane].budget
            unlimited = budget.max_cost_usd is None and budget.max_tokens is None
            self._over[lane] = None if unlimited else over_budget(budget, self.lane_today(lane))
        return self._over[lane]
