"""Apply: carry out a plan's actions through the lanes and record every outcome in state.

An intent is recorded before each non-idempotent side effect and the result after it, with a
named crash point between each pair, so that a reconciler killed anywhere converges on the next
pass without duplicates. Every action is safe to repeat. Reasons in the plan are never read here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from reconciler import workers
from reconciler.faults import crash_point
from reconciler.lanes import LaneClient, LaneUnavailable, RequestFailed, agent_ref
from reconciler.manifests.models import Desired, Task
from reconciler.plan import (
    Action,
    ActionKind,
    Completion,
    FinishRun,
    NewRun,
    Observed,
    Outcome,
    Plan,
    PrOfRun,
    PrRef,
    RunView,
    branch_of,
    task_spent,
)
from reconciler.protocol import (
    FillPoolRequest,
    FillPoolResult,
    FinishRunRequest,
    ForgeCloseRequest,
    ForgeOpenRequest,
    ForgeOpenResult,
    ForgeUpdateRequest,
    PrepareWorkspaceRequest,
    PRResult,
    PrunedResult,
    PruneRunsRequest,
    PullRequest,
    PushRequest,
    PushResult,
    QueuedResult,
    QueueRunRequest,
    RebaseRequest,
    RebaseResult,
    RemovedResult,
    RemoveWorkspaceRequest,
    RunObs,
    StartRunRequest,
    StopResult,
    StopRunRequest,
    TaskRef,
    WithdrawResult,
    WithdrawRunRequest,
    WorkspaceResult,
)
from reconciler.record import Run, RunId
from reconciler.state import LAST_REVISION, StateError, Store, TaskRow, Transaction

SESSION_NAMESPACE = uuid.UUID("6f1b1d3e-4c55-4d0e-9a57-2b6a4a0c9e01")
STOP_GRACE = 5.0


PARALLEL_TASKS = 8  # tasks applied at once; their lane work is mostly waiting on processes
_FREEING = frozenset({ActionKind.STOP, ActionKind.MARK_CRASHED, ActionKind.MARK_STALLED})
_STARTS = frozenset({ActionKind.START, ActionKind.RETRY})


class Superseded(Exception):
    """The world moved first (a standby run started before it could be withdrawn): not a
    failure, but the task's later actions of this pass no longer hold."""


@dataclass
class ApplyReport:
    applied: list[Action] = field(default_factory=list)
    failed: list[tuple[Action, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return not self.failed


def compose_prompt(task: Task, run: NewRun) -> str:
    """The prompt for a run: the task's prompt, plus concrete feedback on later runs."""
    if not run.feedback:
        return task.prompt
    lines = [task.prompt.rstrip("\n"), "", "---", ""]
    if run.iteration > 1:  # an iteration of the same attempt
        lines.append(
            f"Your previous run (attempt {run.attempt}, iteration {run.iteration - 1}) "
            "did not meet the success criteria. Fix the following and try again:"
        )
    else:
        lines.append("Starting a new attempt. What went wrong before:")
    lines.append("")
    for item in run.feedback:
        lines.append(f"- {item}" if "\n" not in item else item)
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def _activity(runs: tuple[RunView, ...], outcome: Outcome) -> str:
    """ " (7 turns, 12 tool calls, 41200 tokens, $0.31)" for the run an outcome judges."""
    for run in runs:
        if (run.attempt, run.iteration) == (outcome.attempt, outcome.iteration):
            words = run.activity()
            return f" ({', '.join(words)})" if words else ""
    return ""


def fill_pools(
    plan: Plan, lanes: Mapping[str, LaneClient], log: Callable[[str], None] = lambda _m: None
) -> None:
    """Top up the warm worktree pools the plan names, after the pass's starts, so dispatch
    never waits for it (``reconciler run`` does it on a thread of its own, beside the passes).
    Failures are logged only: a start without a pooled worktree makes its own."""
    per_lane: dict[str, dict[str, list[str]]] = {}
    for fill in plan.pools:
        per_lane.setdefault(fill.lane, {}).setdefault(fill.repo, []).append(fill.base)
    for name, bases in per_lane.items():
        lane = lanes.get(name)
        if lane is None:
            continue
        try:
            filled = lane.one(FillPoolRequest(lane=lane.ref, bases=bases), FillPoolResult)
        except (RequestFailed, LaneUnavailable) as exc:
            log(f"pool of lane {name}: {exc}")
            continue
        for error in filled.errors:
            log(f"pool of lane {name}: {error}")


class Applier:
    """Executes one plan. Errors of one action are recorded and do not stop the others."""

    def __init__(
        self,
        desired: Desired,
        observed: Observed,
        store: Store,
        lanes: Mapping[str, LaneClient],
        *,
        log: Callable[[str], None] = lambda _m: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.desired = desired
        self.observed = observed
        self.store = store
        self.lanes = lanes
        self.log = log
        self.clock = clock
        self.revision = desired.revision

    # ------------------------------------------------------------------ entry point

    def apply(self, plan: Plan, *, fill: bool = True) -> ApplyReport:
        """Record what was observed, free slots (stops and marks, in order), then carry out the
        other actions with one worker per task: tasks are independent, a task's own actions keep
        the plan's order, and dispatch costs the slowest start instead of the sum of them."""
        report = ApplyReport()
        self.record_observations(plan)
        freeing = [a for a in plan.actions if a.kind in _FREEING]
        per_task: dict[str, list[Action]] = {}
        for action in plan.actions:
            if action.kind not in _FREEING:
                per_task.setdefault(action.task, []).append(action)
        for action in freeing:
            self.run_action(action, report)
        if per_task:
            with workers.fanout("apply", PARALLEL_TASKS) as pool:
                done = [
                    pool.submit(self.run_actions, actions, report) for actions in per_task.values()
                ]
                for future in done:
                    future.result()
        if fill:
            fill_pools(plan, self.lanes, self.log)
        self.prune(plan)
        with self.store.transaction() as tx:
            tx.set_meta(LAST_REVISION, self.revision)
        return report

    def prune(self, plan: Plan) -> None:
        """Remove the directories of the expired runs the plan names (housekeeping after the
        actions); their rows stay, without a directory. Failures are logged only: the runs are
        named again on a later pass."""
        for name, keys in plan.prunes:
            lane = self.lanes.get(name)
            if lane is None:
                continue
            try:
                result = lane.one(PruneRunsRequest(lane=lane.ref, runs=list(keys)), PrunedResult)
            except (RequestFailed, LaneUnavailable) as exc:
                self.log(f"pruning runs of lane {name}: {exc}")
                continue
            per_task: dict[str, list[str]] = {}
            with self.store.transaction() as tx:
                for key in result.removed:
                    task, _, run = key.partition("/")
                    attempt, _, iteration = run.partition(".")
                    tx.update_run(task, int(attempt), int(iteration), run_dir="")
                    per_task.setdefault(task, []).append(run)
                for task, runs in per_task.items():
                    self.event(
                        task,
                        "pruned",
                        f"removed the directories of runs {', '.join(runs)}, kept past the "
                        "retention period (Config spec.runRetention)",
                        tx,
                    )
            for key, why in result.kept.items():
                self.log(f"pruning run {key} of lane {name}: kept, {why}")

    def run_actions(self, actions: list[Action], report: ApplyReport) -> None:
        for action in actions:
            if not self.run_action(action, report):
                return  # a later action of the same task builds on this one

    def run_action(self, action: Action, report: ApplyReport) -> bool:
        try:
            self.dispatch(action)
        except Superseded as exc:
            self.log(f"{action.kind.value} {action.task}: {exc}; the next pass sees it")
            return False
        except (RequestFailed, LaneUnavailable, StateError, sqlite3.Error) as exc:
            message = str(exc)
            if isinstance(exc, sqlite3.Error):  # not about the file: say where it happened
                message = (
                    f"recording it in the state database {self.store.path} failed ({exc}); "
                    "the next pass tries again"
                )
            with report.lock:
                report.failed.append((action, message))
            # When the state cannot take even that, the report still lists the failure.
            with contextlib.suppress(StateError, sqlite3.Error):
                self.event(action.task, "error", f"{action.kind.value} failed: {message}")
                if isinstance(exc, RequestFailed) and not exc.temporary:
                    self.hold(action, message)
            self.log(f"{action.kind.value} {action.task}: failed: {message}")
            return False
        with report.lock:
            report.applied.append(action)
        with contextlib.suppress(StateError, sqlite3.Error):
            self.release(action)
        return True

    def hold(self, action: Action, message: str) -> None:
        """An action that failed for a lasting reason (a refused PR, a rejected push): recorded
        on its task, so that the planner backs that kind of action off instead of repeating it
        every pass. Starts have their own record (a run that did not start is crashed)."""
        if action.kind in _STARTS:
            return
        row = self.store.task(action.task)
        if row is None:
            return
        count = row.failed_count + 1 if row.failed_action == action.kind.value else 1
        with self.store.transaction() as tx:
            tx.update_task(
                action.task,
                failed_action=action.kind.value,
                failed_message=message,
                failed_at=self.clock(),
                failed_count=count,
            )

    def release(self, action: Action) -> None:
        """A held kind of action that went through: the hold is over."""
        held = self.observed.records.get(action.task)
        if held is None or held.failed is None or held.failed.kind != action.kind.value:
            return
        with self.store.transaction() as tx:
            tx.update_task(
                action.task,
                failed_action=None,
                failed_message=None,
                failed_at=None,
                failed_count=0,
            )

    def dispatch(self, action: Action) -> None:
        handler = {
            ActionKind.START: self.start_run,
            ActionKind.RETRY: self.start_run,
            ActionKind.ITERATE: self.start_run,
            ActionKind.MARK_CRASHED: self.mark_crashed,
            ActionKind.MARK_STALLED: self.mark_stalled,
            ActionKind.STOP: self.stop,
            ActionKind.OPEN_PR: self.open_pr,
            ActionKind.ADOPT_PR: self.adopt_pr,
            ActionKind.UPDATE_PR: self.update_pr,
            ActionKind.REBASE: self.rebase,
            ActionKind.CLOSE_PR: self.close_pr,
            ActionKind.CLEANUP: self.cleanup,
            ActionKind.COMPLETE: self.complete,
            ActionKind.FINISH_RUN: self.finish_run,
            ActionKind.STANDBY: self.queue_run,
            ActionKind.WITHDRAW: self.withdraw,
        }[action.kind]
        handler(action)

    # ------------------------------------------------------------------ helpers

    def event(
        self, task: str | None, kind: str, message: str, tx: Transaction | None = None
    ) -> None:
        if tx is not None:
            tx.add_event(task, kind, message, self.revision, self.clock())
            return
        with self.store.transaction() as own:
            own.add_event(task, kind, message, self.revision, self.clock())

    def lane(self, name: str) -> LaneClient:
        lane = self.lanes.get(name)
        if lane is None:
            raise LaneUnavailable(f"lane {name} is not configured")
        return lane

    def task_ref(self, name: str) -> TaskRef:
        task = self.desired.tasks.get(name)
        if task is not None:
            return TaskRef(
                name=name,
                repo=task.spec.repo,
                base=task.spec.base,
                branch=branch_of(self.desired.config, name),
            )
        row = self.store.task(name)
        if row is not None:
            repo = row.repo
        else:
            runs = self.observed.runs.get(name, ())
            if not runs:
                raise RequestFailed(f"task {name} is unknown to state and to its lane")
            repo = runs[-1].repo
        return TaskRef(name=name, repo=repo, base=None, branch=branch_of(self.desired.config, name))

    def ensure_task_row(self, tx: Transaction, task: Task) -> None:
        if self.store.task(task.name) is None:
            tx.upsert_task(
                TaskRow(
                    name=task.name,
                    lane=task.spec.lane,
                    repo=task.spec.repo,
                    first_seen=self.clock(),
                    generation=task.generation,
                )
            )
        else:
            tx.update_task(
                task.name,
                lane=task.spec.lane,
                repo=task.spec.repo,
                generation=task.generation,
            )

    def ensure_any_task_row(self, tx: Transaction, name: str, lane: str, repo: str) -> None:
        """A row for a task found only in the world (e.g. after the state directory was lost)."""
        task = self.desired.tasks.get(name)
        if task is not None:
            self.ensure_task_row(tx, task)
        elif self.store.task(name) is None:
            tx.upsert_task(TaskRow(name=name, lane=lane, repo=repo, first_seen=self.clock()))

    def record_foreign(self, tx: Transaction) -> None:
        """Once each, on the victim task's log: what a lane reported of a task it does not own
        (observation ignored it; the operator should know someone tried)."""
        for foreign in self.observed.foreign:
            victim = foreign.task if foreign.owner else None
            if not self.store.has_event("foreign-observation", foreign.message, victim):
                tx.add_event(
                    victim, "foreign-observation", foreign.message, self.revision, self.clock()
                )
                self.log(f"warning: {foreign.message}")

    def forget_unstarted(self, tx: Transaction) -> None:
        """Drop the recorded starts that never happened: they cost no attempt."""
        for never in self.observed.unstarted:
            tx.delete_run(never.task, never.attempt, never.iteration)
            tx.add_event(
                never.task,
                "start-lost",
                f"the start of run {never.attempt}.{never.iteration} was recorded but never "
                f"happened (lane {never.lane} has no trace of it: the reconciler stopped "
                "before spawning the agent); it costs no attempt and is started again",
                self.revision,
                self.clock(),
            )

    def record_observations(self, plan: Plan) -> None:
        """Record what observation revealed: runs state did not know, evaluations, spend, and
        (once each) what a lane reported of tasks it does not own."""
        known = {(r.task, r.attempt, r.iteration): r for r in self.store.open_runs()}
        with self.store.transaction() as tx:
            self.record_foreign(tx)
            # One read of all task rows, not one query per task: this runs every pass.
            task_rows = self.store.tasks()
            for task in self.desired.tasks.values():
                if task.name not in task_rows:
                    self.ensure_task_row(tx, task)
            self.forget_unstarted(tx)
            for views in self.observed.runs.values():
                for view in views:
                    self.record_run(tx, view, known)
            self.record_outcomes(tx, plan, known)

    def record_run(self, tx: Transaction, view: RunView, known: Mapping[RunId, Run]) -> None:
        """A run's record as observation brought it up to date: only what changed, and a run
        its lane reports that state never recorded is adopted."""
        run = view.record
        if run is None:
            return
        before = known.get((run.task, run.attempt, run.iteration))
        if before is None:
            if view.seen_by_lane:
                self.adopt(tx, run, alive=view.alive, claimed_from=view.claimed_from)
            return
        changes = run.changes(before)
        settled = changes.pop("settled", False)
        if changes:
            tx.update_run(run.task, run.attempt, run.iteration, **changes)
        if settled:
            tx.settle_run(run.task, run.attempt, run.iteration)

    def adopt(
        self, tx: Transaction, run: Run, *, alive: bool, claimed_from: str | None = None
    ) -> None:
        """A run its lane reports that state never recorded: a standby run a supervisor
        started, or one of a crash between spawn and record or a lost state directory;
        recorded from now on."""
        self.ensure_any_task_row(tx, run.task, run.lane, run.repo)
        tx.upsert_run(dataclasses.replace(run, settled=False))
        if run.settled:  # an earlier generation's run, over: recorded, then settled
            tx.settle_run(run.task, run.attempt, run.iteration)
        key = f"{run.attempt}.{run.iteration}"
        state = "alive" if alive else "ended"
        if claimed_from is not None:
            kind = "spawned"
            message = (
                f"standby run {key} started in lane {run.lane} as run {claimed_from} ended "
                f"({state} now)"
            )
            self.log(f"standby {run.task}: run {key} started as run {claimed_from} ended")
        else:
            kind, message = "adopted", f"found run {key} in the lane ({state}) and adopted it"
        tx.add_event(run.task, kind, message, self.revision, self.clock())

    def record_outcomes(self, tx: Transaction, plan: Plan, known: Mapping[RunId, Run]) -> None:
        """The planner's verdict on each run that ended, with its event."""
        for outcome in plan.outcomes:
            if (outcome.task, outcome.attempt, outcome.iteration) not in known and not any(
                v.attempt == outcome.attempt and v.iteration == outcome.iteration
                for v in self.observed.runs.get(outcome.task, ())
            ):
                continue
            tx.update_run(
                outcome.task,
                outcome.attempt,
                outcome.iteration,
                outcome=outcome.outcome,
                failures="\n".join(outcome.failures) or None,
            )
            detail = "; ".join(outcome.failures) or "all success criteria met"
            detail += _activity(self.observed.runs.get(outcome.task, ()), outcome)
            tx.add_event(
                outcome.task,
                "run-" + outcome.outcome,
                f"run {outcome.attempt}.{outcome.iteration} {outcome.outcome}: {detail}",
                self.revision,
                self.clock(),
            )

    # ------------------------------------------------------------------ runs

    def start_run(self, action: Action) -> None:
        """Intent, spawn, outcome: the run is recorded before the lane is asked to start it,
        so that a crash in between leaves a trace the next pass resolves."""
        task = self.desired.tasks[action.task]
        lane = self.lane(task.spec.lane)
        self._record_intent(action, task, lane.name)
        crash_point("after-run-intent")
        run = self._start_or_account(action, task, lane)
        crash_point("after-spawn")
        self._record_spawned(action, task, run)
        self.log(
            f"{action.kind.value} {task.name}: run {action.attempt}.{action.iteration} started"
        )

    def _record_intent(self, action: Action, task: Task, lane: str) -> None:
        with self.store.transaction() as tx:
            self.ensure_task_row(tx, task)
            tx.upsert_run(
                Run(
                    task=task.name,
                    attempt=action.attempt,
                    iteration=action.iteration,
                    generation=action.generation,
                    lane=lane,
                    repo=task.spec.repo,
                    run_dir="",
                    started_at=self.clock(),
                )
            )
            self.event(
                task.name,
                action.kind.value,
                f"{action.kind.value} run {action.attempt}.{action.iteration}",
                tx,
            )

    def _start_or_account(self, action: Action, task: Task, lane: LaneClient) -> RunObs:
        """The run started by its lane; a start that did not happen is accounted for (forgotten
        when its cause passes, crashed when it lasts) and raised."""
        try:
            return self._spawn(action, task, lane, self.task_ref(task.name))
        except LaneUnavailable:
            # The lane could not be reached: the start was not carried out (or, if the batch got
            # there and only its answer was lost, the next pass finds the run and adopts it).
            # A network blip must not cost an attempt: forget the intent, plan it again.
            self._forget_start(action, "start-undelivered", "the lane was unreachable")
            raise
        except RequestFailed as exc:
            if exc.temporary:
                # A cause that passes (a full disk, a lock held too long, a timeout): the run
                # did not start, so it costs no attempt; the next pass starts it again.
                self._forget_start(
                    action,
                    "start-deferred",
                    f"run {action.attempt}.{action.iteration} did not start, for a reason that "
                    f"passes: {exc}; it costs no attempt and is started again",
                )
                raise
            # The run never started: record it as crashed with the lane's reason, so the task
            # backs off and, if the cause persists, fails with that reason instead of looping.
            with self.store.transaction() as tx:
                tx.update_run(
                    task.name,
                    action.attempt,
                    action.iteration,
                    mark="crashed",
                    marked_at=self.clock(),
                    outcome="crashed",
                    failures=f"could not start: {exc}",
                )
            raise

    def _record_spawned(self, action: Action, task: Task, run: RunObs) -> None:
        agent = self.desired.agents[task.spec.agent]
        fp = run.supervisor
        with self.store.transaction() as tx:
            tx.update_run(
                task.name,
                action.attempt,
                action.iteration,
                run_dir=run.run_dir,  # started_at stays the intent's: the reconciler's clock
                session_id=run.session_id,
                pid=fp.pid if fp else None,
                boot_id=fp.boot_id if fp else None,
                start_time=fp.start_time if fp else None,
            )
            self.event(
                task.name,
                "spawned",
                f"agent {task.spec.agent} ({agent.kind}) started for run "
                f"{action.attempt}.{action.iteration} (pid {fp.pid if fp else '?'}) in "
                f"{run.workspace}",
                tx,
            )

    def _forget_start(self, action: Action, kind: str, why: str) -> None:
        with self.store.transaction() as tx:
            tx.delete_run(action.task, action.attempt, action.iteration)
            self.event(action.task, kind, why, tx)

    def _spawn(self, action: Action, task: Task, lane: LaneClient, ref: TaskRef) -> RunObs:
        return lane.one(self._run_request(action, task, lane, ref), RunObs)

    def _run_request(
        self, action: Action, task: Task, lane: LaneClient, ref: TaskRef
    ) -> StartRunRequest:
        """The task's worktree prepared, and the request that starts (or queues) the run."""
        prepare = PrepareWorkspaceRequest(lane=lane.ref, task=ref, fetch_base=action.fetch_base)
        workspace = lane.one(prepare, WorkspaceResult)
        if workspace.created:
            self.event(task.name, "workspace", f"created worktree {workspace.path} on {ref.branch}")
        crash_point("after-workspace")
        # A fresh session id per run (agents that accept one refuse to reuse an id); start-run
        # is idempotent per run directory, so a repeated start keeps the first run's id.
        run = action.want(NewRun)
        session_id = None if run.resume_session else str(uuid.uuid4())
        return StartRunRequest(
            lane=lane.ref,
            task=ref,
            attempt=run.attempt,
            iteration=run.iteration,
            generation=run.generation,
            prompt=compose_prompt(task, run),
            agent=agent_ref(self.desired, task.spec.agent).model_copy(
                update={"max_budget_usd": run.budget_usd}
            ),
            resume_session=run.resume_session,
            session_id=session_id,
            checks=[list(c) for c in task.spec.success.checks],
            check_timeout=task.spec.success.check_timeout,
            markers=list(task.spec.success.markers),
            env={"RECONCILER_REVISION": self.revision, "RECONCILER_GENERATION": run.generation},
        )

    def queue_run(self, action: Action) -> None:
        """standby: the run prepared as a start would prepare it, in its lane's standby queue.
        Nothing is recorded of it but an event: it is not a run until it starts (by the
        supervisor of the next run of the lane to end, or by a later pass), and the pass after
        that adopts it as the run its lane reports."""
        task = self.desired.tasks[action.task]
        lane = self.lane(task.spec.lane)
        request = self._run_request(action, task, lane, self.task_ref(task.name))
        order = action.want(NewRun).order
        queued = lane.one(QueueRunRequest(run=request, order=order), QueuedResult)
        if queued.queued:
            self.event(
                task.name,
                "standby",
                f"run {action.attempt}.{action.iteration} prepared on standby in lane "
                f"{lane.name}: it starts as a run there ends",
            )
            self.log(f"standby {task.name}: run {action.attempt}.{action.iteration} queued")

    def withdraw(self, action: Action) -> None:
        """withdraw: the standby run taken out of its lane's queue unstarted (it costs no
        attempt). One a supervisor started first is a run: the task's later actions of this
        pass wait for the next pass, which sees it (``Superseded``)."""
        lane = self.lane(action.lane)
        request = WithdrawRunRequest(
            lane=lane.ref, task=action.task, attempt=action.attempt, iteration=action.iteration
        )
        result = lane.one(request, WithdrawResult)
        key = f"{action.attempt}.{action.iteration}"
        if result.started:
            raise Superseded(f"standby run {key} started before it could be withdrawn")
        if result.withdrawn:
            self.event(action.task, "withdrawn", f"standby run {key} withdrawn: {action.reason}")

    def _stop_process(self, action: Action) -> bool:
        lane = self.lane(action.lane)
        result = lane.one(
            StopRunRequest(
                lane=lane.ref,
                task=action.task,
                attempt=action.attempt,
                iteration=action.iteration,
                grace=STOP_GRACE,
            ),
            StopResult,
        )
        return result.was_alive

    def _mark(self, action: Action, mark: str) -> None:
        # The run has a row: record_observations wrote one for every run the plan can name.
        now = self.clock()
        with self.store.transaction() as tx:
            fields: dict[str, object] = {"mark": mark, "marked_at": now}
            if mark != "stopped":
                fields["outcome"] = mark
            tx.update_run(action.task, action.attempt, action.iteration, **fields)
            if mark == "stopped":  # crashes and stalls got their event, with the cause, already
                what = f"run {action.attempt}.{action.iteration} stopped: {action.reason}"
                self.event(action.task, mark, what, tx)

    def mark_crashed(self, action: Action) -> None:
        self._mark(action, "crashed")

    def mark_stalled(self, action: Action) -> None:
        self._mark(action, "stalled")
        crash_point("after-stop-intent")
        self._stop_process(action)

    def stop(self, action: Action) -> None:
        self._mark(action, "stopped")
        crash_point("after-stop-intent")
        self._stop_process(action)

    def finish_run(self, action: Action) -> None:
        """Have the lane finish a run whose supervisor died after its agent ended. Idempotent
        on the lane (a run that ended or is being finished is left as it is, and only changes
        still uncommitted are committed), so no intent is needed: the next pass evaluates the
        run once its exit record is there, or finishes it again."""
        lane = self.lane(action.lane)
        finish = action.want(FinishRun)
        key = f"{finish.attempt}.{finish.iteration}"
        run = lane.one(
            FinishRunRequest(
                lane=lane.ref,
                task=action.task,
                attempt=finish.attempt,
                iteration=finish.iteration,
                exit_code=finish.exit_code,
            ),
            RunObs,
        )
        if run.exit is None and run.finishing_since is not None:
            pid = run.supervisor.pid if run.supervisor is not None else "?"
            self.event(
                action.task,
                "finish-run",
                f"run {key}: its agent ended but its supervisor died before recording the end; "
                f"the reconciler finishes the run (pid {pid}): commits the agent's changes "
                "where its Agent says so, runs the checks",
            )
        self.log(f"finish-run {action.task}: finishing run {key}")

    # ------------------------------------------------------------------ pull requests

    def _push(self, lane: LaneClient, task: TaskRef) -> str:
        pushed = lane.one(
            PushRequest(lane=lane.ref, repo=task.repo, branch=task.branch, force_with_lease=True),
            PushResult,
        )
        crash_point("after-push")
        return pushed.sha

    def _pr_text(self, task: Task) -> tuple[str, str]:
        spec = task.spec.pr
        title = spec.title or task.name
        runs = self.observed.runs.get(task.name, ())
        attempts = len({r.attempt for r in runs if r.generation == task.generation})
        iterations = sum(1 for r in runs if r.generation == task.generation)
        cost, _tokens = task_spent(self.observed, task.name)
        parts = [spec.body.rstrip() + "\n" if spec.body else ""]
        parts.append(
            f"Opened by reconciler for task `{task.name}` at control revision "
            f"`{self.revision[:12]}`.\n\n"
            f"Attempts: {attempts} · iterations: {iterations} · cost: ${cost:.2f}\n"
        )
        return title, "\n".join(p for p in parts if p)

    def _record_pr(self, task: str, pr: PullRequest, created: bool) -> None:
        with self.store.transaction() as tx:
            tx.update_task(task, pr_number=pr.number)
            verb = "opened" if created else "adopted"
            self.event(task, f"pr-{verb}", f"PR #{pr.number} {verb}: {pr.url}", tx)
        self.log(f"PR #{pr.number} {verb} for {task}")

    def open_pr(self, action: Action) -> None:
        task = self.desired.tasks[action.task]
        lane = self.lane(task.spec.lane)
        ref = self.task_ref(task.name)
        with self.store.transaction() as tx:
            self.ensure_task_row(tx, task)
            self.event(task.name, "pr-intent", f"opening a PR for {ref.branch}", tx)
        crash_point("after-pr-intent")
        self._push(lane, ref)
        # forge-open is the search-then-create of design §4: the forge (the authority) returns
        # the open PR of this head when there is one (created=False) instead of a second PR.
        title, body = self._pr_text(task)
        opened = lane.one(
            ForgeOpenRequest(
                lane=lane.ref,
                repo=ref.repo,
                task=task.name,
                head=ref.branch,
                base=ref.base,
                title=title,
                body=body,
                draft=task.spec.pr.draft,
                labels=list(task.spec.pr.labels),
                reviewers=list(task.spec.pr.reviewers),
            ),
            ForgeOpenResult,
        )
        crash_point("after-pr-create")
        self._record_pr(task.name, opened.pr, created=opened.created)

    def adopt_pr(self, action: Action) -> None:
        task = self.desired.tasks[action.task]
        lane = self.lane(task.spec.lane)
        ref = self.task_ref(task.name)
        self._push(lane, ref)
        pr = action.want(PrOfRun)
        title, body = self._pr_text(task)
        updated = lane.one(
            ForgeUpdateRequest(
                lane=lane.ref, repo=ref.repo, number=pr.pr_number, title=title, body=body
            ),
            PRResult,
        )
        self._record_pr(task.name, updated.pr, created=False)

    def update_pr(self, action: Action) -> None:
        task = self.desired.tasks[action.task]
        lane = self.lane(task.spec.lane)
        ref = self.task_ref(task.name)
        sha = self._push(lane, ref)
        pr = action.want(PrOfRun)
        title, body = self._pr_text(task)
        lane.one(
            ForgeUpdateRequest(
                lane=lane.ref,
                repo=ref.repo,
                number=pr.pr_number,
                title=title,
                body=body,
                comment=f"Pushed {sha[:12]} after run {pr.attempt}.{pr.iteration}.",
            ),
            PRResult,
        )
        self.event(task.name, "pr-updated", f"pushed {sha[:12]} to PR #{pr.pr_number}")

    def rebase(self, action: Action) -> None:
        """The base moved and the branch still merges: bring it up to date in the task's
        worktree (where it is checked out), push, and say so on the PR. A crash after the rebase
        leaves a branch that differs from the pushed one: the next pass pushes it (update-pr)."""
        task = self.desired.tasks[action.task]
        lane = self.lane(task.spec.lane)
        ref = self.task_ref(task.name)
        pr = action.want(PrOfRun)
        workspace = lane.one(PrepareWorkspaceRequest(lane=lane.ref, task=ref), WorkspaceResult)
        if workspace.created:
            self.event(task.name, "workspace", f"created worktree {workspace.path} on {ref.branch}")
        done = lane.one(RebaseRequest(lane=lane.ref, task=ref), RebaseResult)
        if done.how == "current":
            return  # it holds the base already (the next pass sees the forge agree)
        sha = self._push(lane, ref)
        how = (
            f"rebased {ref.branch} on {ref.base} {done.onto[:12]}"
            if done.how == "rebased"
            else f"merged {ref.base} {done.onto[:12]} into {ref.branch}"
        )
        lane.one(
            ForgeUpdateRequest(
                lane=lane.ref,
                repo=ref.repo,
                number=pr.pr_number,
                comment=f"{ref.base} moved: {how} and pushed {sha[:12]}. No conflict, so no "
                "agent run was needed.",
            ),
            PRResult,
        )
        self.event(
            task.name,
            "pr-rebased",
            f"{ref.base} moved: {how}, pushed {sha[:12]} to PR #{pr.pr_number}",
        )

    def close_pr(self, action: Action) -> None:
        lane = self.lane(action.lane)
        ref = self.task_ref(action.task)
        number = action.want(PrRef).pr_number
        lane.one(
            ForgeCloseRequest(
                lane=lane.ref,
                repo=ref.repo,
                number=number,
                comment=(
                    f"Closed by reconciler: the manifest of task `{action.task}` was removed at "
                    f"control revision `{self.revision}`. The branch `{ref.branch}` is kept."
                ),
            ),
            PRResult,
        )
        crash_point("after-pr-close")
        self.event(action.task, "pr-closed", f"PR #{number} closed: manifest removed")

    # ------------------------------------------------------------------ endings

    def cleanup(self, action: Action) -> None:
        lane = self.lane(action.lane)
        ref = self.task_ref(action.task)
        removed = lane.one(RemoveWorkspaceRequest(lane=lane.ref, task=ref), RemovedResult)
        crash_point("after-cleanup")
        if removed.removed:
            self.event(action.task, "cleanup", f"removed the worktree; {ref.branch} kept")

    def complete(self, action: Action) -> None:
        task = self.desired.tasks[action.task]
        merged = action.want(Completion).pr_number
        if merged is None:
            # No forge: the work is delivered by pushing the branch.
            self._push(self.lane(task.spec.lane), self.task_ref(task.name))
        with self.store.transaction() as tx:
            self.ensure_task_row(tx, task)
            tx.update_task(task.name, done=True, done_generation=task.generation)
            what = f"PR #{merged} merged" if merged is not None else "success, no forge"
            self.event(task.name, "done", f"task done ({what})", tx)
        crash_point("after-complete")


_STARTS = frozenset({ActionKind.START, ActionKind.RETRY, ActionKind.ITERATE})
