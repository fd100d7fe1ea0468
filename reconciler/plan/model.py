"""The planner's inputs (what was observed) and output (the plan). Pure data, no I/O.

``Observed`` merges the state records (history, decisions) with what the lanes reported (the world
is the authority: processes, run directories, worktrees, branches, pull requests).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal, TypeVar

from reconciler.plan.reasons import Condition, Why, conditions
from reconciler.protocol import (
    AgentResult,
    ExitInfo,
    Leftovers,
    PreflightCheck,
    PullRequest,
    StandbyObs,
)
from reconciler.record import Mark, Run


@dataclass(frozen=True)
class RunView:
    """One run of a task: ``attempt.iteration``, merged from state and the lane's run directory."""

    task: str
    lane: str
    repo: str
    attempt: int
    iteration: int
    generation: str
    started_at: float
    alive: bool = False
    exit: ExitInfo | None = None
    last_output_at: float | None = None
    result: AgentResult | None = None
    commits_ahead: int | None = None
    dirty: tuple[str, ...] = ()
    mark: Mark | None = None  # a decision recorded in state (mark-crashed, mark-stalled, stop)
    marked_at: float | None = None
    seen_by_lane: bool = True  # False: only state knows this run (its directory is gone)
    outcome: Literal["succeeded", "failed"] | None = None  # evaluation recorded in state
    failures: tuple[str, ...] = ()  # recorded with a failed outcome
    session_id: str | None = None
    cost_usd: float = 0.0
    tokens: int = 0
    turns: int | None = None  # model responses (so far)
    tool_calls: int | None = None  # tools, commands and edits the agent ran (so far)
    # agents with an event stream: where their last own event ends, and when that last moved
    progress_offset: int | None = None
    last_progress_at: float | None = None
    last_event: str | None = None  # what a running agent did last, as `logs` shows it
    run_dir: str = ""  # where the lane keeps it ("" while only state knows it)
    record: Run | None = None  # what state should hold of it now (observation's merge)
    left: Leftovers | None = None  # gone with no exit record: what it left (the agent's end)
    finishing_since: float | None = None  # a finish-run took it over then (on the lane)
    handed_to: str | None = None  # its supervisor started this standby run at its end
    claimed_from: str | None = None  # a standby run, started at the end of this run

    @property
    def key(self) -> str:
        return f"{self.task}/{self.attempt}.{self.iteration}"

    def activity(self) -> list[str]:
        """What the agent did and spent, as far as its events tell: ["7 turns", "12 tool
        calls", "41200 tokens", "$0.31"] (only the parts known)."""
        words = [f"{self.turns} turn" + ("s" if self.turns != 1 else "")] if self.turns else []
        if self.tool_calls:
            words.append(f"{self.tool_calls} tool call" + ("s" if self.tool_calls != 1 else ""))
        words += [f"{self.tokens} tokens"] if self.tokens else []
        words += [f"${self.cost_usd:.2f}"] if self.cost_usd else []
        return words

    @property
    def ended_at(self) -> float:
        if self.exit is not None:
            return self.exit.ended_at
        if self.marked_at is not None:
            return self.marked_at
        return self.last_output_at or self.started_at


@dataclass(frozen=True)
class TaskRecord:
    """What state remembers of a task beyond its runs."""

    name: str
    lane: str
    repo: str
    first_seen: float
    done: bool = False  # `complete` recorded (PR merged, or success with no forge)
    done_generation: str | None = None
    pr_number: int | None = None
    failed: FailedAction | None = None  # its last action failed for a lasting reason


@dataclass(frozen=True)
class FailedAction:
    """An action of a task that failed for a reason that does not pass by itself: the planner
    holds that kind of action back, longer after each failure in a row, instead of repeating
    it every pass."""

    kind: str  # an ActionKind value
    message: str
    at: float
    count: int  # failures in a row


@dataclass(frozen=True)
class RepoView:
    worktrees: dict[str, str] = field(default_factory=dict)  # task → worktree path
    branches: dict[str, str] = field(default_factory=dict)  # branch → sha
    remote_branches: dict[str, str] = field(default_factory=dict)
    prs: dict[str, PullRequest] | None = None  # branch → newest PR; None: no forge
    error: str | None = None
    pool: dict[str, int] = field(default_factory=dict)  # base → idle pooled worktrees


@dataclass(frozen=True)
class LaneView:
    name: str
    reachable: bool
    error: str | None = None
    repos: dict[str, RepoView] = field(default_factory=dict)
    preflight: tuple[PreflightCheck, ...] = ()
    standby: tuple[StandbyObs, ...] = ()  # its queue of standby runs, lowest order first


@dataclass(frozen=True)
class Foreign:
    """Something a lane reported that it does not own — a run of another lane's task, or of a
    task in a repository not its own. Ignored for planning, never acted on; recorded."""

    lane: str  # the lane that reported it
    task: str  # the task it named (as the lane wrote it)
    run: str  # attempt.iteration, e.g. "9.1"
    repo: str  # the repository it named
    owner: str  # the lane the task belongs to ("" when no task has that name)

    @property
    def message(self) -> str:
        whose = (
            f"which belongs to lane {self.owner}"
            if self.owner and self.owner != self.lane
            else "in a repository that is not the task's"
            if self.owner
            else "which is not a task name"
        )
        return (
            f"lane {self.lane} reported run {self.run} of task {self.task} in repo {self.repo}, "
            f"{whose}; ignored (a lane's observations count only for its own tasks)"
        )


@dataclass(frozen=True)
class History:
    """A task's settled runs (over for good, of its earlier generations), as state keeps them:
    how many, the last one, and what they spent. A pass reads these sums instead of the runs,
    so it does not grow with every run ever made; they count as the runs did (attempt numbers,
    budgets, status)."""

    runs: int
    attempt: int
    iteration: int
    cost_usd: float
    tokens: int


@dataclass(frozen=True)
class HourSpend:
    """What a lane's settled runs started in one UTC hour (``hour``: its first second) spent."""

    lane: str
    hour: float
    cost_usd: float
    tokens: int


@dataclass(frozen=True)
class Expired:
    """A settled run whose directory its lane has kept past the retention period."""

    lane: str
    task: str
    attempt: int
    iteration: int

    @property
    def key(self) -> str:
        return f"{self.task}/{self.attempt}.{self.iteration}"


@dataclass(frozen=True)
class Observed:
    revision: str
    serial: int
    lanes: dict[str, LaneView] = field(default_factory=dict)
    records: dict[str, TaskRecord] = field(default_factory=dict)
    runs: dict[str, tuple[RunView, ...]] = field(default_factory=dict)  # task → sorted runs
    foreign: tuple[Foreign, ...] = ()  # observations refused: not the reporting lane's
    # Starts that state recorded but that never happened (no process, no run directory): not
    # runs at all, so they cost no attempt; apply forgets them and the planner starts them again.
    unstarted: tuple[RunView, ...] = ()
    history: dict[str, History] = field(default_factory=dict)  # task → its settled runs
    settled_spend: tuple[HourSpend, ...] = ()  # settled runs started today, per lane and hour
    # settled runs kept past the retention period (``runRetention``), oldest first, a few a pass
    expired: tuple[Expired, ...] = ()


class ActionKind(StrEnum):
    START = "start"
    ITERATE = "iterate"
    MARK_CRASHED = "mark-crashed"
    MARK_STALLED = "mark-stalled"
    RETRY = "retry"
    OPEN_PR = "open-pr"
    ADOPT_PR = "adopt-pr"
    UPDATE_PR = "update-pr"
    REBASE = "rebase"
    STOP = "stop"
    CLOSE_PR = "close-pr"
    CLEANUP = "cleanup"
    COMPLETE = "complete"
    FINISH_RUN = "finish-run"
    STANDBY = "standby"
    WITHDRAW = "withdraw"


SYMBOLS: dict[ActionKind, str] = {
    ActionKind.START: "+",
    ActionKind.ITERATE: "~",
    ActionKind.MARK_CRASHED: "!",
    ActionKind.MARK_STALLED: "!",
    ActionKind.RETRY: "~",
    ActionKind.OPEN_PR: "+",
    ActionKind.ADOPT_PR: "+",
    ActionKind.UPDATE_PR: "~",
    ActionKind.REBASE: "~",
    ActionKind.STOP: "-",
    ActionKind.CLOSE_PR: "-",
    ActionKind.CLEANUP: "-",
    ActionKind.COMPLETE: "✓",
    ActionKind.FINISH_RUN: "~",
    ActionKind.STANDBY: "+",
    ActionKind.WITHDRAW: "-",
}


class Phase(StrEnum):
    PENDING = "pending"
    BLOCKED = "blocked"
    QUEUED = "queued"
    RUNNING = "running"
    BACKOFF = "backoff"
    PR_OPEN = "pr-open"
    DONE = "done"
    FAILED = "failed"
    PAUSED = "paused"
    CLOSING = "closing"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class RunKey:
    """The run an action is about: mark-crashed, mark-stalled, stop; open-pr (the run whose
    success the PR carries); withdraw (the standby run to take out of its lane's queue)."""

    attempt: int
    iteration: int


@dataclass(frozen=True)
class NewRun:
    """start, retry, iterate, standby: the run to create (standby: to queue, prepared, for the
    next run of its full lane to end to start)."""

    attempt: int
    iteration: int
    generation: str
    resume_session: str | None = None  # iterate: the agent session to resume
    feedback: tuple[str, ...] = ()  # concrete failures fed back to the agent
    budget_usd: float | None = None  # what the run may still spend (task and lane budgets)
    fetch_base: bool = False  # fetch the base first: the run is to integrate it (a conflict)
    order: str = ""  # standby: its place in the lane's queue (the lowest is started first)


@dataclass(frozen=True)
class PrOfRun:
    """adopt-pr, update-pr, rebase: the task's open PR, and the run whose work it carries."""

    pr_number: int
    attempt: int
    iteration: int


@dataclass(frozen=True)
class PrRef:
    """close-pr: the PR to close."""

    pr_number: int


@dataclass(frozen=True)
class Completion:
    """complete: the generation that is done, by a merged PR or by the run that succeeded
    where the repository has no forge."""

    generation: str
    pr_number: int | None = None
    attempt: int = 0
    iteration: int = 0


@dataclass(frozen=True)
class FinishRun:
    """finish-run: a run whose supervisor died after its agent ended, to be finished as the
    supervisor would have (commit, checks, ``exit.json``); ``exit_code``: the agent's exit as
    presumed from its final result, for the lane to record where the supervisor recorded none."""

    attempt: int
    iteration: int
    exit_code: int = 0


@dataclass(frozen=True)
class NoPayload:
    """cleanup: the task is all it needs."""


NO_PAYLOAD = NoPayload()
Payload = RunKey | NewRun | PrOfRun | PrRef | Completion | FinishRun | NoPayload

# Each action kind and the one payload type it carries.
PAYLOADS: dict[ActionKind, type[Payload]] = {
    ActionKind.START: NewRun,
    ActionKind.RETRY: NewRun,
    ActionKind.ITERATE: NewRun,
    ActionKind.MARK_CRASHED: RunKey,
    ActionKind.MARK_STALLED: RunKey,
    ActionKind.STOP: RunKey,
    ActionKind.OPEN_PR: RunKey,
    ActionKind.ADOPT_PR: PrOfRun,
    ActionKind.UPDATE_PR: PrOfRun,
    ActionKind.REBASE: PrOfRun,
    ActionKind.CLOSE_PR: PrRef,
    ActionKind.CLEANUP: NoPayload,
    ActionKind.COMPLETE: Completion,
    ActionKind.FINISH_RUN: FinishRun,
    ActionKind.STANDBY: NewRun,
    ActionKind.WITHDRAW: RunKey,
}

P = TypeVar("P", RunKey, NewRun, PrOfRun, PrRef, Completion, FinishRun, NoPayload)


@dataclass(frozen=True)
class Action:
    """One step of a plan: its kind, the task and lane, and the payload its kind carries
    (``PAYLOADS``). ``reason`` is for humans only: apply never reads it."""

    kind: ActionKind
    task: str
    lane: str
    reason: str
    payload: Payload = NO_PAYLOAD

    def __post_init__(self) -> None:
        wanted = PAYLOADS[self.kind]
        if not isinstance(self.payload, wanted):
            raise TypeError(
                f"a {self.kind.value} action carries a {wanted.__name__}, "
                f"not a {type(self.payload).__name__}"
            )

    def want(self, kind: type[P]) -> P:
        """The payload as the type a handler of this action's kind expects."""
        if not isinstance(self.payload, kind):
            raise TypeError(f"{self.kind.value} carries no {kind.__name__}")
        return self.payload

    # Read-only views shared by several kinds, for logs, events and the JSON shape.
    @property
    def attempt(self) -> int:
        return int(getattr(self.payload, "attempt", 0))

    @property
    def iteration(self) -> int:
        return int(getattr(self.payload, "iteration", 0))

    @property
    def generation(self) -> str:
        return str(getattr(self.payload, "generation", ""))

    @property
    def pr_number(self) -> int | None:
        number = getattr(self.payload, "pr_number", None)
        return int(number) if number is not None else None

    @property
    def resume_session(self) -> str | None:
        return self.payload.resume_session if isinstance(self.payload, NewRun) else None

    @property
    def feedback(self) -> tuple[str, ...]:
        return self.payload.feedback if isinstance(self.payload, NewRun) else ()

    @property
    def budget_usd(self) -> float | None:
        return self.payload.budget_usd if isinstance(self.payload, NewRun) else None

    @property
    def fetch_base(self) -> bool:
        return isinstance(self.payload, NewRun) and self.payload.fetch_base

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "action": self.kind.value,
            "task": self.task,
            "lane": self.lane,
            "reason": self.reason,
        }
        if self.attempt:
            data["attempt"] = self.attempt
            data["iteration"] = self.iteration
        if self.generation:
            data["generation"] = self.generation
        if self.pr_number is not None:
            data["pr"] = self.pr_number
        if self.resume_session:
            data["resumeSession"] = self.resume_session
        if self.feedback:
            data["feedback"] = list(self.feedback)
        if self.budget_usd is not None:
            data["budgetUsd"] = self.budget_usd
        if isinstance(self.payload, FinishRun):
            data["exitCode"] = self.payload.exit_code
        if self.fetch_base:
            data["fetchBase"] = True
        if isinstance(self.payload, NewRun) and self.payload.order:
            data["standbyOrder"] = self.payload.order
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Action:
        kind = ActionKind(data["action"])
        wanted = PAYLOADS[kind]
        attempt, iteration = int(data.get("attempt", 0)), int(data.get("iteration", 0))
        generation = str(data.get("generation", ""))
        payload: Payload
        if wanted is NewRun:
            payload = NewRun(
                attempt,
                iteration,
                generation,
                resume_session=data.get("resumeSession"),
                feedback=tuple(data.get("feedback", ())),
                budget_usd=data.get("budgetUsd"),
                fetch_base=bool(data.get("fetchBase", False)),
                order=str(data.get("standbyOrder", "")),
            )
        elif wanted is RunKey:
            payload = RunKey(attempt, iteration)
        elif wanted is PrOfRun:
            payload = PrOfRun(int(data["pr"]), attempt, iteration)
        elif wanted is PrRef:
            payload = PrRef(int(data["pr"]))
        elif wanted is Completion:
            payload = Completion(generation, data.get("pr"), attempt, iteration)
        elif wanted is FinishRun:
            payload = FinishRun(attempt, iteration, int(data.get("exitCode", 0)))
        else:
            payload = NO_PAYLOAD
        return cls(
            kind=kind, task=data["task"], lane=data["lane"], reason=data["reason"], payload=payload
        )


@dataclass(frozen=True)
class Blocked:
    task: str
    reason: str
    why: Why


@dataclass(frozen=True)
class TaskStatus:
    """A task as the plan sees it after the actions: what ``status`` prints."""

    name: str
    phase: Phase
    lane: str
    repo: str
    branch: str
    attempt: int = 0
    iteration: int = 0
    reason: str = ""
    pr: PullRequest | None = None
    next_attempt_at: float | None = None
    cost_usd: float = 0.0
    tokens: int = 0
    why: Why = field(kw_only=True)  # the reason code: what ``reason`` says, for machines

    @property
    def conditions(self) -> tuple[Condition, ...]:
        pr = self.pr
        return conditions(
            self.why, self.reason, pr.state if pr else None, pr.number if pr else None
        )


_new = object.__new__


def task_status(
    name: str,
    phase: Phase,
    lane: str,
    repo: str,
    branch: str,
    *,
    attempt: int,
    iteration: int,
    reason: str,
    pr: PullRequest | None,
    next_attempt_at: float | None,
    cost_usd: float,
    tokens: int,
    why: Why,
) -> TaskStatus:
    """``TaskStatus(...)`` with every field given, built without its generated ``__init__``:
    a frozen dataclass's constructor sets each field through ``object.__setattr__``, a tenth of
    a plan over 100,000 tasks. The same value, field for field (tests/plan holds it to that)."""
    status: TaskStatus = _new(TaskStatus)
    # filled in the order of the fields, as __init__ would: the instances keep sharing one
    # table of keys (a dictionary given whole would cost each status twice the memory)
    fields = status.__dict__
    fields["name"] = name
    fields["phase"] = phase
    fields["lane"] = lane
    fields["repo"] = repo
    fields["branch"] = branch
    fields["attempt"] = attempt
    fields["iteration"] = iteration
    fields["reason"] = reason
    fields["pr"] = pr
    fields["next_attempt_at"] = next_attempt_at
    fields["cost_usd"] = cost_usd
    fields["tokens"] = tokens
    fields["why"] = why
    return status


@dataclass(frozen=True)
class Outcome:
    """The planner's evaluation of an ended run, for apply to record (no effect on the world)."""

    task: str
    attempt: int
    iteration: int
    outcome: Literal["succeeded", "failed", "crashed", "stalled"]
    failures: tuple[str, ...] = ()


class Due(StrEnum):
    """What a pass is due for, when the plan knows the moment (machine-readable)."""

    BACKOFF = "backoff"  # a task's backoff ends: its next attempt may start
    STALL = "stall"  # a live run reaches its stallTimeout without progress
    TIMEOUT = "timeout"  # a live run reaches its timeout
    BUDGET_WINDOW = "budget-window"  # 00:00 UTC: a lane past its daily budget may start again
    HELD = "held"  # an action held back after a lasting failure may be tried again
    EXITING = "exiting"  # a run's end is recorded and its supervisor is about to be gone


_DUE_WHAT: dict[Due, str] = {
    Due.BACKOFF: "the backoff of {subject} ends",
    Due.STALL: "run {subject} reaches its stallTimeout",
    Due.TIMEOUT: "run {subject} reaches its timeout",
    Due.BUDGET_WINDOW: "lane {subject} starts a new budget day (00:00 UTC)",
    Due.HELD: "the held-back action of {subject} may be tried again",
    Due.EXITING: "the supervisor of run {subject} has recorded its end and is exiting",
}


@dataclass(frozen=True, order=True)
class Requeue:
    """When the next pass is due, and why: the earliest moment at which the plan would differ
    from this one with nothing else changing (controller-runtime's ``RequeueAfter``).

    ``subject`` names what is waited on: a task, a run (``task/attempt.iteration``) or a lane.
    """

    at: float  # on the plan's clock (the ``now`` it was given)
    due: Due
    subject: str

    @property
    def message(self) -> str:
        return _DUE_WHAT[self.due].format(subject=self.subject)

    def to_json(self, now: float) -> dict[str, Any]:
        return {
            "at": self.at,
            "after": round(max(0.0, self.at - now), 3),
            "reason": self.due.value,
            "subject": self.subject,
            "message": self.message,
        }


@dataclass(frozen=True)
class LaneSpend:
    """What a lane's runs started since 00:00 UTC spent: the figures its daily budget is held
    to, the same for the planner that enforces it and for ``status`` that shows it."""

    lane: str
    today_usd: float
    today_tokens: int


@dataclass(frozen=True)
class PoolFill:
    """A warm worktree pool a lane should top up after the pass's starts (off the critical
    path): ``ready`` idle worktrees are left on ``base`` once this pass's starts took theirs,
    fewer than the ``wanted`` the repository's ``pool`` asks for."""

    lane: str
    repo: str
    base: str
    ready: int
    wanted: int

    def to_json(self) -> dict[str, Any]:
        return {
            "lane": self.lane,
            "repo": self.repo,
            "base": self.base,
            "ready": self.ready,
            "wanted": self.wanted,
        }


@dataclass(frozen=True)
class Plan:
    revision: str
    serial: int
    now: float
    actions: tuple[Action, ...] = ()
    blocked: tuple[Blocked, ...] = ()
    tasks: tuple[TaskStatus, ...] = ()
    outcomes: tuple[Outcome, ...] = ()
    requeue: Requeue | None = None  # None: nothing is due by time; a trigger or the interval
    lane_spend: tuple[LaneSpend, ...] = ()  # per lane, today (UTC), as the budget counts it
    pools: tuple[PoolFill, ...] = ()  # housekeeping after the actions: not part of ``empty``
    # housekeeping too: per reachable lane, the expired runs whose directories go
    prunes: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @property
    def empty(self) -> bool:
        return not self.actions

    @property
    def requeue_at(self) -> float | None:
        """When the next pass is due, on the plan's clock; None when nothing is due by time."""
        return self.requeue.at if self.requeue is not None else None

    @property
    def requeue_after(self) -> float | None:
        """Seconds from the plan's ``now`` until the next pass is due (never negative)."""
        return max(0.0, self.requeue.at - self.now) if self.requeue is not None else None
