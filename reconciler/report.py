"""Report models: the typed shapes the CLI prints and the HTTP API serves. The JSON view is their
``to_json``; the CLI's text view (``cli/render.py``) and the API (``reconciler.web``) render the
same value, so the views cannot say different things.

Built from the plan's statuses and the state's records; decides nothing. Keys are camelCase and
every key is always present (``null`` when unknown), as documented in docs/cli.md; ``reconciler
schema`` writes their JSON Schemas (``report_schemas``). ``status_view`` and ``describe`` are the
one computation of ``status`` and ``describe`` for every rendering: read-only (a read-only state
store, the lanes' observation), never the writer's connection.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer
from pydantic.alias_generators import to_camel

from reconciler.manifests.models import API_VERSION, Desired, Task, TaskSpec
from reconciler.manifests.schema import schema_text
from reconciler.plan import Condition, Observed, Phase, Plan, TaskStatus, Why
from reconciler.plan.timing import DAY, HOUR
from reconciler.protocol import PrComment, PullRequest
from reconciler.record import Run
from reconciler.state import EventRow, Store, TaskRow

if TYPE_CHECKING:
    from reconciler.engine import Engine


class Report(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        alias_generator=to_camel,
        populate_by_name=True,
        json_schema_serialization_defaults_required=True,
    )

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


class PullRequestReport(Report):
    number: int
    url: str
    state: Literal["open", "closed", "merged"]
    mergeable: bool | None = Field(
        description="an open PR's head merges into its base now; null when not known"
    )
    behind: bool = Field(description="its base has commits its head has not")
    conflicts: list[str] = Field(description="the conflicting files, where the forge names them")

    @classmethod
    def of(cls, pr: PullRequest) -> Self:
        return cls(
            number=pr.number,
            url=pr.url,
            state=pr.state,
            mergeable=pr.mergeable,
            behind=pr.behind,
            conflicts=list(pr.conflicts),
        )


class PullReport(PullRequestReport):
    """One PR as `pr list --json` and `pr show --json` print it."""

    task: str | None
    lane: str
    repo: str
    title: str
    head: str
    base: str
    head_sha: str | None

    @classmethod
    def listed(cls, lane: str, repo: str, pr: PullRequest) -> Self:
        return cls(
            **dict(PullRequestReport.of(pr)),
            task=pr.task,
            lane=lane,
            repo=repo,
            title=pr.title,
            head=pr.head,
            base=pr.base,
            head_sha=pr.head_sha,
        )


class CommentReport(Report):
    at: float | None
    author: str
    body: str

    @classmethod
    def of(cls, comment: PrComment) -> Self:
        return cls(at=comment.at, author=comment.author, body=comment.body)


class ShowReport(Report):
    """`pr show --json`, and ``GET /api/v1/tasks/{name}/pr``: a PR with its feedback."""

    pr: PullReport
    body: str
    comments: list[CommentReport]

    @classmethod
    def of(cls, lane: str, repo: str, pr: PullRequest, comments: list[PrComment]) -> Self:
        return cls(
            pr=PullReport.listed(lane, repo, pr),
            body=pr.body,
            comments=[CommentReport.of(c) for c in comments],
        )


def newest_pr(prs: list[PullRequest]) -> PullRequest | None:
    """A task's PR that matters: its open one, else its newest."""
    return next((p for p in prs if p.state == "open"), prs[-1] if prs else None)


class ConditionReport(Report):
    type: Literal["Done", "Progressing", "Blocked", "Degraded", "PullRequest"]
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(description="a reason code; for PullRequest the PR's state")
    message: str

    @classmethod
    def of(cls, condition: Condition) -> Self:
        return cls(
            type=condition.type,
            status=condition.status,
            reason=condition.reason,
            message=condition.message,
        )


class TaskReport(Report):
    """A task as the plan sees it: its entry in ``status --json``, and ``describe``'s status."""

    name: str
    phase: Phase
    lane: str
    repo: str
    branch: str
    attempt: int = Field(description="the latest run's attempt; 0 before the first run")
    iteration: int
    reason: str = Field(description="a sentence, or empty")
    reason_code: Why = Field(description="the same reason for machines")
    conditions: list[ConditionReport]
    pr: PullRequestReport | None = Field(description="the newest PR of the task's branch")
    next_attempt_at: float | None = Field(description="in phase backoff: when the next attempt")
    cost_usd: float = Field(description="over all its runs")
    tokens: int = Field(description="input plus output tokens over all its runs")
    first_seen: float | None = Field(
        default=None, description="when the state first saw the task; null before it did"
    )

    @classmethod
    def of(cls, status: TaskStatus, first_seen: float | None = None) -> Self:
        pr = status.pr
        return cls(
            name=status.name,
            phase=status.phase,
            lane=status.lane,
            repo=status.repo,
            branch=status.branch,
            attempt=status.attempt,
            iteration=status.iteration,
            reason=status.reason,
            reason_code=status.why,
            conditions=[ConditionReport.of(c) for c in status.conditions],
            pr=PullRequestReport.of(pr) if pr else None,
            next_attempt_at=status.next_attempt_at,
            cost_usd=status.cost_usd,
            tokens=status.tokens,
            first_seen=first_seen,
        )


class RunReport(Report):
    """One run as state records it."""

    attempt: int
    iteration: int
    generation: str
    started_at: float
    ended_at: float | None
    exit_code: int | None
    signal: int | None
    outcome: Literal["succeeded", "failed", "crashed", "stalled", "stopped"] | None
    failures: list[str] = Field(description="the success criteria it failed, one per item")
    session_id: str | None
    cost_usd: float | None
    tokens: int = Field(description="input plus output tokens")
    turns: int | None
    tool_calls: int | None
    run_dir: str
    # the reconciler's decision on the run: the text view's OUTCOME falls back to it
    mark: Literal["crashed", "stalled", "stopped"] | None = Field(default=None, exclude=True)

    @classmethod
    def of(cls, run: Run) -> Self:
        return cls(
            attempt=run.attempt,
            iteration=run.iteration,
            generation=run.generation,
            started_at=run.started_at,
            ended_at=run.ended_at,
            exit_code=run.exit_code,
            signal=run.signal,
            outcome=run.outcome,
            failures=(run.failures or "").splitlines(),
            session_id=run.session_id,
            cost_usd=run.cost_usd,
            tokens=run.tokens,
            turns=run.turns,
            tool_calls=run.tool_calls,
            run_dir=run.run_dir,
            mark=run.mark,
        )


class EventReport(Report):
    id: int = Field(description="its place in the event log: later events have larger ids")
    at: float
    task: str | None = Field(default=None, description="the task it is about; null: a lane's")
    kind: str
    message: str
    revision: str | None

    @classmethod
    def of(cls, event: EventRow) -> Self:
        return cls(
            id=event.id,
            at=event.at,
            task=event.task,
            kind=event.kind,
            message=event.message,
            revision=event.revision,
        )


def _spec_json(spec: TaskSpec) -> dict[str, Any]:
    return spec.model_dump(mode="json", by_alias=True, exclude_none=True)


# A task's spec as the manifests write it: camelCase, its defaults filled in, its nulls left out.
# A lambda has no return annotation, so the schema stays TaskSpec's rather than a bare object.
SpecJson = Annotated[TaskSpec, PlainSerializer(lambda spec: _spec_json(spec))]  # noqa: PLW0108


class DescribeReport(Report):
    """Everything known about one task: ``describe``'s JSON, and what its text shows."""

    name: str
    status: TaskReport | None = Field(description="null when it is no longer in the manifests")
    spec: SpecJson | None = Field(description="with defaults filled in, nulls left out")
    generation: str | None
    source: str | None = Field(description="where it is defined: FILE:LINE:COLUMN")
    first_seen: float | None
    runs: list[RunReport]
    events: list[EventReport] = Field(description="the last 30, oldest first")

    @classmethod
    def of(
        cls,
        name: str,
        *,
        status: TaskStatus | None,
        task: Task | None,
        row: TaskRow | None,
        runs: list[Run],
        events: list[EventRow],
    ) -> Self:
        first_seen = row.first_seen if row else None
        return cls(
            name=name,
            status=TaskReport.of(status, first_seen) if status else None,
            spec=task.spec if task else None,
            generation=task.generation if task else None,
            source=str(task.source) if task else None,
            first_seen=row.first_seen if row else None,
            runs=[RunReport.of(r) for r in runs],
            events=[EventReport.of(e) for e in events],
        )


class TasksPage(Report):
    """``GET /api/v1/tasks``: one page of ``status --json``'s tasks, by name."""

    revision: str
    tasks: list[TaskReport]
    total: int = Field(description="the tasks the filters let through, over all pages")
    next: str | None = Field(description="the ``after`` of the next page; null on the last")


class RunsReport(Report):
    """``GET /api/v1/tasks/{name}/runs``: every run of a task, oldest first."""

    name: str
    runs: list[RunReport]


class EventsPage(Report):
    """``GET /api/v1/tasks/{name}/events``: a page of a task's events, oldest first."""

    name: str
    events: list[EventReport]
    next: int | None = Field(description="the ``after`` of the next page; null on the last")


class FeedPage(Report):
    """``GET /api/v1/events``: a page of every task's and lane's events. Forward from ``after``
    (oldest first), or without it the newest ``limit`` (still oldest first)."""

    events: list[EventReport]
    next: int | None = Field(description="the ``after`` that continues forward: the last id")


class SummaryReport(Report):
    """``GET /api/v1/summary``: what a page's header shows, without the 10,000 tasks."""

    revision: str = Field(description="the control revision the view is of")
    total: int = Field(description="tasks")
    phases: dict[str, int] = Field(description="tasks by phase, every phase present")
    lanes: list[str]
    control_problem: str | None = Field(description="as in `status --json`")
    manifest_errors: list[dict[str, Any]] = Field(description="as in `status --json`")
    spend_usd: float
    driven: bool = Field(
        description="a `reconciler run` holds the state: what the plan says happens at once"
    )
    reconciling: bool = Field(
        description="this process reconciles (`run --listen`), so a refresh is taken"
    )

    @classmethod
    def of(cls, view: StatusView, reconciling: bool) -> Self:
        phases = dict.fromkeys((p.value for p in Phase), 0)
        for status in view.plan.tasks:
            phases[status.phase.value] += 1
        return cls(
            revision=view.plan.revision,
            total=len(view.plan.tasks),
            phases=phases,
            lanes=sorted(view.desired.lanes),
            control_problem=view.data["controlProblem"],
            manifest_errors=view.data["manifestErrors"],
            spend_usd=view.data["spendUsd"],
            driven=view.driven,
            reconciling=reconciling,
        )


class LogPage(Report):
    """``GET /api/v1/tasks/{name}/log``: a piece of one of a run's files."""

    name: str
    attempt: int
    iteration: int
    file: Literal["output", "prompt", "checks"]
    data: str = Field(description="from ``offset``; output rendered as readable lines")
    offset: int = Field(description="where the next piece starts: the ``offset`` to ask next")
    ended: bool = Field(description="the run is over and everything was read")


class ChangesReport(Report):
    """``GET /api/v1/tasks/{name}/diff``: what the task's branch changed against its base."""

    name: str
    source: Literal["worktree", "branch", "none"] = Field(
        description="worktree: the agent's worktree, uncommitted changes included; branch: "
        "the branch as committed (the worktree is gone); none: nothing to compare yet"
    )
    base: str | None = Field(description="the commit where the branch left its base")
    head: str | None
    diff: str = Field(description="unified diff of tracked files against ``base``")
    untracked: list[str] = Field(description="new files the agent has not added yet")
    truncated: bool = Field(description="the diff was cut (at 1 MiB)")


class PreflightReport(Report):
    name: str
    subject: str = Field(description="the repository or agent it is about; empty: the lane")
    ok: bool
    advisory: bool = Field(description="a failure that does not stop dispatch")
    detail: str
    fix: str


class LaneReport(Report):
    """A lane now: its slots, its spend today against its budget, its pre-flight checks."""

    name: str
    reachable: bool = Field(description="whether this observation reached it")
    error: str | None = Field(description="why it could not be observed")
    slots: int = Field(description="its maxConcurrency")
    slots_used: int = Field(description="its tasks in phase running")
    slots_free: int
    today_usd: float = Field(description="spent by its runs started since 00:00 UTC")
    today_tokens: int
    budget_usd: float | None
    budget_tokens: int | None
    spend_by_hour: list[float] = Field(
        description="spent today by the end of each UTC hour so far (cumulative, from 00:00)"
    )
    preflight: list[PreflightReport]


class LanesReport(Report):
    """``GET /api/v1/lanes``."""

    revision: str
    lanes: list[LaneReport]


# The commands whose ``--json`` output has a model, and so a JSON Schema (``reconciler schema``).
REPORTS: dict[str, type[Report]] = {"describe": DescribeReport}
# The HTTP API's own pages (its other documents are the commands' JSON): ``api-<name>.json``.
API_REPORTS: dict[str, type[Report]] = {
    "tasks": TasksPage,
    "runs": RunsReport,
    "events": EventsPage,
    "feed": FeedPage,
    "summary": SummaryReport,
    "lanes": LanesReport,
    "log": LogPage,
    "changes": ChangesReport,
    "pr": ShowReport,
}


def report_schemas() -> dict[str, str]:
    """``{"describe.json": text, "api-tasks.json": text, …}``: the JSON Schemas of the reports,
    stable text."""
    schemas = {
        f"{command}.json": schema_text(
            model.model_json_schema(by_alias=True, mode="serialization"),
            name=command,
            title=f"{API_VERSION} {command} --json",
            description=f"What `reconciler {command} --json` prints.",
        )
        for command, model in REPORTS.items()
    }
    for name, model in API_REPORTS.items():
        schemas[f"api-{name}.json"] = schema_text(
            model.model_json_schema(by_alias=True, mode="serialization"),
            name=f"api-{name}",
            title=f"{API_VERSION} GET /api/v1/{name}",
            description=f"What the HTTP API's {name} endpoint answers (docs/api.md).",
        )
    return schemas


# ----------------------------------------------------------------- the one computation of each


_NEXT_PASS = frozenset(
    {
        Why.STARTING,
        Why.RETRYING,
        Why.ITERATING,
        Why.ADDRESSING_FEEDBACK,
        Why.OPENING_PR,
        Why.UPDATING_PR,
        Why.REMOVING,
        Why.STOPPING,
    }
)


def when_next(status: TaskStatus, driven: bool) -> TaskStatus:
    """``status`` with its reason saying when what it announces happens: a pass of a running
    ``reconciler run`` does it as soon as it is due (``driven``); otherwise nothing happens
    until the next ``reconciler apply`` (cron, a hook, a person)."""
    if driven or not status.reason:
        return status
    if status.why in _NEXT_PASS:
        return _reworded(status, f"{status.reason} (at the next apply: no `run` is running)")
    if status.why is Why.BACKING_OFF:
        return _reworded(status, f"{status.reason}, at the first apply after that")
    return status


def _reworded(status: TaskStatus, reason: str) -> TaskStatus:
    """``status`` with another reason: a shallow copy (``dataclasses.replace`` runs the whole
    constructor, a cost that shows over 10,000 tasks)."""
    new = copy.copy(status)
    object.__setattr__(new, "reason", reason)
    return new


def task_json(status: TaskStatus, first_seen: float | None) -> dict[str, Any]:
    """``TaskReport.of(status, first_seen).to_json()``, built directly: ``status --json`` and
    the API render 10,000 of them per computation, where the model's construction and dump
    cost a third of the whole. A test holds the two equal."""
    pr = status.pr
    return {
        "name": status.name,
        "phase": status.phase.value,
        "lane": status.lane,
        "repo": status.repo,
        "branch": status.branch,
        "attempt": status.attempt,
        "iteration": status.iteration,
        "reason": status.reason,
        "reasonCode": status.why.value,
        "conditions": [
            {"type": c.type, "status": c.status, "reason": c.reason, "message": c.message}
            for c in status.conditions
        ],
        "pr": None
        if pr is None
        else {
            "number": pr.number,
            "url": pr.url,
            "state": pr.state,
            "mergeable": pr.mergeable,
            "behind": pr.behind,
            "conflicts": list(pr.conflicts),
        },
        "nextAttemptAt": status.next_attempt_at,
        "costUsd": status.cost_usd,
        "tokens": status.tokens,
        "firstSeen": first_seen,
    }


def status_json(plan: Plan, ages: dict[str, float] | None = None) -> dict[str, Any]:
    seen = ages or {}
    return {
        "revision": plan.revision,
        "tasks": [task_json(s, seen.get(s.name)) for s in plan.tasks],
        "requeue": plan.requeue.to_json(plan.now) if plan.requeue else None,
    }


def lane_spend(desired: Desired, plan: Plan) -> dict[str, dict[str, Any]]:
    """Per lane: what its runs started since 00:00 UTC spent, as the planner holds it to its
    daily budget (the plan's figures: status never counts differently), and that budget."""
    spent = {s.lane: s for s in plan.lane_spend}
    lanes: dict[str, dict[str, Any]] = {}
    for name, lane in desired.lanes.items():
        today = spent.get(name)
        lanes[name] = {
            "todayUsd": today.today_usd if today else 0.0,
            "todayTokens": today.today_tokens if today else 0,
            "budgetUsd": lane.budget.max_cost_usd,
            "budgetTokens": lane.budget.max_tokens,
        }
    return lanes


@dataclass(frozen=True)
class StatusView:
    """One computation of ``status``, for any of its renderings (the CLI's table and JSON, the
    API's status, tasks, lanes and metrics)."""

    desired: Desired
    plan: Plan
    observed: Observed
    data: dict[str, Any]  # the status --json document
    ages: dict[str, float]  # task → when the state first saw it
    said: list[str]  # control problems to say on stderr (the fallback's is said already)
    driven: bool  # a `reconciler run` holds the state: what the plan announces happens at once


def planned(engine: Engine, desired: Desired, store: Store) -> tuple[Plan, Observed, bool]:
    """Observe and plan read-only, each status saying when what it announces happens."""
    from reconciler.daemon import running_pid

    plan, observed = engine.observe_and_plan(desired, store)
    driven = running_pid(engine.ctx.state_dir) is not None
    plan = dataclasses.replace(plan, tasks=tuple(when_next(s, driven) for s in plan.tasks))
    return plan, observed, driven


def status_view(engine: Engine, desired: Desired) -> StatusView:
    """``status``: the plan's statuses for ``desired`` (what ``engine.load_for_reading`` gave),
    with the control repo's problems and each lane's spend today."""
    with engine.reading() as store:
        plan, observed, driven = planned(engine, desired, store)
        ages = {name: row.first_seen for name, row in store.tasks().items()}
        problems = [p for p in (store.get_meta("control_problem"),) if p]
    fetch = engine.control.fetch_error
    if fetch and not any("could not be fetched" in p for p in problems):
        problems.append(f"the control remote could not be fetched ({fetch})")
    fallback = engine.fallback
    said = [p for p in problems if fallback is None or fallback.head[:12] not in p]
    if fallback is not None and not any(fallback.head[:12] in p for p in problems):
        problems.append(fallback.problem)
    data = status_json(plan, ages)
    data["controlProblem"] = "; ".join(problems) or None
    data["manifestErrors"] = [
        {"path": e.path, "line": e.line, "column": e.column, "message": e.message, "hint": e.hint}
        for e in (fallback.errors if fallback is not None else ())
    ]
    data["lanes"] = lane_spend(desired, plan)
    data["spendUsd"] = round(sum(t.cost_usd for t in plan.tasks), 6)
    return StatusView(desired, plan, observed, data, ages, said, driven)


def describe(name: str, desired: Desired, plan: Plan, store: Store) -> DescribeReport | None:
    """``describe NAME`` from a plan's statuses and the state; None when no such task is known."""
    status = next((s for s in plan.tasks if s.name == name), None)
    task = desired.tasks.get(name)
    row = store.task(name)
    if status is None and task is None and row is None:
        return None
    return DescribeReport.of(
        name,
        status=status,
        task=task,
        row=row,
        runs=store.runs(name),
        events=store.events(name, limit=30),
    )


def spend_by_hour(observed: Observed, now: float) -> dict[str, list[float]]:
    """Per lane: what its runs started today had spent by the end of each UTC hour so far,
    cumulative, counted as the daily budget counts (a run's spend at its start)."""
    midnight = now - now % DAY
    hours = int((now - midnight) // HOUR) + 1
    spent: dict[str, list[float]] = {}
    started = [
        (run.lane, run.started_at, run.cost_usd) for runs in observed.runs.values() for run in runs
    ]
    started += [(h.lane, h.hour, h.cost_usd) for h in observed.settled_spend]
    for lane, at, cost in started:
        if at >= midnight and cost:
            hour = min(hours - 1, int((at - midnight) // HOUR))
            spent.setdefault(lane, [0.0] * hours)[hour] += cost
    for lane, per_hour in spent.items():
        total = 0.0
        for hour, cost in enumerate(per_hour):
            total += cost
            per_hour[hour] = round(total, 6)
        spent[lane] = per_hour
    return spent


def lanes_report(view: StatusView) -> LanesReport:
    """Each lane's slots, spend today and pre-flight, from one status computation."""
    used: dict[str, int] = {}
    for status in view.plan.tasks:
        if status.phase is Phase.RUNNING:
            used[status.lane] = used.get(status.lane, 0) + 1
    hourly = spend_by_hour(view.observed, view.plan.now)
    lanes = []
    for name, spec in sorted(view.desired.lanes.items()):
        seen = view.observed.lanes.get(name)
        spend = view.data["lanes"][name]
        slots = spec.max_concurrency
        lanes.append(
            LaneReport(
                name=name,
                reachable=seen.reachable if seen else False,
                error=seen.error if seen else None,
                slots=slots,
                slots_used=used.get(name, 0),
                slots_free=max(0, slots - used.get(name, 0)),
                today_usd=spend["todayUsd"],
                today_tokens=spend["todayTokens"],
                budget_usd=spend["budgetUsd"],
                budget_tokens=spend["budgetTokens"],
                spend_by_hour=hourly.get(name, []),
                preflight=[
                    PreflightReport(
                        name=c.name,
                        subject=c.subject,
                        ok=c.ok,
                        advisory=c.advisory,
                        detail=c.detail,
                        fix=c.fix,
                    )
                    for c in (seen.preflight if seen else ())
                ],
            )
        )
    return LanesReport(revision=view.plan.revision, lanes=lanes)
