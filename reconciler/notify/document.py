"""The notification document: what a webhook receives as JSON, a command on stdin, and what a
Slack message says.

One model, published as ``schemas/notification.json`` (``reconciler schema``). Receivers may see
the same document twice (delivery is at least once across a restart of ``run``): ``id`` is the
same for every delivery of one transition, so a receiver can drop repeats.

Pure: no I/O.
"""

from __future__ import annotations

import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from reconciler.manifests.models import API_VERSION
from reconciler.manifests.schema import schema_text

# The transitions a document can carry: those a sink subscribes to, and ``control-fixed``, sent to
# the sinks of ``control-broken`` once the problem they were told of is gone.
DocumentTransition = Literal[
    "failed", "pr-open", "done", "budget-exhausted", "stalled", "control-broken", "control-fixed"
]


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)


class NotifiedPR(_Model):
    number: int
    url: str
    state: Literal["open", "closed", "merged"]


class NotificationDocument(_Model):
    """One transition, as told to one sink."""

    api_version: Literal["reconciler/v1"] = "reconciler/v1"
    kind: Literal["Notification"] = "Notification"
    id: str = Field(description="the same for every delivery of this transition (to drop repeats)")
    sink: str = Field(description="the sink's name in the Config")
    transition: DocumentTransition
    task: str | None = Field(description="the task; null for a lane's or the control repo's")
    lane: str | None = Field(description="the task's lane, or the lane whose budget is spent")
    repo: str | None
    phase: str | None = Field(description="the task's phase after the pass (status --json)")
    reason_code: str | None = Field(description="the status's reason code (docs/concepts.md)")
    reason: str = Field(description="the status's sentence, or the control repo's problem")
    pr: NotifiedPR | None
    labels: dict[str, str] = Field(description="the task's labels")
    revision: str | None = Field(description="the control revision the pass reconciled")
    at: str = Field(description="when the pass saw it: ISO 8601, UTC")


def timestamp(seconds: float) -> str:
    """``2026-12-05T07:19:31Z``."""
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


_HEADLINES: dict[str, str] = {
    "failed": "{who} failed",
    "pr-open": "{who} has a PR open",
    "done": "{who} is done",
    "budget-exhausted": "{who} spent its budget",
    "stalled": "{who} stalled",
    "control-broken": "the control repository is broken",
    "control-fixed": "the control repository is fixed",
}


def slack_text(doc: NotificationDocument) -> str:
    """The one line (and PR link) a Slack-compatible webhook posts; Slack's ``&<>`` escaped."""
    who = f"task {doc.task}" if doc.task else f"lane {doc.lane}"
    text = "[reconciler] " + _HEADLINES[doc.transition].format(who=who)
    if doc.lane and doc.task:
        text += f" (lane {doc.lane})"
    if doc.reason:
        text += f": {doc.reason}"
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    if doc.pr is not None:
        text += f"\n<{doc.pr.url}|PR #{doc.pr.number}>"
    return text


def schema_documents() -> dict[str, str]:
    """``{"notification.json": text}``, stable text."""
    schema = NotificationDocument.model_json_schema(by_alias=True, mode="serialization")
    return {
        "notification.json": schema_text(
            schema,
            name="notification",
            title=f"{API_VERSION} Notification",
            description="What a notification sink receives (docs/notifications.md).",
        )
    }
