"""Planning: pure functions from (desired, observed, now) to a typed, serialisable plan."""

from reconciler.plan.model import (
    Action,
    ActionKind,
    Blocked,
    FailedAction,
    Foreign,
    LaneView,
    Observed,
    Outcome,
    Phase,
    Plan,
    RepoView,
    RunView,
    TaskRecord,
    TaskStatus,
)
from reconciler.plan.planner import backoff_delay, branch_of, evaluate, plan

__all__ = [
    "Action",
    "ActionKind",
    "Blocked",
    "FailedAction",
    "Foreign",
    "LaneView",
    "Observed",
    "Outcome",
    "Phase",
    "Plan",
    "RepoView",
    "RunView",
    "TaskRecord",
    "TaskStatus",
    "backoff_delay",
    "branch_of",
    "evaluate",
    "plan",
]
