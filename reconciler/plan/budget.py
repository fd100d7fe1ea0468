"""Budgets: what a task's runs, and a lane's runs of the day (UTC), spent against their limits.

One reckoning for the planner that enforces the budgets and for ``status`` that shows the
spend (``Plan.lane_spend``), so the two can never count differently.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from reconciler.manifests.models import Budget, Desired, Task
from reconciler.plan.model import LaneSpend, Observed
from reconciler.plan.timing import DAY

MIN_RUN_USD = 0.01  # the least budget a run starts with; below it the budget is exhausted


def over_budget(budget: Budget, cost: float, tokens: int) -> str | None:
    """ "$x of $y" (or tokens) when ``cost`` and ``tokens`` spent ``budget``; None while within
    it."""
    if budget.max_cost_usd is not None and cost > budget.max_cost_usd - MIN_RUN_USD:
        if cost < budget.max_cost_usd:  # a run cannot start with less (claude refuses it)
            return f"${cost:.3f} of ${budget.max_cost_usd:.2f}, less than a cent left"
        return f"${cost:.2f} of ${budget.max_cost_usd:.2f}"
    if budget.max_tokens is not None and tokens >= budget.max_tokens:
        return f"{tokens} of {budget.max_tokens} tokens"
    return None


def task_spent(observed: Observed, task: str) -> tuple[float, int]:
    """What a task's runs spent, in dollars and tokens: its settled runs' sums and its open
    runs'."""
    runs = observed.runs.get(task, ())
    history = observed.history.get(task)
    cost = sum(r.cost_usd for r in runs)
    tokens = sum(r.tokens for r in runs)
    if history is not None:
        cost += history.cost_usd
        tokens += history.tokens
    return cost, tokens


@dataclass
class Spend:
    """The spend of one plan's inputs, each lane's day read once."""

    desired: Desired
    observed: Observed
    now: float
    _over: dict[str, str | None] = field(default_factory=dict)
    _today: dict[str, tuple[float, int]] = field(default_factory=dict)

    def task_over(self, task: Task) -> str | None:
        """What the task's runs spent, when that exhausts its budget; else None."""
        budget = task.spec.budget
        if budget.max_cost_usd is None and budget.max_tokens is None:
            return None  # no budget: nothing to add up
        return over_budget(budget, *task_spent(self.observed, task.name))

    def left(self, task: Task) -> float | None:
        """Dollars the next run of ``task`` may spend under its own and its lane's budgets."""
        left: list[float] = []
        if task.spec.budget.max_cost_usd is not None:
            spent, _tokens = task_spent(self.observed, task.name)
            left.append(task.spec.budget.max_cost_usd - spent)
        lane_budget = self.desired.lanes[task.spec.lane].budget.max_cost_usd
        if lane_budget is not None:
            left.append(lane_budget - self.lane_today(task.spec.lane)[0])
        return round(max(0.0, min(left)), 4) if left else None

    def lane_today(self, lane: str) -> tuple[float, int]:
        """What the lane's runs started since 00:00 UTC spent, in dollars and tokens."""
        spent = self._today.get(lane)
        if spent is None:
            midnight = self.now - self.now % DAY
            cost = 0.0
            tokens = 0
            for runs in self.observed.runs.values():
                for r in runs:
                    if r.lane == lane and r.started_at >= midnight:
                        cost += r.cost_usd
                        tokens += r.tokens
            for hour in self.observed.settled_spend:
                if hour.lane == lane and hour.hour >= midnight:
                    cost += hour.cost_usd
                    tokens += hour.tokens
            spent = self._today[lane] = (cost, tokens)
        return spent

    def today(self, lane: str) -> LaneSpend:
        cost, tokens = self.lane_today(lane)
        return LaneSpend(lane, round(cost, 6), tokens)

    def lane_over(self, lane: str) -> str | None:
        """What the lane's runs of today spent, when it is past its daily budget; else None."""
        if lane not in self._over:  # asked once per waiting start: answered once per lane
            budget = self.desired.lanes[lane].budget
            unlimited = budget.max_cost_usd is None and budget.max_tokens is None
            self._over[lane] = None if unlimited else over_budget(budget, *self.lane_today(lane))
        return self._over[lane]
