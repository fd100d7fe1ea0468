"""Planning: pure functions from (desired, observed, now) to a typed, serialisable plan."""

from reconciler.plan.evaluation import evaluate
from reconciler.plan.model import (
    Action,
    ActionKind,
    Blocked,
    Due,
    FailedAction,
    Foreign,
    LaneSpend,
    LaneView,
    Observed,
    Outcome,
    Phase,
    Plan,
    PoolFill,
    RepoView,
    Requeue,
    RunView,
    TaskRecord,
    TaskStatus,
)
from reconciler.plan.planner import branch_of, plan
from reconciler.plan.reasons import Condition, Why, conditions
from reconciler.plan.timing import backoff_delay, next_midnight

__all__ = [
    "Action",
    "ActionKind",
    "Blocked",
    "Condition",
    "Due",
    "FailedAction",
    "Foreign",
    "LaneSpend",
    "LaneView",
    "Observed",
    "Outcome",
    "Phase",
    "Plan",
    "PoolFill",
    "RepoView",
    "Requeue",
    "RunView",
    "TaskRecord",
    "TaskStatus",
    "Why",
    "backoff_delay",
    "branch_of",
    "conditions",
    "evaluate",
    "next_midnight",
    "plan",
]
