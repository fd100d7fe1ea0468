"""`reconciler run`: a pass at start, then whenever something changed or the plan said a pass
is due, and at least every interval.

Triggers coalesce into one wake-up (a burst of events is one or two passes, never one each):

- the control repository: manifest files of a local working copy, its commits (``.git`` refs),
  the refs of a local bare repository; a remote one is fetched every pass;
- the directories of the live runs of the lanes on this machine (each one checked to be the lane
  user's own, never followed through a symlink, never a whole tree: ``reconciler.lanes.paths``):
  a supervisor writing ``exit.json`` (an agent ended or was killed) wakes the loop within a
  fraction of a second;
- ``reconciler poke`` and SIGHUP from outside (the post-receive hook and ``pr merge`` poke);
- under ``--listen``, ``POST /api/v1/refresh`` and the webhooks (``reconciler.web.hooks``); a
  delivery that names pull requests has their forge feedback read anew on the next pass;
- the time the last plan said the next pass is due (``Plan.requeue``: a backoff ending, a stall
  or timeout deadline, the lane budget's new day), when that is sooner than the interval.

The loop holds the state lock for its whole life (a cron ``apply`` meanwhile exits 75). SIGTERM
and SIGINT finish the current pass, release the lock and exit; agents keep running and the next
start adopts them. When the control remote cannot be fetched, or a new revision has manifest
errors, the last good revision keeps being reconciled (nothing is pruned because of either) and
the state's ``control_problem`` says so until it is resolved.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import json
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from reconciler import safefile
from reconciler.apply import fill_pools
from reconciler.control import ControlError
from reconciler.engine import Engine, PassResult
from reconciler.lanes import LaneClient, LaneUnavailable, RequestFailed, paths
from reconciler.lanes.policy import PolicyError
from reconciler.manifests.errors import ManifestErrors
from reconciler.manifests.models import Desired
from reconciler.notify import Notifier
from reconciler.plan import ActionKind, Plan
from reconciler.protocol import Recheck
from reconciler.redact import redact
from reconciler.state import LAST_REVISION, StateError, Store

PIDFILE = "run.pid"
# A burst of events (a push touching many files, several runs ending together) makes one pass:
# the pass waits until no event came for QUIET seconds, and at most COALESCE after the first.
QUIET = 0.02
COALESCE = 0.15
# A run's end is one event (its exit.json appears whole, by a rename): a pass for run exits alone
# waits only this long for others (runs ending together still make one pass).
QUIET_EXITS = 0.005
REQUEUE_FLOOR = 0.05  # seconds: the least wait for a due pass, so a plan due "now" never spins
IDLE_TRIM = 1.0  # seconds of wait ahead from which the heap's free pages go back to the system


@functools.cache
def _trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None (another C library)."""
    name = ctypes.util.find_library("c")
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    return trim


def give_back_memory() -> None:
    """Hand the free pages of the C heap back to the system. A pass over many tasks leaves its
    high-water mark in the heap (the runs, statuses and actions it dropped); a loop that runs
    for days would otherwise keep the largest pass it ever made, however idle it is."""
    trim = _trim()
    if trim is not None:
        trim(0)


TIMERS = frozenset({"interval", "requeue"})  # wake-ups by the clock: quiet unless they act
CONTROL_PROBLEM = "control_problem"


# ------------------------------------------------------------------------------ wake-ups


class Wakeup:
    """A coalescing wake-up: any number of ``fire`` calls between two passes make one."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._reasons: Counter[str] = Counter()
        self._last = 0.0  # when the newest event came (monotonic)
        self._recheck: dict[str, Recheck] = {}  # forge repository (lower case) → its PRs

    def fire(self, reason: str, recheck: Recheck | None = None) -> None:
        """A pass for ``reason``; the PRs ``recheck`` names have their feedback read anew on
        the next pass (``take_recheck``)."""
        with self._lock:
            self._reasons[reason] += 1
            self._last = time.monotonic()
            if recheck is not None:
                key = recheck.repo.lower()
                known = self._recheck.get(key)
                if known is not None:
                    recheck = recheck.model_copy(
                        update={
                            "numbers": sorted({*known.numbers, *recheck.numbers}),
                            "shas": sorted({*known.shas, *recheck.shas}),
                        }
                    )
                self._recheck[key] = recheck
        self._event.set()

    def take_recheck(self) -> tuple[Recheck, ...]:
        """The PRs named since the last take, for the pass about to start."""
        with self._lock:
            taken, self._recheck = tuple(self._recheck.values()), {}
        return taken

    def wait(self, timeout: float) -> Counter[str]:
        """Block until fired or ``timeout``; then absorb the rest of a burst (until it has been
        quiet for ``QUIET``, or ``QUIET_EXITS`` while only runs ended, at most ``COALESCE``);
        the reasons."""
        if self._event.wait(timeout):
            deadline = time.monotonic() + COALESCE
            while True:
                now = time.monotonic()
                with self._lock:
                    quiet = now - self._last
                    needed = quiet_needed(self._reasons)
                if quiet >= needed or now >= deadline:
                    break
                time.sleep(min(needed - quiet, deadline - now))
        with self._lock:
            reasons, self._reasons = self._reasons, Counter()
            self._event.clear()
        return reasons


def quiet_needed(reasons: Counter[str]) -> float:
    """How long a burst of ``reasons`` must have been quiet before its pass begins."""
    return QUIET_EXITS if reasons.keys() <= {"run-exit"} else QUIET


class SignalRelay:
    """Signals carried out on a thread of their own.

    The kernel hands a signal sent to the process to any of its threads that does not block
    it, and a Python handler runs only in the main thread, when that thread next runs
    bytecode: a signal taken by another thread (the relay's own, a worker's) left the main
    thread asleep in its wait, and the pass a SIGHUP asked for, or the stop a SIGTERM asked
    for, came with the next timer, up to an interval later. And a handler that runs between
    two bytecodes of the main thread, also while it holds a lock (the wake-up's), must not
    take that lock. So the signal's number goes through ``signal.set_wakeup_fd``: the
    interpreter's C handler writes it to a pipe at once, in whichever thread took the signal,
    and the relay thread reads it and does what it asks. The Python handlers do nothing."""

    def __init__(self, actions: Mapping[signal.Signals, Callable[[], None]]) -> None:
        self._actions = {int(sig): act for sig, act in actions.items()}
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)
        self._previous: dict[int, Any] = {}
        self._previous_fd = -1
        self._thread = threading.Thread(target=self._relay, name="signals", daemon=True)

    def install(self) -> None:
        """From the main thread (the only one that may set handlers and the wake-up fd)."""
        self._thread.start()
        self._previous_fd = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        for number in self._actions:
            self._previous[number] = signal.signal(number, _relayed)

    def close(self) -> None:
        """The handlers as they were; the relay ends once it has carried out what came."""
        for number, previous in self._previous.items():
            signal.signal(number, previous)
        signal.set_wakeup_fd(self._previous_fd)
        os.close(self._write)
        self._thread.join(timeout=5)
        os.close(self._read)

    def _relay(self) -> None:
        while data := os.read(self._read, 64):
            for number in data:
                action = self._actions.get(number)
                if action is not None:  # another handler's signal wakes the fd too
                    action()


def _relayed(_number: int, _frame: object) -> None:
    """The Python handler of a relayed signal: the wake-up fd has carried it already."""


class PoolFiller:
    """Tops up the warm worktree pools each pass's plan names, on a thread of its own beside the
    passes: a start that an exit or a push asks for meanwhile never waits for a refill (a fill
    of a large repository takes seconds). One fill at a time; the newest plan's replaces one
    not yet begun. A fill half done when ``run`` stops is cleared by the next."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log = log
        self._ready = threading.Condition()
        self._job: tuple[Plan, Mapping[str, LaneClient]] | None = None
        self._stopping = False
        self._busy = False
        self._thread: threading.Thread | None = None

    def submit(self, plan: Plan, lanes: Mapping[str, LaneClient]) -> None:
        with self._ready:
            self._job = (plan, lanes)
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="pool-fill", daemon=True)
                self._thread.start()
            self._ready.notify()

    def _work(self) -> None:
        while True:
            with self._ready:
                while self._job is None and not self._stopping:
                    self._ready.wait()
                if self._stopping:
                    return
                job, self._job, self._busy = self._job, None, True
            try:
                assert job is not None
                fill_pools(job[0], job[1], self.log)
            except Exception as exc:  # a bug must not end the fills; the pass reports the rest
                self.log(f"pool fill failed: {type(exc).__name__}: {exc}")
            finally:
                with self._ready:
                    self._busy = False
                    self._ready.notify_all()

    def idle(self, timeout: float) -> bool:
        """Wait until no fill is under way or waiting; whether it is so (for tests)."""
        deadline = time.monotonic() + timeout
        with self._ready:
            while self._busy or self._job is not None:
                left = deadline - time.monotonic()
                if left <= 0 or self._thread is None:
                    return not (self._busy or self._job is not None)
                self._ready.wait(left)
        return True

    def stop(self, timeout: float = 10.0) -> None:
        """No fill begins any more; the one under way may finish within ``timeout``."""
        with self._ready:
            self._stopping = True
            self._job = None
            self._ready.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)


class _Handler(FileSystemEventHandler):
    def __init__(self, classify: Callable[[str], str | None], wake: Wakeup) -> None:
        self.classify = classify
        self.wake = wake

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        for raw in (event.src_path, getattr(event, "dest_path", "")):
            path = os.fsdecode(raw) if raw else ""
            reason = self.classify(path) if path else None
            if reason is not None:
                self.wake.fire(reason)
                return


Classifier = Callable[[str], str | None]
Wanted = dict[str, tuple[Classifier, bool]]  # directory → (classifier, recursive)


@dataclass
class Watches:
    """File watches (inotify through watchdog), re-pointed after each pass."""

    wake: Wakeup
    observer: Any = field(default_factory=Observer)
    watched: dict[str, Any] = field(default_factory=dict)

    def start(self) -> None:
        self.observer.daemon = True
        self.observer.start()

    def stop(self) -> None:
        self.observer.stop()
        self.observer.join(timeout=5)

    def point(self, wanted: Wanted) -> list[str]:
        """Watch exactly the directories in ``wanted``, each with its classifier; the paths
        newly watched (an event before the watch existed is for the caller to look for)."""
        for path in list(self.watched):
            if path not in wanted:
                with contextlib.suppress(KeyError):  # its directory is gone already
                    self.observer.unschedule(self.watched.pop(path))
        added = []
        for path, (classify, recursive) in wanted.items():
            if path in self.watched or not os.path.isdir(path):
                continue
            try:
                handler = _Handler(classify, self.wake)
                self.watched[path] = self.observer.schedule(handler, path, recursive=recursive)
            except OSError:
                continue  # e.g. out of inotify watches: the interval still covers it
            added.append(path)
        return added


def _control_classifier(root: Path, state_dir: Path, bare: bool) -> Callable[[str], str | None]:
    state = str(state_dir) + os.sep
    git_dir = str(root) if bare else str(root / ".git")

    def classify(path: str) -> str | None:
        if path.startswith(state) or path.endswith(".lock"):
            return None
        if path == git_dir or path.startswith(git_dir + os.sep):
            rel = os.path.relpath(path, git_dir)
            if rel in {"HEAD", "packed-refs"} or rel.startswith("refs" + os.sep):
                return "control"
            return None
        if not bare and os.path.relpath(path, root).startswith("manifests"):
            return "manifest"
        return None

    return classify


EXIT_JSON = "exit.json"


def _runs_classifier(path: str) -> str | None:
    return "run-exit" if os.path.basename(path) == EXIT_JSON else None


# ------------------------------------------------------------------------------- poking


def pidfile(state_dir: Path) -> Path:
    return state_dir / PIDFILE


def running_pid(state_dir: Path) -> int | None:
    """The pid of the `reconciler run` holding this state directory, if it is alive."""
    try:
        pid = int(pidfile(state_dir).read_text().strip())
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            cmdline = handle.read().split(b"\0")
    except (OSError, ValueError):
        return None
    if not any(b"reconciler" in part for part in cmdline) or b"run" not in cmdline:
        return None  # a stale file whose pid now belongs to another process
    return pid


def poke(state_dir: Path) -> int | None:
    """Ask the running loop for a pass now (SIGHUP); its pid, or None when none runs."""
    pid = running_pid(state_dir)
    if pid is None:
        return None
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        return None
    return pid


# -------------------------------------------------------------------------------- logging


class Log:
    """Lines for a terminal, JSON lines for everything else (``--log-format``); ``debug`` lines
    (when the next pass is due, and why) only as JSON."""

    def __init__(self, fmt: str, out: TextIO | None = None) -> None:
        # sys.stdout as it is now, not as it was at import: the CLI wraps it (redaction, the
        # terminal's safety) before it builds the log
        self.out = out = sys.stdout if out is None else out
        self.json = fmt == "json" or (fmt == "auto" and not out.isatty())

    def __call__(self, event: str, message: str, level: str = "info", **fields: Any) -> None:
        if self.json:
            record = {"ts": round(time.time(), 3), "level": level, "event": event, "msg": message}
            record.update(fields)
            self.out.write(json.dumps(record, default=str) + "\n")
        elif level == "debug":
            return  # for machines (JSON lines carry it); a person reads what happened
        else:
            stamp = time.strftime("%H:%M:%S", time.gmtime())
            prefix = "" if level == "info" else f"{level}: "
            self.out.write(f"{stamp} {prefix}{message}\n")
        self.out.flush()


# --------------------------------------------------------------------------------- the loop


class Listener(Protocol):
    """An HTTP listener served beside the loop (``run --listen``; ``reconciler.web``)."""

    url: str

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def passed(self, seconds: float, result: PassResult | None, ok: bool) -> None:
        """A pass ended after ``seconds``; must return at once (the loop goes on)."""


class Daemon:
    def __init__(
        self,
        engine: Engine,
        interval: float,
        log: Log,
        *,
        once: bool = False,
        summary: Callable[[PassResult], str] = lambda r: "",
    ) -> None:
        self.engine = engine
        self.interval = interval
        self.log = log
        self.once = once
        self.summary = summary
        self.wake = Wakeup()
        self.stopping = threading.Event()
        self.passes = 0
        self.desired: Desired | None = None  # what the last pass reconciled
        self.manifest_errors: tuple[str, ...] = ()  # logged once, until they change
        self.listener: Listener | None = None  # served while the loop runs
        self.problem: str | None = None  # the control repo's, as the state says it
        self.filler = PoolFiller(lambda m: self.log("action", m))

    def _on_term(self) -> None:
        self.stopping.set()
        self.wake.fire("stop")

    def run(self, lock_timeout: float) -> int:
        signals = SignalRelay(
            {
                signal.SIGTERM: self._on_term,
                signal.SIGINT: self._on_term,
                signal.SIGHUP: lambda: self.wake.fire("poke"),
            }
        )
        signals.install()
        try:
            return self._run(lock_timeout)
        finally:
            signals.close()

    def _run(self, lock_timeout: float) -> int:
        healthy = True
        watches = Watches(self.wake)
        with self.engine.locked(lock_timeout) as store:
            notifier = Notifier(store, policy=self.engine.policy, log=self.log)
            pid_path = pidfile(self.engine.ctx.state_dir)
            safefile.write_atomic(pid_path, f"{os.getpid()}\n".encode(), 0o644)
            if not self.once:
                watches.start()
            self.log("start", f"reconciling {self.engine.ctx.control}", pid=os.getpid())
            if self.listener is not None:
                self.listener.start()
                self.log("listen", f"serving {self.listener.url}", url=self.listener.url)
            reasons: Counter[str] = Counter({"start": 1})
            notifier.start()
            try:
                while not self.stopping.is_set():
                    began = time.monotonic()
                    try:
                        healthy, result = self.one_pass(store, reasons)
                        notifier.observe(
                            self.desired,
                            result.plan if result is not None else None,
                            problem=self.problem,
                            skip=_failed_tasks(result),
                        )
                    except StateError as exc:
                        # A full disk or a lock held by another program passes: say so and go
                        # on. Damage or a permission problem needs a person: stop, saying why.
                        if not exc.temporary or self.once:
                            raise
                        self.log("pass", f"pass failed: {exc}", level="error")
                        healthy, result = False, None
                    if self.listener is not None:  # a pass went through even if an action failed
                        self.listener.passed(time.monotonic() - began, result, result is not None)
                    if self.once:
                        break
                    for path in watches.point(self._watch_list(result)):
                        if os.path.lexists(os.path.join(path, EXIT_JSON)):
                            self.wake.fire("run-exit")  # it ended before the watch existed
                    wait, timer = self._next_wait(result)
                    if wait >= IDLE_TRIM:
                        give_back_memory()
                    reasons = self.wake.wait(wait)
                    if not reasons:
                        reasons = Counter({timer: 1})
            finally:
                self.filler.stop()
                notifier.stop()  # before the store closes: deliveries under way record there
                if self.listener is not None:
                    self.listener.stop()
                if not self.once:
                    watches.stop()
                if running_pid(self.engine.ctx.state_dir) in (os.getpid(), None):
                    pid_path.unlink(missing_ok=True)
                count = f"{self.passes} pass" + ("" if self.passes == 1 else "es")
                self.log("stop", f"stopped after {count}; agents keep running")
        return 0 if healthy or not self.once else 1

    def one_pass(self, store: Store, reasons: Counter[str]) -> tuple[bool, PassResult | None]:
        self.passes += 1
        why = ", ".join(f"{r} x{n}" if n > 1 else r for r, n in sorted(reasons.items()))
        problems: list[str] = []
        control = self.engine.control
        control.refresh()
        if control.fetch_error:
            problems.append(f"the control remote could not be fetched ({control.fetch_error})")
        try:
            try:
                desired = self.engine.load()
                if self.manifest_errors:
                    self.log("manifest-error", "the manifest errors are fixed")
                self.manifest_errors = ()
            except ManifestErrors as exc:
                errors = tuple(exc.shown())
                if errors != self.manifest_errors:  # the same errors are not news every pass
                    for error in errors:
                        self.log("manifest-error", error, level="error")
                self.manifest_errors = errors
                good = store.get_meta(LAST_REVISION)
                head = control.revision()
                if good is None or good == head:
                    self._problem(
                        store, [f"manifest errors at {head[:12]}; nothing to fall back on"]
                    )
                    self.log("pass", "manifest errors and no good revision: waiting", "error")
                    return False, None
                problems.append(
                    f"manifest errors at {head[:12]}; reconciling the last good revision "
                    f"{good[:12]} until they are fixed"
                )
                desired = self.engine.load(rev=good)
            self.desired = desired
            result = self.engine.apply(
                desired,
                store,
                log=lambda m: self.log("action", m),
                recheck=self.wake.take_recheck(),
                fill_pools=self.once,
            )
            if not self.once and result.plan.pools:
                self.filler.submit(result.plan, self.engine.lanes(desired))
        except (ControlError, LaneUnavailable, RequestFailed, PolicyError) as exc:
            self.log("pass", f"pass failed: {exc}", level="error", reasons=why)
            return False, None
        self._problem(store, problems)
        for problem in problems:
            self.log("control", problem, level="warning")
        ok = result.report is None or result.report.ok
        if not result.plan.empty or reasons.keys() - TIMERS:
            self._log_pass(result, desired, reasons, why)
        return ok, result

    def _log_pass(
        self, result: PassResult, desired: Desired, reasons: Counter[str], why: str
    ) -> None:
        """One line per pass that did something, with the slots in use after it; a pass that
        an event woke but that found nothing to do is a debug line (JSON only)."""
        text = self.summary(result) or f"{len(result.plan.actions)} actions"
        live = _live_runs(result) if result.observed is not None else set()
        running = Counter(lane for lane, _task, _attempt, _iteration in live)
        slots = {
            name: f"{running[name]}/{spec.max_concurrency}"
            for name, spec in sorted(desired.lanes.items())
        }
        shown = " · ".join(f"{n} {v}" for n, v in slots.items())
        failed = len(result.report.failed) if result.report else 0
        self.log(
            "pass",
            f"pass {self.passes} ({why}): {text}" + (f"  [slots {shown}]" if shown else ""),
            "info" if result.plan.actions or failed else "debug",
            number=self.passes,
            reasons=dict(reasons),
            actions=len(result.plan.actions),
            failed=failed,
            slots=slots,
        )

    def _next_wait(self, result: PassResult | None) -> tuple[float, str]:
        """How long to wait for a trigger, and what ends the wait when none comes: the time the
        plan said the next pass is due, if sooner than the interval (which stays the longest
        wait, the safety net for what no trigger reports)."""
        requeue = result.plan.requeue if result is not None else None
        if requeue is None:
            return self.interval, "interval"
        # On the plan's clock, from now: the pass's apply took some of the time already.
        after = requeue.at - self.engine.clock()
        if after >= self.interval:
            return self.interval, "interval"
        wait = max(REQUEUE_FLOOR, after)
        self.log(
            "requeue",
            f"next pass in {wait:.2f}s: {requeue.message}",
            level="debug",
            after=round(wait, 3),
            due=requeue.due.value,
            subject=requeue.subject,
        )
        return wait, "requeue"

    def _problem(self, store: Store, problems: list[str]) -> None:
        text = redact("; ".join(problems)) or None  # as the store keeps it: compared below
        self.problem = text
        if store.get_meta(CONTROL_PROBLEM) != text:
            with store.transaction() as tx:
                tx.set_meta(CONTROL_PROBLEM, text)

    def _watch_list(self, result: PassResult | None) -> Wanted:
        control = self.engine.control
        wanted: Wanted = {}
        state = self.engine.ctx.state_dir
        if control.kind == "worktree":
            wanted[str(control.root)] = (_control_classifier(control.root, state, False), True)
        elif control.kind == "mirror" and os.path.isdir(control.source):
            source = Path(control.source)
            wanted[str(source)] = (_control_classifier(source, state, bare=True), True)
        if result is not None and result.observed is not None and self.desired is not None:
            for lane, task, attempt, iteration in _live_runs(result):
                spec = self.desired.lanes.get(lane)
                found = paths.run_dir(spec, task, attempt, iteration) if spec else None
                if found is not None:
                    wanted[found] = (_runs_classifier, False)
        return wanted


def _failed_tasks(result: PassResult | None) -> frozenset[str]:
    """Tasks an action of which failed in the pass: their status may not hold (notify waits)."""
    if result is None or result.report is None:
        return frozenset()
    return frozenset(action.task for action, _why in result.report.failed)


def _live_runs(result: PassResult) -> set[tuple[str, str, int, int]]:
    """(lane, task, attempt, iteration) of every run alive after the pass: observed alive (also
    one whose supervisor is exiting: it holds its slot until it is gone) and not stopped by it,
    or started (or taken over by a finisher) by it."""
    assert result.observed is not None
    stopped = {
        (a.task, a.attempt, a.iteration)
        for a in result.plan.actions
        if a.kind in (ActionKind.STOP, ActionKind.MARK_STALLED, ActionKind.MARK_CRASHED)
    }
    live = {
        (run.lane, run.task, run.attempt, run.iteration)
        for runs in result.observed.runs.values()
        for run in runs
        if run.alive and (run.task, run.attempt, run.iteration) not in stopped
    }
    if result.report is not None:
        live |= {
            (a.lane, a.task, a.attempt, a.iteration)
            for a in result.report.applied
            if a.kind
            in (ActionKind.START, ActionKind.RETRY, ActionKind.ITERATE, ActionKind.FINISH_RUN)
        }
    return live
