"""Planning: pure functions from (desired, observed, now) to a typed, serialisable plan."""

from reconciler.plan.model import (
    Action,
    ActionKind,
    Blocked,
    Due,
    Foreign,
    LaneView,
    Observed,
    Outcome,
    Phase,
    Plan,
    RepoView,
    Requeue,
    RunView,
    TaskRecord,
    TaskStatus,
)
from reconciler.plan.planner import backoff_delay, branch_of, evaluate, next_midnight, plan

__all__ = [
    "Action",
    "ActionKind",
    "Blocked",
    "Due",
    "Foreign",
    "LaneView",
    "Observed",
    "Outcome",
    "Phase",
    "Plan",
    "RepoView",
    "Requeue",
    "RunView",
    "TaskRecord",
    "TaskStatus",
    "backoff_delay",
    "branch_of",
    "evaluate",
    "next_midnight",
    "plan",
]
