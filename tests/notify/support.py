"""What the notification tests build: desired states with sinks, task statuses, plans, and a
notifier over a real state store."""

from __future__ import annotations

from typing import Any

from reconciler.manifests.models import ConfigSpec, Desired, TaskSpec, make_task
from reconciler.plan import Phase, Plan, TaskStatus, Why
from reconciler.protocol import PullRequest
from reconciler.state import EventRow, Store

REVISION = "c0ffee" * 6 + "abcd"


def desired(*sinks: dict[str, Any], tasks: dict[str, dict[str, str]] | None = None) -> Desired:
    """Tasks (name → labels) of lane web, and the Config's ``notifications``."""
    config = ConfigSpec.model_validate({"notifications": list(sinks)})
    spec = TaskSpec(lane="web", repo="webapp", agent="claude", prompt="Do it.")
    found = tasks if tasks is not None else {"a": {}, "b": {"team": "web"}}
    return Desired(
        revision=REVISION,
        config=config,
        tasks={name: make_task(name, spec, labels=labels) for name, labels in found.items()},
    )


def status(name: str, phase: str, why: Why, **kw: Any) -> TaskStatus:
    return TaskStatus(
        name=name,
        phase=Phase(phase),
        lane=kw.pop("lane", "web"),
        repo="webapp",
        branch=f"agent/{name}",
        why=why,
        **kw,
    )


def pr(number: int, state: str = "open") -> PullRequest:
    return PullRequest(
        number=number,
        url=f"https://forge.example/pulls/{number}",
        state=state,
        head="agent/a",
        base="main",
        title="t",
    )


def plan(*statuses: TaskStatus, now: float = 1_700_000_000.0) -> Plan:
    return Plan(revision=REVISION, serial=0, now=now, tasks=statuses)


PENDING = (
    status("a", "pending", Why.WAITING_FOR_SLOT),
    status("b", "pending", Why.WAITING_FOR_SLOT),
)


def failed(name: str = "a", attempt: int = 3) -> TaskStatus:
    return status(
        name,
        "failed",
        Why.ATTEMPTS_EXHAUSTED,
        attempt=attempt,
        iteration=1,
        reason=f"all {attempt} attempts failed",
    )


def events(store: Store, kind: str | None = None) -> list[EventRow]:
    return [e for e in store.events(limit=1000) if kind is None or e.kind == kind]
