"""The planner's clocks: backoff, a run's deadlines, the budget day. Pure arithmetic on the
``now`` the plan is given; jitter is a hash of the task and attempt, never random."""

from __future__ import annotations

import hashlib

from reconciler.durations import format_duration
from reconciler.manifests.models import AgentSpec, ConfigSpec
from reconciler.plan.model import RunView
from reconciler.plan.reasons import Why


def backoff_delay(config: ConfigSpec, task: str, failed_attempts: int) -> float:
    """Capped exponential backoff with deterministic "equal jitter" in [delay/2, delay]."""
    raw = config.backoff.base * (2 ** max(0, failed_attempts - 1))
    capped = min(config.backoff.max, raw)
    digest = hashlib.sha256(f"{task}/{failed_attempts}".encode()).digest()
    jitter = int.from_bytes(digest[:4], "big") / 2**32
    return float(capped / 2 + capped / 2 * jitter)


DAY = 86400.0
HOUR = 3600.0


def next_midnight(now: float) -> float:
    """The next 00:00 UTC after ``now``: when a lane's daily budget starts afresh."""
    return now - now % DAY + DAY


def last_progress(run: RunView) -> float:
    """When a live run last progressed: an agent with an event stream when it emitted its own
    events (heartbeats and noise grow the output without that); others when their output grew."""
    return run.last_progress_at or run.last_output_at or run.started_at


def overdue(run: RunView, agent: AgentSpec, now: float) -> tuple[Why, str] | None:
    """Why a live run is past its timeout or stalled, or None."""
    age = now - run.started_at
    if age > agent.timeout:
        return Why.TIMED_OUT, (
            f"running for {format_duration(age)}, past its timeout of "
            + format_duration(agent.timeout)
        )
    quiet = now - last_progress(run)
    if quiet <= agent.stall_timeout:
        return None
    what = "no agent event" if run.last_progress_at is not None else "no output"
    why = (
        f"{what} for {format_duration(quiet)} (stallTimeout {format_duration(agent.stall_timeout)})"
    )
    if run.last_event:  # e.g. "retrying: 401 authentication_failed (attempt 6 of 10)"
        why += f"; last: {run.last_event}"
    return Why.STALLED, why
