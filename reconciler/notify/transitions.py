"""Which transitions a pass shows, decided from what the pass computed anyway: each task's status
after the plan (its phase and reason code) and the control repository's problem.

A transition is identified by its subject (a task; ``lane:NAME`` for a lane's budget; ``:control``
for the control repository), its kind and an *occurrence*: what tells this time from the last one
(the PR's number, the run that stalled, the generation that failed). The notifier compares the
occurrence with the one it last notified, so a status that stays as it is is news once, a task
failing again after its manifest changed is news again, and a restart neither repeats old news nor
misses what changed while it was down. This is reconciling by level: the pass's statuses are read
as they are, never replayed as a stream of events.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from reconciler.manifests.models import Desired, Notification, Transition
from reconciler.notify.document import DocumentTransition, NotificationDocument, NotifiedPR
from reconciler.plan import Phase, TaskStatus, Why
from reconciler.redact import redact

CONTROL = ":control"
FIXED = "ok"  # the control subject's occurrence once its problem is gone
_STALLED = frozenset({Why.STALLED, Why.TIMED_OUT})
_DAY = 86400


def lane_subject(lane: str) -> str:
    return f"lane:{lane}"  # a colon: never a task's name


@dataclass(frozen=True)
class Change:
    """One transition a pass shows, with what its document says."""

    subject: str
    kind: Transition  # what sinks subscribe to (``control-broken`` also for its fix)
    occurrence: str
    transition: DocumentTransition  # what the document says
    reason: str
    task: str | None = None
    lane: str | None = None
    repo: str | None = None
    phase: str | None = None
    reason_code: str | None = None
    pr: NotifiedPR | None = None
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str]:
        return self.subject, self.kind

    @property
    def id(self) -> str:
        blob = f"{self.subject}\0{self.transition}\0{self.occurrence}".encode()
        return hashlib.sha256(blob).hexdigest()[:20]

    def document(self, sink: str, revision: str | None, at: str) -> NotificationDocument:
        return NotificationDocument(
            id=self.id,
            sink=sink,
            transition=self.transition,
            task=self.task,
            lane=self.lane,
            repo=self.repo,
            phase=self.phase,
            reason_code=self.reason_code,
            reason=self.reason,
            pr=self.pr,
            labels=self.labels,
            revision=revision,
            at=at,
        )


def _always(_key: tuple[str, str], _occurrence: str) -> bool:
    return True


def task_changes(
    desired: Desired,
    statuses: Iterable[TaskStatus],
    now: float,
    skip: frozenset[str],
    is_news: Callable[[tuple[str, str], str], bool] = _always,
) -> Iterator[Change]:
    """The transitions the tasks' statuses show for which ``is_news(key, occurrence)`` holds
    (a change is made only for those: most statuses of a large pass are old news). Tasks in
    ``skip`` (an action of theirs failed this pass: their status may not hold) and tasks no
    longer in the manifests are left for a later pass."""
    for status in statuses:
        task = desired.tasks.get(status.name)
        if task is None or status.name in skip:
            continue
        for subject, kind, occurrence in _occurrences(status, task.generation, now):
            if not is_news((subject, kind), occurrence):
                continue
            pr = status.pr
            lane_wide = subject != status.name
            yield Change(
                subject=subject,
                kind=kind,
                occurrence=occurrence,
                transition=kind,
                reason=redact(status.reason),
                task=None if lane_wide else status.name,
                lane=status.lane,
                repo=None if lane_wide else status.repo,
                phase=None if lane_wide else status.phase.value,
                reason_code=status.why.value,
                pr=None
                if pr is None or lane_wide
                else NotifiedPR(number=pr.number, url=pr.url, state=pr.state),
                labels={} if lane_wide else dict(task.labels),
            )


def _occurrences(
    status: TaskStatus, generation: str, now: float
) -> Iterator[tuple[str, Transition, str]]:
    """(subject, transition, occurrence) of what this status is an instance of."""
    name, why, pr = status.name, status.why, status.pr
    run = f"{generation}/{status.attempt}.{status.iteration}"
    if why == Why.BUDGET_EXHAUSTED:
        yield name, "budget-exhausted", generation
    elif why == Why.LANE_BUDGET_EXHAUSTED:  # once per lane and UTC day, not once per task
        yield lane_subject(status.lane), "budget-exhausted", str(int(now // _DAY))
    elif status.phase == Phase.FAILED:
        yield name, "failed", f"{generation}/{status.attempt}"
    if why in _STALLED:
        yield name, "stalled", run
    if status.phase == Phase.PR_OPEN and pr is not None and pr.state == "open":
        yield name, "pr-open", f"#{pr.number}"
    if status.phase == Phase.DONE:
        yield name, "done", f"#{pr.number}" if pr is not None else generation


def control_change(problem: str | None, notified: str | None) -> Change | None:
    """The control repository's transition: broken (once per distinct problem), or fixed (once,
    after a problem that was notified). ``notified`` is the occurrence last notified."""
    if problem is None:
        if notified is None or notified == FIXED:
            return None
        return Change(CONTROL, "control-broken", FIXED, "control-fixed", "the problem is resolved")
    occurrence = hashlib.sha256(_gist(problem).encode()).hexdigest()[:16]
    return Change(CONTROL, "control-broken", occurrence, "control-broken", redact(problem))


_DETAIL = re.compile(r"\s*\([^()]*\)")


def _gist(problem: str) -> str:
    """A problem without its details in parentheses: an error's wording (a fetch's timing, a
    connection's address) may change from one try to the next, the problem does not."""
    while True:
        shorter = _DETAIL.sub("", problem)
        if shorter == problem:
            return problem
        problem = shorter


def wanted_by(sink: Notification, change: Change) -> bool:
    """Does ``sink`` get ``change``? Its ``on`` names the kind; ``lanes`` and ``labels`` select
    tasks (a lane's budget passes ``lanes`` alone; the control repository passes both)."""
    if change.kind not in sink.on:
        return False
    if change.lane is not None and sink.lanes and change.lane not in sink.lanes:
        return False
    if change.task is not None and sink.labels:
        return all(change.labels.get(k) == v for k, v in sink.labels.items())
    return True
