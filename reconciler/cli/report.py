"""Report models: the typed shapes the CLI prints. The JSON view is their ``to_json`` and the text
view renders the same value (``render.py``), so the two cannot say different things.

Built from the plan's statuses and the state's records; decides nothing. Keys are camelCase and
every key is always present (``null`` when unknown), as documented in docs/cli.md; ``reconciler
schema`` writes their JSON Schemas (``report_schemas``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer
from pydantic.alias_generators import to_camel

from reconciler.manifests.models import API_VERSION, Task, TaskSpec
from reconciler.manifests.schema import schema_text
from reconciler.plan import Condition, Phase, TaskStatus, Why
from reconciler.protocol import PullRequest
from reconciler.record import Run
from reconciler.state import EventRow, TaskRow


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

    @classmethod
    def of(cls, status: TaskStatus) -> Self:
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
    at: float
    kind: str
    message: str
    revision: str | None

    @classmethod
    def of(cls, event: EventRow) -> Self:
        return cls(at=event.at, kind=event.kind, message=event.message, revision=event.revision)


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
        return cls(
            name=name,
            status=TaskReport.of(status) if status else None,
            spec=task.spec if task else None,
            generation=task.generation if task else None,
            source=str(task.source) if task else None,
            first_seen=row.first_seen if row else None,
            runs=[RunReport.of(r) for r in runs],
            events=[EventReport.of(e) for e in events],
        )


# The commands whose ``--json`` output has a model, and so a JSON Schema (``reconciler schema``).
REPORTS: dict[str, type[Report]] = {"describe": DescribeReport}


def report_schemas() -> dict[str, str]:
    """``{"describe.json": text}``: the JSON Schemas of the reports, stable text."""
    return {
        f"{command}.json": schema_text(
            model.model_json_schema(by_alias=True, mode="serialization"),
            name=command,
            title=f"{API_VERSION} {command} --json",
            description=f"What `reconciler {command} --json` prints.",
        )
        for command, model in REPORTS.items()
    }
