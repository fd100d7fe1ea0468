"""The notifier of ``reconciler run``: after each pass, what changed goes to the sinks, by
worker threads, so that no receiver can slow a pass.

- The loop's thread decides (``observe``): it compares the pass's transitions
  (``reconciler.notify.transitions``) with what was notified before (the ``notified`` table of the
  state) and queues one delivery per matching sink. That costs a comparison per task; nothing in
  it waits on a sink.
- ``WORKERS`` threads deliver from a bounded queue: each delivery up to ``attempts`` tries, each
  try bounded by the sink's ``timeout``, waiting ``retryDelay`` (doubling, capped at a minute)
  between them (tenacity). A full queue drops the delivery with an event; it never blocks.
- Each outcome is an event on the task: ``notified`` or ``notify-failed``, naming the sink, the
  transition and how many tries it took, never the URL. Once every sink had its say, the
  occurrence is recorded as notified, in the same transaction as the last event.

Delivery is at least once: what was not delivered when ``run`` stopped (or crashed) is not
recorded, and the next start sends it again if it still holds; every delivery of one transition
carries the same document ``id``. A transition that held only while ``run`` was down (a run that
stalled and was retried by a cron ``apply``) is not seen: the notifier reads levels, like the
planner, and reports what holds at its passes.

When sinks are first configured, what is so already is recorded without a word (the baseline):
a new sink hears of transitions from then on, not of every task that failed last year.
"""

from __future__ import annotations

import json
import os
import pwd
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import tenacity

from reconciler.manifests.models import Desired, Notification
from reconciler.manifests.policy import Policy
from reconciler.notify.document import slack_text, timestamp
from reconciler.notify.sinks import Refused, Retry, command_refusal, deliver
from reconciler.notify.transitions import CONTROL, Change, control_change, task_changes, wanted_by
from reconciler.plan import Plan
from reconciler.state import NOTIFY_SINCE, StateError, Store

WORKERS = 4
QUEUE_SIZE = 1000
DRAIN = 10.0  # seconds a stopping `run` gives deliveries under way before leaving them
MAX_RETRY_WAIT = 60.0

Log = Callable[..., None]  # daemon.Log's signature: (event, message, level="info", **fields)


class _Stopped(Exception):
    """The reconciler is stopping: the delivery is left for the next start."""


@dataclass
class _Group:
    """One change, told to the sinks that want it; recorded once the last of them is done."""

    change: Change
    revision: str | None
    pending: int


@dataclass(frozen=True)
class _Delivery:
    sink: Notification
    group: _Group
    body: bytes
    text: bytes


@dataclass
class _Tries:
    errors: list[str] = field(default_factory=list)


class Notifier:
    """Tracks what was notified in ``store`` and delivers the rest (see the module docstring).

    ``policy`` is the admin policy in force (it decides whether command sinks may run); ``log``
    takes the daemon's log lines. ``start`` before the first ``observe``, ``stop`` before the
    store is closed."""

    def __init__(
        self,
        store: Store,
        *,
        policy: Callable[[], Policy] = Policy,
        log: Log | None = None,
        clock: Callable[[], float] = time.time,
        workers: int = WORKERS,
        queue_size: int = QUEUE_SIZE,
    ) -> None:
        self.store = store
        self.policy = policy
        self.log: Log = log or (lambda *_a, **_k: None)
        self.clock = clock
        self._queue: queue.Queue[_Delivery | None] = queue.Queue(maxsize=queue_size)
        self._threads = [
            threading.Thread(target=self._work, name=f"notify-{n}", daemon=True)
            for n in range(workers)
        ]
        self._closing = threading.Event()  # no more deliveries are queued
        self._abort = threading.Event()  # deliveries under way give up
        self._lock = threading.Lock()  # the two dicts below, and groups' counts
        self._record_lock = threading.Lock()  # held while a worker writes: stop waits for it
        self._notified: dict[tuple[str, str], str] | None = None  # the table, mirrored
        self._inflight: dict[tuple[str, str], str] = {}  # key → occurrence being delivered

    # ------------------------------------------------------------------- the loop's side

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def observe(
        self,
        desired: Desired | None,
        plan: Plan | None,
        *,
        problem: str | None = None,
        skip: frozenset[str] = frozenset(),
    ) -> None:
        """After a pass: queue what changed. ``plan`` None: the pass planned nothing (only the
        control repository's ``problem`` is news); ``skip``: tasks whose actions failed."""
        if desired is None:
            return  # nothing was ever loaded: no sinks are known
        try:
            self._observe(desired, plan, problem, skip)
        except StateError as exc:  # a full disk passes: the next pass compares again
            self.log("notify", f"notifications wait: {exc}", level="error")

    def _observe(
        self, desired: Desired, plan: Plan | None, problem: str | None, skip: frozenset[str]
    ) -> None:
        sinks = desired.config.notifications
        if not sinks:
            self._forget()
            return
        baseline = self.store.get_meta(NOTIFY_SINCE) is None
        if baseline and plan is None:
            return  # a baseline is taken of a pass that saw the tasks, or old news comes next
        news: dict[tuple[str, str], Change] = {}  # by key: a lane's tasks say it once
        with self._lock:
            if self._notified is None:
                self._notified = self.store.notified()
            notified, inflight = self._notified, self._inflight

            def is_news(key: tuple[str, str], occurrence: str) -> bool:
                return key not in news and occurrence not in (notified.get(key), inflight.get(key))

            if plan is not None:
                for change in task_changes(desired, plan.tasks, plan.now, skip, is_news):
                    news[change.key] = change
            control = control_change(problem, notified.get((CONTROL, "control-broken")))
            if control is not None and is_news(control.key, control.occurrence):
                news[control.key] = control
        silent = list(news.values())
        if not baseline:
            silent = [c for c in silent if not _sinks_of(sinks, c)]
        if silent or baseline:
            self._record_silently(silent, baseline)
        if baseline:
            return
        now = self.clock() if plan is None else plan.now
        for change in news.values():
            wanting = _sinks_of(sinks, change)
            if wanting:
                self._queue_change(change, wanting, desired.revision, now)

    def _forget(self) -> None:
        """No sinks: drop the record, so that sinks configured later start from a baseline."""
        if self.store.get_meta(NOTIFY_SINCE) is None:
            return
        with self._record_lock, self.store.transaction() as tx:
            tx.clear_notified()
            tx.set_meta(NOTIFY_SINCE, None)
        with self._lock:
            self._notified = {}

    def _record_silently(self, changes: list[Change], baseline: bool) -> None:
        now = self.clock()
        with self._record_lock, self.store.transaction() as tx:
            for change in changes:
                tx.set_notified(change.subject, change.kind, change.occurrence, now)
            if baseline:
                tx.set_meta(NOTIFY_SINCE, timestamp(now))
        with self._lock:
            assert self._notified is not None
            self._notified.update({c.key: c.occurrence for c in changes})

    def _queue_change(
        self, change: Change, sinks: list[Notification], revision: str | None, now: float
    ) -> None:
        group = _Group(change, revision, len(sinks))
        with self._lock:
            self._inflight[change.key] = change.occurrence
        at = timestamp(now)
        for sink in sinks:
            doc = change.document(sink.name, revision, at)
            body = doc.model_dump_json(by_alias=True).encode()
            text = _slack_body(slack_text(doc)) if sink.type == "slack" else b""
            try:
                self._queue.put_nowait(_Delivery(sink, group, body, text))
            except queue.Full:
                self._finish(
                    _Delivery(sink, group, body, text),
                    False,
                    f"{sink.name}: {change.transition} dropped: {self._queue.maxsize} "
                    "deliveries are waiting already (a receiver is slow or down)",
                )

    def in_flight(self) -> int:
        """Changes handed to the sinks and not yet recorded (0: the passes so far are told)."""
        with self._lock:
            return len(self._inflight)

    # ----------------------------------------------------------------- the workers' side

    def _work(self) -> None:
        while True:
            try:
                delivery = self._queue.get(timeout=0.5)
            except queue.Empty:
                if self._closing.is_set():
                    return
                continue
            if delivery is None:  # stopping, and the queue is drained up to here
                return
            if self._abort.is_set():
                continue  # stopping: left for the next start
            try:
                ok, message = self._deliver(delivery)
            except _Stopped:
                continue
            except Exception as exc:  # a worker must outlive any one delivery
                ok, message = False, f"{delivery.sink.name}: {type(exc).__name__}: {exc}"
            self._finish(delivery, ok, message)

    def _deliver(self, delivery: _Delivery) -> tuple[bool, str]:
        sink, change = delivery.sink, delivery.group.change
        tries = _Tries()
        refusal = self._command_refusal() if sink.type == "command" else None
        policy = self._policy_or_none() if sink.type != "command" else None

        def attempt() -> None:
            try:
                deliver(
                    sink, delivery.body, delivery.text, change.transition, refusal, policy=policy
                )
            except (Retry, Refused) as exc:
                tries.errors.append(str(exc))
                raise

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(sink.attempts),
            wait=tenacity.wait_exponential(multiplier=sink.retry_delay, max=MAX_RETRY_WAIT),
            retry=tenacity.retry_if_exception_type(Retry),
            sleep=self._sleep,
            reraise=True,
        )
        what = f"{sink.name}: {change.transition}"
        try:
            retrying(attempt)
        except (Retry, Refused) as exc:
            n = len(tries.errors)
            return False, f"{what} not delivered ({_tries(n)}): {exc}"
        n = len(tries.errors) + 1
        before = f"; before: {', '.join(tries.errors)}" if tries.errors else ""
        return True, f"{what} delivered ({_tries(n)}{before})"

    def _sleep(self, seconds: float) -> None:
        if self._abort.wait(seconds):
            raise _Stopped

    def _policy_or_none(self) -> Policy | None:
        """The admin policy for a sink's URL; a policy file that cannot be read refuses every
        command sink (``_command_refusal``) but does not silence the webhooks."""
        try:
            return self.policy()
        except Exception:  # said by the command sinks' refusal and by every pass's lanes
            return None

    def _command_refusal(self) -> str | None:
        euid = os.geteuid()
        try:
            user = pwd.getpwuid(euid).pw_name
        except KeyError:
            user = str(euid)
        try:
            policy = self.policy()
        except Exception as exc:  # the policy file cannot be trusted or read: it says why
            return str(exc)
        return command_refusal(policy, euid, user)

    def _finish(self, delivery: _Delivery, ok: bool, message: str) -> None:
        """Record one delivery's outcome; the last of its change's sinks records the change."""
        group, change = delivery.group, delivery.group.change
        with self._lock:
            group.pending -= 1
            last = group.pending == 0
            current = self._inflight.get(change.key) == change.occurrence
        kind = "notified" if ok else "notify-failed"
        at = self.clock()
        with self._record_lock:
            if self._abort.is_set():
                return  # the store may be closed: the next start sends it again
            try:
                with self.store.transaction() as tx:
                    tx.add_event(change.task, kind, message, group.revision, at)
                    if last and current:
                        tx.set_notified(change.subject, change.kind, change.occurrence, at)
            except StateError as exc:
                self.log("notify", f"cannot record a notification: {exc}", level="error")
                last = False  # not recorded: the next pass sends it again
        if last and current:
            with self._lock:
                self._inflight.pop(change.key, None)
                if self._notified is not None:
                    self._notified[change.key] = change.occurrence
        elif last:
            with self._lock:
                if self._inflight.get(change.key) == change.occurrence:
                    self._inflight.pop(change.key, None)
        subject = change.task or change.lane or "control repository"
        level = "info" if ok else "warning"
        self.log("notify", f"{subject}: {message}", level=level, sink=delivery.sink.name)

    # ------------------------------------------------------------------------- stopping

    def stop(self, drain: float = DRAIN) -> None:
        """Let deliveries under way finish for up to ``drain`` seconds, then leave the rest
        (not recorded: the next start sends them again)."""
        self._closing.set()
        for _thread in self._threads:
            try:
                self._queue.put_nowait(None)  # an idle worker ends at once
            except queue.Full:
                break  # the workers see _closing once they emptied it
        deadline = time.monotonic() + drain
        running = [thread for thread in self._threads if thread.is_alive()]
        for thread in running:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._record_lock:
            self._abort.set()
        for thread in running:
            thread.join(0.5)  # a try under way ends within its timeout; it records nothing


def _sinks_of(sinks: list[Notification], change: Change) -> list[Notification]:
    return [sink for sink in sinks if wanted_by(sink, change)]


def _tries(n: int) -> str:
    return "1 try" if n == 1 else f"{n} tries"


def _slack_body(text: str) -> bytes:
    return json.dumps({"text": text}).encode()
