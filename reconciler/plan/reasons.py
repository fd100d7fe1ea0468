"""Why a task is where it is, for machines: a reason code per status, and conditions.

Each task status carries a reason code (``Why``) beside its sentence; the codes are stable
(scripts and UIs match on them), the sentences are not. From the phase, the code and the PR,
``conditions`` derives four standing conditions in the style of Kubernetes' ``status.conditions``
— ``Done``, ``Progressing``, ``Blocked`` and ``Degraded``, always in that order — plus
``PullRequest`` when the task's branch has one. They describe this pass: the planner keeps no
history, so there are no transition times.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

ConditionStatus = Literal["True", "False", "Unknown"]
_Standing = Literal["Done", "Progressing", "Blocked", "Degraded"]


class Why(StrEnum):
    """The reason code of a task status (CamelCase, as Kubernetes' condition reasons)."""

    # settled
    COMPLETED = "Completed"  # success recorded, or pushed where there is no forge
    MERGED = "Merged"  # its PR was merged
    AWAITING_REVIEW = "AwaitingReview"  # its PR is open; nothing to do until someone acts
    # waiting on something outside the task
    LANE_UNREACHABLE = "LaneUnreachable"
    REPO_UNREADABLE = "RepoUnreadable"
    PAUSED = "Paused"
    DEPENDENCY_PENDING = "DependencyPending"
    DEPENDENCY_MISSING = "DependencyMissing"
    PREFLIGHT_FAILED = "PreflightFailed"
    LANE_BUDGET_EXHAUSTED = "LaneBudgetExhausted"
    WAITING_FOR_SLOT = "WaitingForSlot"
    ON_STANDBY = (
        "OnStandby"  # queued in its full lane, prepared: the next run there to end starts it
    )
    ACTION_HELD = "ActionHeld"  # an action failed for a lasting reason; it waits a backoff
    # being worked on
    STARTING = "Starting"
    RETRYING = "Retrying"
    RUNNING = "Running"
    STOPPING = "Stopping"
    ITERATING = "Iterating"  # the run did not meet the success criteria; the next one goes on
    ADDRESSING_FEEDBACK = "AddressingFeedback"  # review or CI feedback on its PR
    REBASING = "Rebasing"  # its base moved: the reconciler brings the branch up to date
    CONFLICT = "Conflict"  # its PR conflicts with the base: an iteration asks the agent
    OPENING_PR = "OpeningPR"
    FINISHING_RUN = "FinishingRun"  # its agent ended but its supervisor died: finishing the run
    UPDATING_PR = "UpdatingPR"
    REMOVING = "Removing"  # its manifest is gone: stopping, closing and cleaning up
    # failures
    STALLED = "Stalled"
    TIMED_OUT = "TimedOut"
    BACKING_OFF = "BackingOff"
    ATTEMPTS_EXHAUSTED = "AttemptsExhausted"
    ITERATIONS_EXHAUSTED = "IterationsExhausted"
    BUDGET_EXHAUSTED = "BudgetExhausted"
    PR_CLOSED = "PullRequestClosed"


_BLOCKING = frozenset(
    {
        Why.LANE_UNREACHABLE,
        Why.REPO_UNREADABLE,
        Why.DEPENDENCY_PENDING,
        Why.DEPENDENCY_MISSING,
        Why.PREFLIGHT_FAILED,
        Why.LANE_BUDGET_EXHAUSTED,
        Why.ACTION_HELD,
    }
)
_FAILING = frozenset(
    {
        Why.STALLED,
        Why.TIMED_OUT,
        Why.BACKING_OFF,
        Why.RETRYING,
        Why.ATTEMPTS_EXHAUSTED,
        Why.ITERATIONS_EXHAUSTED,
        Why.BUDGET_EXHAUSTED,
        Why.PR_CLOSED,
        Why.ACTION_HELD,
        Why.CONFLICT,
    }
)
_WORKING = frozenset(
    {
        Why.STARTING,
        Why.RETRYING,
        Why.RUNNING,
        Why.STOPPING,
        Why.ITERATING,
        Why.ADDRESSING_FEEDBACK,
        Why.REBASING,
        Why.CONFLICT,
        Why.OPENING_PR,
        Why.FINISHING_RUN,
        Why.UPDATING_PR,
        Why.REMOVING,
        Why.STALLED,
        Why.TIMED_OUT,
        Why.BACKING_OFF,
        Why.WAITING_FOR_SLOT,
        Why.ON_STANDBY,
    }
)


@dataclass(frozen=True)
class Condition:
    type: Literal["Done", "Progressing", "Blocked", "Degraded", "PullRequest"]
    status: ConditionStatus
    reason: str  # a Why value; for PullRequest the PR's state: Open, Merged, Closed
    message: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "status": self.status,
            "reason": self.reason,
            "message": self.message,
        }


def _flag(value: bool) -> ConditionStatus:
    return "True" if value else "False"


def conditions(
    why: Why, message: str, pr_state: str | None = None, pr_number: int | None = None
) -> tuple[Condition, ...]:
    """The conditions of a task whose status has reason code ``why`` and sentence ``message``
    (``pr_state``: its branch's newest PR, if any). Pure: the same inputs, the same list."""
    unseen = why in (Why.LANE_UNREACHABLE, Why.REPO_UNREADABLE)  # the rest is not known

    def standing(kind: _Standing, holds: bool) -> Condition:
        status: ConditionStatus = "Unknown" if unseen and kind != "Blocked" else _flag(holds)
        return Condition(kind, status, why.value, message if status != "False" else "")

    found = (
        standing("Done", why in (Why.COMPLETED, Why.MERGED)),
        standing("Progressing", why in _WORKING),
        standing("Blocked", why in _BLOCKING),
        standing("Degraded", why in _FAILING),
    )
    if pr_state is None:
        return found
    return (
        *found,
        Condition(
            "PullRequest", _flag(pr_state == "open"), pr_state.capitalize(), f"PR #{pr_number}"
        ),
    )
