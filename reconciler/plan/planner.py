"""The planner: ``plan(desired, observed, now) -> Plan``.

Pure: no I/O, no clock reads, no randomness (jitter is a hash of the task and attempt), so the
same inputs always give the same plan. Reasons are written for humans; apply never reads them.

The plan also says when the next pass is due (``Plan.requeue``): the earliest moment at which it
would differ with nothing else changing: a backoff ending, a live run reaching its stall or
timeout deadline, a lane's daily budget starting afresh at 00:00 UTC. Events (a push, a run's
exit, a poke) are not times: ``run`` watches for those. A hosted forge's PR state is learned by
the pass itself, so it is polled at ``run``'s interval; the planner knows no poll period.
"""

from __future__ import annotations

import signal as _signal
from dataclasses import dataclass, field, replace
from typing import Literal

from reconciler.durations import format_duration
from reconciler.manifests.models import (
    AgentSpec,
    ConfigSpec,
    Desired,
    LaneSpec,
    Task,
    TaskSpec,
)
from reconciler.plan.budget import Spend, over_budget
from reconciler.plan.evaluation import (
    Evaluation,
    base_moved,
    conflict_feedback,
    conflict_summary,
    evaluate,
    pr_feedback,
)
from reconciler.plan.model import (
    NO_PAYLOAD,
    Action,
    ActionKind,
    Blocked,
    Completion,
    Due,
    FailedAction,
    FinishRun,
    LaneView,
    NewRun,
    Observed,
    Outcome,
    Payload,
    Phase,
    Plan,
    PrOfRun,
    PrRef,
    RepoView,
    Requeue,
    RunKey,
    RunView,
    TaskRecord,
    TaskStatus,
)
from reconciler.plan.reasons import Why
from reconciler.plan.slots import Candidate, allot, pool_fills
from reconciler.plan.timing import backoff_delay, last_progress, next_midnight, overdue
from reconciler.protocol import PullRequest

# Order in which actions appear (and are applied): free slots first, then records and the forge,
# then the slot-filling actions in slot order.
_KIND_ORDER = {
    ActionKind.STOP: 0,
    ActionKind.MARK_CRASHED: 1,
    ActionKind.MARK_STALLED: 1,
    ActionKind.COMPLETE: 2,
    ActionKind.CLOSE_PR: 3,
    ActionKind.CLEANUP: 4,
    ActionKind.ADOPT_PR: 5,
    ActionKind.OPEN_PR: 5,
    ActionKind.UPDATE_PR: 5,
    ActionKind.FINISH_RUN: 6,  # a slot-filler, unless held back (then hold_failed drops it)
    ActionKind.REBASE: 5,
}

# Finishes of one run begun without one ending it: past these it is a crash after all.
FINISH_TRIES = 3


def branch_of(config: ConfigSpec, task: str) -> str:
    return f"{config.branch_prefix}{task}"


_NO_REPO = RepoView()


def _attempts(n: int) -> str:
    return "the only attempt" if n == 1 else f"all {n} attempts"


def _signal_name(num: int) -> str:
    try:
        return _signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def _so_far(run: RunView) -> str:
    """What a running agent's events tell, e.g. ", 3 turns, 5 tool calls, 4200 tokens, $0.06
    so far"."""
    words = run.activity() if run.result is None else []
    return ", " + ", ".join(words) + " so far" if words else ""


@dataclass(frozen=True)
class _TaskPass:
    """What one pass knows of one task while the planner walks its state machine."""

    task: Task
    lane: LaneView
    runs: tuple[RunView, ...]  # all its runs, every generation
    current: list[RunView]  # the runs of its current generation
    repo: RepoView
    pr: PullRequest | None
    record: TaskRecord | None

    @property
    def name(self) -> str:
        return self.task.name

    @property
    def spec(self) -> TaskSpec:
        return self.task.spec

    @property
    def lane_name(self) -> str:
        return self.task.spec.lane

    @property
    def open_pr(self) -> PullRequest | None:
        return self.pr if self.pr is not None and self.pr.state == "open" else None

    @property
    def latest(self) -> RunView | None:
        return self.current[-1] if self.current else None

    @property
    def next_attempt(self) -> int:
        return max((r.attempt for r in self.runs), default=0) + 1


@dataclass
class _Planner:
    desired: Desired
    observed: Observed
    now: float
    actions: list[Action] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)
    blocked: list[Blocked] = field(default_factory=list)
    statuses: dict[str, TaskStatus] = field(default_factory=dict)
    outcomes: list[Outcome] = field(default_factory=list)
    freed: set[str] = field(default_factory=set)  # run keys stopped or marked this pass
    due: list[Requeue] = field(default_factory=list)  # moments a later pass would differ
    spend: Spend = field(init=False)

    def __post_init__(self) -> None:
        self.spend = Spend(self.desired, self.observed, self.now)

    # ------------------------------------------------------------------ helpers

    def lane(self, name: str) -> LaneView | None:
        view = self.observed.lanes.get(name)
        return view if view is not None and view.reachable else None

    def repo_view(self, lane: str, repo: str) -> RepoView:
        view = self.observed.lanes.get(lane)
        if view is None:
            return _NO_REPO
        return view.repos.get(repo, _NO_REPO)

    def pr_for(self, lane: str, repo: str, branch: str, task: str) -> PullRequest | None:
        prs = self.repo_view(lane, repo).prs
        if not prs:
            return None
        pr = prs.get(branch)
        if pr is not None and pr.task not in (None, task):
            return None  # a PR from the same branch name but for another task: not ours
        return pr

    def act(
        self, kind: ActionKind, task: str, lane: str, reason: str, payload: Payload = NO_PAYLOAD
    ) -> Action:
        action = Action(kind=kind, task=task, lane=lane, reason=reason, payload=payload)
        self.actions.append(action)
        if kind in (ActionKind.STOP, ActionKind.MARK_STALLED, ActionKind.MARK_CRASHED):
            self.freed.add(f"{task}/{action.attempt}.{action.iteration}")
        return action

    def wake(self, at: float, due: Due, subject: str) -> None:
        """The plan would differ at ``at`` with nothing else changing: a pass is due then."""
        self.due.append(Requeue(at=at, due=due, subject=subject))

    def failed_attempts(self, task: Task) -> int:
        """Attempts of the current spec that failed (crashed, stalled, exhausted), counting a
        live run's attempt; those interrupted by a stop (pause, operator) are not failures."""
        runs = self.observed.runs.get(task.name, ())
        return len(
            {r.attempt for r in runs if r.generation == task.generation and r.mark != "stopped"}
        )

    def status(self, task: str, phase: Phase, lane: str, repo: str, why: Why, **kw: object) -> None:
        runs = self.observed.runs.get(task, ())
        latest = runs[-1] if runs else None
        self.statuses[task] = TaskStatus(
            name=task,
            phase=phase,
            lane=lane,
            repo=repo,
            branch=branch_of(self.desired.config, task),
            attempt=latest.attempt if latest else 0,
            iteration=latest.iteration if latest else 0,
            cost_usd=round(sum(r.cost_usd for r in runs), 6),
            tokens=sum(r.tokens for r in runs),
            why=why,
            **kw,  # type: ignore[arg-type]
        )

    def first_seen(self, task: str) -> float:
        record = self.observed.records.get(task)
        return record.first_seen if record is not None else self.now

    def is_done(self, task: Task) -> bool:
        spec = task.spec
        pr = self.pr_for(spec.lane, spec.repo, branch_of(self.desired.config, task.name), task.name)
        if pr is not None and pr.state == "merged":
            return True
        record = self.observed.records.get(task.name)
        return record is not None and record.done and record.done_generation == task.generation

    # ------------------------------------------------------------------ desired tasks

    def plan_task(self, task: Task, done: set[str]) -> None:
        """One task's state machine: each step settles the task (status, actions) or passes
        it on, from "its lane is unknown" to "its last attempt failed"."""
        lane = self.lane(task.spec.lane)
        if lane is None:
            error = self.observed.lanes.get(task.spec.lane)
            why = error.error if error is not None and error.error else "lane not observed"
            self.status(
                task.name,
                Phase.UNKNOWN,
                task.spec.lane,
                task.spec.repo,
                Why.LANE_UNREACHABLE,
                reason=why,
            )
            return
        runs = self.observed.runs.get(task.name, ())
        self.stop_old_generation(task, runs)
        t = _TaskPass(
            task=task,
            lane=lane,
            runs=runs,
            current=[r for r in runs if r.generation == task.generation],
            repo=self.repo_view(task.spec.lane, task.spec.repo),
            pr=self.pr_for(
                task.spec.lane, task.spec.repo, branch_of(self.desired.config, task.name), task.name
            ),
            record=self.observed.records.get(task.name),
        )
        settled = (
            self.repo_unreadable(t)
            or self.finished(t, done)
            or self.paused(t)
            or self.pr_closed(t)
            or self.budget_spent(t)
            or self.first_start(t, done)
        )
        if settled or t.latest is None:
            return
        if t.latest.alive:
            self.plan_live(task, t.latest, self.desired.agents[task.spec.agent], t.open_pr)
            return
        failure = self.plan_ended(t, t.latest)
        if failure is not None:
            self.plan_failed_attempt(t, t.latest, failure)

    def stop_old_generation(self, task: Task, runs: tuple[RunView, ...]) -> None:
        for run in runs:
            if run.alive and run.generation != task.generation:
                self.act(
                    ActionKind.STOP,
                    task.name,
                    task.spec.lane,
                    f"spec changed; stopping run {run.attempt}.{run.iteration} of the old spec",
                    RunKey(run.attempt, run.iteration),
                )

    def stop_live(self, t: _TaskPass, reason: str) -> None:
        for run in t.current:
            if run.alive:
                self.act(
                    ActionKind.STOP,
                    t.name,
                    t.lane_name,
                    reason,
                    RunKey(run.attempt, run.iteration),
                )

    def repo_unreadable(self, t: _TaskPass) -> bool:
        # Its repository (or forge) could not be read this pass: without its PRs, a success
        # could look like "no forge" and a PR like "none yet". Decide nothing until it can.
        if not (t.repo.error and t.current):
            return False
        self.status(
            t.name,
            Phase.UNKNOWN,
            t.lane_name,
            t.spec.repo,
            Why.REPO_UNREADABLE,
            reason=t.repo.error,
        )
        return True

    def finished(self, t: _TaskPass, done: set[str]) -> bool:
        if t.name not in done:
            return False
        pr = t.pr
        if pr is not None and pr.state == "merged" and not (t.record and t.record.done):
            self.act(
                ActionKind.COMPLETE,
                t.name,
                t.lane_name,
                f"PR #{pr.number} was merged",
                Completion(t.task.generation, pr_number=pr.number),
            )
        if t.name in t.repo.worktrees:
            self.act(ActionKind.CLEANUP, t.name, t.lane_name, "task is done; removing its worktree")
        merged = pr is not None and pr.state == "merged"
        why = Why.MERGED if merged else Why.COMPLETED
        self.status(t.name, Phase.DONE, t.lane_name, t.spec.repo, why, pr=pr)
        return True

    def paused(self, t: _TaskPass) -> bool:
        if not t.spec.paused:
            return False
        self.stop_live(t, "task paused")
        self.status(
            t.name,
            Phase.PAUSED,
            t.lane_name,
            t.spec.repo,
            Why.PAUSED,
            pr=t.pr,
            reason="paused: true",
        )
        return True

    def pr_closed(self, t: _TaskPass) -> bool:
        """The task's PR was closed without merging after its current runs started."""
        pr = t.pr
        if not (
            pr is not None
            and pr.state == "closed"
            and t.current
            and all(r.started_at <= (pr.updated_at or 0.0) for r in t.current)
        ):
            return False
        # its work can no longer land anywhere
        self.stop_live(t, f"PR #{pr.number} was closed without merging")
        self.status(
            t.name,
            Phase.FAILED,
            t.lane_name,
            t.spec.repo,
            Why.PR_CLOSED,
            pr=pr,
            reason=f"PR #{pr.number} was closed without merging; "
            "change the task's manifest to try again",
        )
        return True

    def budget_spent(self, t: _TaskPass) -> bool:
        spent = over_budget(t.spec.budget, t.runs)
        if spent is None or any(r.alive for r in t.current):
            return False
        if t.open_pr is not None:  # its work stands: a human can still review and merge it
            why = f"budget exhausted ({spent}): no further iterations; review the PR"
            phase, pr = Phase.PR_OPEN, t.open_pr
        else:
            why = f"budget exhausted ({spent}); raise spec.budget to go on"
            phase, pr = Phase.FAILED, None
        self.status(
            t.name, phase, t.lane_name, t.spec.repo, Why.BUDGET_EXHAUSTED, pr=pr, reason=why
        )
        return True

    def first_start(self, t: _TaskPass, done: set[str]) -> bool:
        """No run of this generation yet: start one, unless something blocks it."""
        if t.latest is not None:
            return False
        lane_spec = self.desired.lanes[t.lane_name]
        agent = self.desired.agents[t.spec.agent]
        blocker = self.start_blocker(t.task, t.lane, lane_spec, agent, done)
        if blocker is not None:
            code, reason = blocker
            self.blocked.append(Blocked(t.name, reason, code))
            self.status(
                t.name, Phase.BLOCKED, t.lane_name, t.spec.repo, code, reason=reason, pr=t.open_pr
            )
            return True
        first = "spec changed; starting again" if t.runs else "new task"
        self.new_attempt(t, ActionKind.START, f"{first} (attempt {t.next_attempt})", Why.STARTING)
        return True

    def new_attempt(
        self,
        t: _TaskPass,
        kind: ActionKind,
        reason: str,
        why: Why,
        feedback: tuple[str, ...] = (),
    ) -> None:
        """A start of the task's next attempt, first iteration, once a slot is free."""
        self.candidate(
            t.task,
            kind,
            RunKey(t.next_attempt, 1),
            reason,
            phase=Phase.PENDING,
            why=why,
            feedback=feedback,
        )

    def plan_ended(self, t: _TaskPass, latest: RunView) -> str | None:
        """The latest run has ended: crashed, stopped, or exited for evaluation. Returns why the
        attempt failed, or None when the task is settled (a success, an iteration, a retry)."""
        if latest.mark in ("crashed", "stalled"):
            failure = f"run {latest.attempt}.{latest.iteration} {latest.mark}"
            return f"{failure}: {latest.failures[0]}" if latest.failures else failure
        if latest.exit is None or latest.exit.signal is not None:
            return self.plan_vanished(t, latest)
        if latest.outcome is not None:
            ev = Evaluation(ok=latest.outcome == "succeeded", failures=list(latest.failures))
        else:
            ev = evaluate(t.task, latest)
            verdict: Literal["succeeded", "failed"] = "succeeded" if ev.ok else "failed"
            self.outcomes.append(
                Outcome(t.name, latest.attempt, latest.iteration, verdict, tuple(ev.failures))
            )
        if ev.ok:
            self.plan_success(t.task, latest, t.repo, t.open_pr, t.record)
            return None
        summary = "; ".join(ev.failures) or "success criteria not met"
        if latest.iteration < t.spec.max_iterations:
            self.iterate(
                t.task,
                latest,
                f"run {latest.attempt}.{latest.iteration}: {summary}",
                Phase.RUNNING,
                why=Why.ITERATING,
                feedback=tuple(ev.failures + ev.feedback),
            )
            return None
        return f"attempt {latest.attempt} used all {t.spec.max_iterations} iterations: {summary}"

    def plan_vanished(self, t: _TaskPass, latest: RunView) -> str | None:
        """A run that ended with no exit record or by a signal: stopped by us, finished by its
        agent but not by its supervisor, or crashed."""
        if latest.mark == "stopped":
            why = "its last run was stopped; starting a fresh attempt"
            self.new_attempt(t, ActionKind.RETRY, why, Why.STARTING)
            return None
        if latest.exit is None:
            crash = self.plan_unrecorded_end(t, latest)
            if crash is None:
                return None
            why = crash
        else:
            assert latest.exit.signal is not None
            why = f"the agent was killed by {_signal_name(latest.exit.signal)}"
        self.act(
            ActionKind.MARK_CRASHED,
            t.name,
            t.lane_name,
            f"run {latest.attempt}.{latest.iteration}: {why}",
            RunKey(latest.attempt, latest.iteration),
        )
        self.outcomes.append(Outcome(t.name, latest.attempt, latest.iteration, "crashed", (why,)))
        return f"run {latest.attempt}.{latest.iteration} crashed: {why}"

    def plan_unrecorded_end(self, t: _TaskPass, latest: RunView) -> str | None:
        """A run whose processes are gone and that left no exit record. When what it left shows
        that its agent finished (the agent's end recorded, or its final result in the output)
        and its worktree is there, its work is not lost: the run is finished (``finish-run``)
        and None returned. Otherwise why it is a crash."""
        crash = "its process is gone and it left no exit record"
        left = latest.left
        if left is None or (left.agent_end is None and left.final_result is None):
            return crash
        end, final = left.agent_end, left.final_result
        if end is not None and not end.presumed:
            what, code = f"its agent exited with status {end.exit_code}", end.exit_code
        else:
            what = "its output holds the agent's final result"
            code = end.exit_code if end is not None else 0 if final is not None and final.ok else 1
        if left.finishes >= FINISH_TRIES:
            return f"{crash}; {what}, but finishing the run failed {left.finishes} times"
        if t.name not in t.repo.worktrees:
            return f"{crash}; {what}, but its worktree is gone"
        run = f"run {latest.attempt}.{latest.iteration}"
        reason = (
            f"{run}: {what}, but its supervisor died before recording the end; finishing the "
            "run (commit, checks)"
        )
        action = Action(
            kind=ActionKind.FINISH_RUN,
            task=t.name,
            lane=t.lane_name,
            reason=reason,
            payload=FinishRun(latest.attempt, latest.iteration, code),
        )
        if self.held_until(t.name, ActionKind.FINISH_RUN) is not None:
            # Its last finish failed for a lasting reason: as an ordinary action, hold_failed
            # drops it and says why, and it takes no slot.
            self.actions.append(action)
            self.status(
                t.name, Phase.RUNNING, t.lane_name, t.spec.repo, Why.FINISHING_RUN, reason=reason
            )
            return None
        # The finish runs the checks in the run's worktree: it takes the run's slot again.
        self.candidates.append(
            Candidate(
                action,
                t.spec.priority,
                self.first_seen(t.name),
                Phase.RUNNING,
                Why.FINISHING_RUN,
                reason,
            )
        )
        return None

    def plan_failed_attempt(self, t: _TaskPass, latest: RunView, failure: str) -> None:
        """The attempt failed: back off, retry, or give up."""
        spec = t.spec
        failed_attempts = self.failed_attempts(t.task)
        if failed_attempts >= spec.max_attempts:
            self.status(
                t.name,
                Phase.FAILED,
                t.lane_name,
                spec.repo,
                Why.ATTEMPTS_EXHAUSTED,
                pr=t.open_pr,
                reason=f"{_attempts(spec.max_attempts)} failed; last: {failure}",
            )
            return
        ended = self.now if latest.mark is None and latest.exit is None else latest.ended_at
        next_at = ended + backoff_delay(self.desired.config, t.name, failed_attempts)
        if self.now < next_at:
            self.wake(next_at, Due.BACKOFF, t.name)
            self.status(
                t.name,
                Phase.BACKOFF,
                t.lane_name,
                spec.repo,
                Why.BACKING_OFF,
                pr=t.open_pr,
                next_attempt_at=next_at,
                reason=f"{failure}; next attempt in {format_duration(next_at - self.now)}",
            )
            return
        self.new_attempt(
            t,
            ActionKind.RETRY,
            f"backoff elapsed after: {failure}",
            Why.RETRYING,
            feedback=(f"A previous attempt failed: {failure}",),
        )

    def start_blocker(
        self, task: Task, lane: LaneView, lane_spec: LaneSpec, agent: AgentSpec, done: set[str]
    ) -> tuple[Why, str] | None:
        """Why a task cannot start now (dependencies, pre-flight), or None."""
        for dep in task.spec.depends_on:
            if dep not in self.desired.tasks:
                why = f"depends on {dep}, which is not a task in the control repo"
                return Why.DEPENDENCY_MISSING, why
            if dep not in done:
                return Why.DEPENDENCY_PENDING, f"waiting for {dep} to be done"
        repo = self.repo_view(lane.name, task.spec.repo)
        if repo.error:
            return Why.REPO_UNREADABLE, f"repository {task.spec.repo}: {repo.error}"
        agent_cmd = agent.command[0] if agent.command else agent.kind
        for check in lane.preflight:
            if check.ok or check.advisory:  # advisory: doctor's to report, not a reason to wait
                continue
            subjects = ("", task.spec.repo, f"{task.spec.repo}:{task.spec.base}", agent_cmd)
            if check.subject in subjects:
                fix = f" ({check.fix})" if check.fix else ""
                return Why.PREFLIGHT_FAILED, f"pre-flight {check.name} failed: {check.detail}{fix}"
        return None

    def plan_live(
        self, task: Task, run: RunView, agent: AgentSpec, open_pr: PullRequest | None
    ) -> None:
        spec = task.spec
        if run.finishing_since is not None and run.mark is None:
            # The agent's deadlines are over; the finisher's commit, hook and checks each have
            # their own timeout.
            self.status(
                task.name,
                Phase.RUNNING,
                spec.lane,
                spec.repo,
                Why.FINISHING_RUN,
                pr=open_pr,
                reason=f"finishing run {run.attempt}.{run.iteration} after its supervisor died: "
                "committing the agent's changes, running the checks",
            )
            return
        late = overdue(run, agent, self.now)
        if late is None and run.mark != "stopped" and self.stop_over_budget(task, run, open_pr):
            return
        if late is not None:
            self.mark_stalled(task, run, late, open_pr)
            return
        if run.mark == "stopped":
            # A stop that did not take yet: ask again rather than count it as running work.
            why = f"run {run.attempt}.{run.iteration} still alive after a stop"
            self.act(
                ActionKind.STOP,
                task.name,
                spec.lane,
                "run still alive after a stop",
                RunKey(run.attempt, run.iteration),
            )
            self.status(
                task.name, Phase.RUNNING, spec.lane, spec.repo, Why.STOPPING, pr=open_pr, reason=why
            )
            return
        self.wake(last_progress(run) + agent.stall_timeout, Due.STALL, run.key)
        self.wake(run.started_at + agent.timeout, Due.TIMEOUT, run.key)
        self.status(
            task.name,
            Phase.RUNNING,
            spec.lane,
            spec.repo,
            Why.RUNNING,
            pr=open_pr,
            reason=f"run {run.attempt}.{run.iteration} started "
            f"{format_duration(self.now - run.started_at)} ago"
            + _so_far(run)
            + (f"; last: {run.last_event}" if run.last_event else ""),
        )

    def stop_over_budget(self, task: Task, run: RunView, open_pr: PullRequest | None) -> bool:
        """A live run whose task, or whose lane today, has spent its budget is stopped."""
        spec = task.spec
        spent = self.spend.task_over(task)
        if spent is not None:
            phase, why = Phase.FAILED, f"budget exhausted ({spent}) during the run"
            code = Why.BUDGET_EXHAUSTED
        elif (lane_spent := self.spend.lane_over(spec.lane)) is not None:
            phase, code = Phase.BLOCKED, Why.LANE_BUDGET_EXHAUSTED
            why = (
                f"lane {spec.lane} spent its daily budget ({lane_spent}) during the run; "
                "the task starts again after 00:00 UTC, or raise the lane's spec.budget"
            )
            self.wake(next_midnight(self.now), Due.BUDGET_WINDOW, spec.lane)
        else:
            return False
        self.act(ActionKind.STOP, task.name, spec.lane, why, RunKey(run.attempt, run.iteration))
        self.status(task.name, phase, spec.lane, spec.repo, code, pr=open_pr, reason=why)
        return True

    def mark_stalled(
        self, task: Task, run: RunView, overdue: tuple[Why, str], open_pr: PullRequest | None
    ) -> None:
        spec = task.spec
        code, why = overdue
        self.outcomes.append(Outcome(task.name, run.attempt, run.iteration, "stalled", (why,)))
        failed = self.failed_attempts(task)
        if failed < spec.max_attempts:
            # The run ends when apply kills it (about now): its backoff runs from then.
            delay = backoff_delay(self.desired.config, task.name, failed)
            self.wake(self.now + delay, Due.BACKOFF, task.name)
        self.act(
            ActionKind.MARK_STALLED,
            task.name,
            spec.lane,
            f"run {run.attempt}.{run.iteration}: {why}",
            RunKey(run.attempt, run.iteration),
        )
        self.status(task.name, Phase.BACKOFF, spec.lane, spec.repo, code, pr=open_pr, reason=why)

    def plan_success(
        self,
        task: Task,
        run: RunView,
        repo: RepoView,
        open_pr: PullRequest | None,
        record: TaskRecord | None,
    ) -> None:
        spec = task.spec
        name, lane = task.name, spec.lane
        branch = branch_of(self.desired.config, name)
        where = f"run {run.attempt}.{run.iteration} met the success criteria"
        if repo.prs is None:
            self.act(
                ActionKind.COMPLETE,
                name,
                lane,
                f"{where}; pushing {branch} (the repository has no forge)",
                Completion(task.generation, attempt=run.attempt, iteration=run.iteration),
            )
            self.status(name, Phase.DONE, lane, spec.repo, Why.COMPLETED)
            return
        if open_pr is None:
            self.act(
                ActionKind.OPEN_PR,
                name,
                lane,
                f"{where}; pushing {branch} and opening its PR",
                RunKey(run.attempt, run.iteration),
            )
            self.status(name, Phase.RUNNING, lane, spec.repo, Why.OPENING_PR, reason="opening PR")
            return
        local = repo.branches.get(branch)
        pushed = repo.remote_branches.get(branch)
        why = Why.UPDATING_PR
        if record is None or record.pr_number != open_pr.number:
            self.act(
                ActionKind.ADOPT_PR,
                name,
                lane,
                f"{where}; PR #{open_pr.number} already exists for {branch}",
                PrOfRun(open_pr.number, run.attempt, run.iteration),
            )
        elif local is not None and local != pushed:
            self.act(
                ActionKind.UPDATE_PR,
                name,
                lane,
                f"{branch} has new commits; pushing to PR #{open_pr.number}",
                PrOfRun(open_pr.number, run.attempt, run.iteration),
            )
        elif base_moved(open_pr, pushed):
            self.follow_base(task, run, open_pr)
            return
        else:
            feedback = pr_feedback(task, open_pr, pushed)
            if feedback and run.iteration < spec.max_iterations:
                self.iterate(
                    task,
                    run,
                    f"PR #{open_pr.number}: {feedback[0].splitlines()[0]}",
                    Phase.PR_OPEN,
                    why=Why.ADDRESSING_FEEDBACK,
                    feedback=tuple(feedback),
                )
                return
            if feedback:
                fix = "raise maxIterations or take it over"
                self.iterations_used(task, open_pr, f"PR #{open_pr.number} needs work", fix)
                return
            why = Why.AWAITING_REVIEW
        self.status(name, Phase.PR_OPEN, lane, spec.repo, why, pr=open_pr)

    def follow_base(self, task: Task, run: RunView, pr: PullRequest) -> None:
        """The base moved under the task's open PR. A head that still merges cleanly is brought
        up to date by the reconciler (no agent); a conflict is the agent's to resolve, in an
        iteration that fetches the base first, within ``maxIterations`` like other feedback."""
        spec = task.spec
        name, lane = task.name, spec.lane
        branch = branch_of(self.desired.config, name)
        if pr.mergeable:
            self.act(
                ActionKind.REBASE,
                name,
                lane,
                f"{pr.base} moved; rebasing {branch} on it and pushing to PR #{pr.number}",
                PrOfRun(pr.number, run.attempt, run.iteration),
            )
            why = f"{pr.base} moved; the reconciler rebases {branch} on it (no conflict)"
            self.status(name, Phase.PR_OPEN, lane, spec.repo, Why.REBASING, pr=pr, reason=why)
            return
        conflict = f"PR #{pr.number} {conflict_summary(pr)}"
        if run.iteration < spec.max_iterations:
            repo = self.desired.lanes[lane].repo(spec.repo)
            self.iterate(
                task,
                run,
                f"{conflict}; iteration {run.iteration + 1} asks the agent to resolve it",
                Phase.PR_OPEN,
                why=Why.CONFLICT,
                feedback=(conflict_feedback(pr, repo.remote if repo else "origin"),),
                fetch_base=True,
            )
            return
        fix = f"resolve it by hand (rebase {branch} on {pr.base} and push) or raise maxIterations"
        self.iterations_used(task, pr, conflict, fix)

    def iterations_used(self, task: Task, pr: PullRequest, what: str, fix: str) -> None:
        """The PR needs work an iteration would do, but the attempt has used them all."""
        spec = task.spec
        self.status(
            task.name,
            Phase.PR_OPEN,
            spec.lane,
            spec.repo,
            Why.ITERATIONS_EXHAUSTED,
            pr=pr,
            reason=f"{what}, but all {spec.max_iterations} iterations are used; {fix}",
        )

    def iterate(
        self,
        task: Task,
        run: RunView,
        reason: str,
        phase: Phase,
        *,
        why: Why,
        feedback: tuple[str, ...],
        fetch_base: bool = False,
    ) -> None:
        """The next run of the same attempt, resuming the agent's session where it has one.

        A run whose agent never answered (no turn: e.g. ``--resume`` of a session the agent
        does not have, gemini's exit 42) leaves no session worth resuming: the next starts
        afresh rather than failing the same way until the iterations run out.
        """
        # The session the agent reported wins over the one it was started with: an agent may
        # answer a resume under a new id, and the next run must continue that one.
        session = (run.result.session_id if run.result else None) or run.session_id
        self.candidate(
            task,
            ActionKind.ITERATE,
            RunKey(run.attempt, run.iteration + 1),
            reason,
            phase=phase,
            why=why,
            resume_session=session if run.turns != 0 else None,
            feedback=feedback,
            fetch_base=fetch_base,
        )

    def candidate(
        self,
        task: Task,
        kind: ActionKind,
        run: RunKey,
        reason: str,
        *,
        phase: Phase,
        why: Why,
        resume_session: str | None = None,
        feedback: tuple[str, ...] = (),
        fetch_base: bool = False,
    ) -> None:
        """A run to create once a slot is free, unless the lane spent its budget of the day."""
        spent = self.spend.lane_over(task.spec.lane)
        if spent is not None:
            text = (
                f"lane {task.spec.lane} spent its daily budget ({spent}); new runs wait for "
                "00:00 UTC, or raise the lane's spec.budget"
            )
            code = Why.LANE_BUDGET_EXHAUSTED
            self.blocked.append(Blocked(task.name, text, code))
            self.status(task.name, Phase.BLOCKED, task.spec.lane, task.spec.repo, code, reason=text)
            self.wake(next_midnight(self.now), Due.BUDGET_WINDOW, task.spec.lane)
            return
        action = Action(
            kind=kind,
            task=task.name,
            lane=task.spec.lane,
            reason=reason,
            payload=NewRun(
                run.attempt,
                run.iteration,
                task.generation,
                resume_session=resume_session,
                feedback=feedback,
                budget_usd=self.spend.left(task),
                fetch_base=fetch_base,
            ),
        )
        self.candidates.append(
            Candidate(action, task.spec.priority, self.first_seen(task.name), phase, why, reason)
        )

    # ------------------------------------------------------------------ removed tasks

    def plan_removed(self, name: str) -> None:
        record = self.observed.records.get(name)
        runs = self.observed.runs.get(name, ())
        if record is not None:
            lane_name, repo_name = record.lane, record.repo
        elif runs:
            lane_name, repo_name = runs[-1].lane, runs[-1].repo
        else:
            return
        if self.lane(lane_name) is None:
            self.status(
                name,
                Phase.UNKNOWN,
                lane_name,
                repo_name,
                Why.LANE_UNREACHABLE,
                reason="lane not observed",
            )
            return
        why = "manifest removed"
        busy = False
        for run in runs:
            if run.alive:
                busy = True
                self.act(
                    ActionKind.STOP,
                    name,
                    lane_name,
                    why,
                    RunKey(run.attempt, run.iteration),
                )
        branch = branch_of(self.desired.config, name)
        pr = self.pr_for(lane_name, repo_name, branch, name)
        if pr is not None and pr.state == "open":
            busy = True
            self.act(
                ActionKind.CLOSE_PR,
                name,
                lane_name,
                f"{why}; closing PR #{pr.number}",
                PrRef(pr.number),
            )
        if name in self.repo_view(lane_name, repo_name).worktrees:
            busy = True
            self.act(ActionKind.CLEANUP, name, lane_name, f"{why}; removing its worktree")
        if busy:
            self.status(name, Phase.CLOSING, lane_name, repo_name, Why.REMOVING, pr=pr, reason=why)

    # ------------------------------------------------------------------ slots

    def fill_slots(self) -> list[Action]:
        """Grant the waiting starts and iterations their slots; the rest are queued."""
        granted: list[Action] = []
        for cand, wait in allot(self.desired, self.observed, self.freed, self.candidates):
            action = cand.action
            task = self.desired.tasks[action.task]
            pr = self.pr_for(
                action.lane, task.spec.repo, branch_of(self.desired.config, task.name), task.name
            )
            open_pr = pr if pr is not None and pr.state == "open" else None
            if wait is None:
                granted.append(action)
                phase, why, reason = cand.phase_with_slot, cand.why, cand.reason_without_slot
            else:
                phase, why, reason = Phase.QUEUED, Why.WAITING_FOR_SLOT, wait
            self.status(
                action.task, phase, action.lane, task.spec.repo, why, pr=open_pr, reason=reason
            )
        return granted

    # ------------------------------------------------------------------ the whole plan

    def held_until(self, task: str, kind: ActionKind) -> tuple[float, FailedAction] | None:
        """When an action of ``kind`` may be tried again for ``task``, if it is held back:
        its last try failed for a lasting reason, and the backoff since has not passed."""
        record = self.observed.records.get(task)
        failed = record.failed if record is not None else None
        if failed is None or failed.kind != kind.value:
            return None
        until = failed.at + backoff_delay(self.desired.config, f"{task}/{kind.value}", failed.count)
        return (until, failed) if until > self.now else None

    def hold_failed(self) -> None:
        """Actions whose last try failed for a lasting reason wait out a backoff that grows with
        each failure in a row, instead of failing again every pass; the task says why."""
        kept: list[Action] = []
        for action in self.actions:
            held = self.held_until(action.task, action.kind)
            if held is None:
                kept.append(action)
                continue
            until, failed = held
            self.wake(until, Due.HELD, action.task)
            status = self.statuses.get(action.task)
            times = f"{failed.count} times in a row" if failed.count > 1 else "once"
            why = (
                f"{action.kind.value} failed {times}: {failed.message}; "
                f"tried again in {format_duration(until - self.now)}"
            )
            if status is not None:
                self.statuses[action.task] = replace(status, reason=why, why=Why.ACTION_HELD)
        self.actions = kept

    def run(self) -> Plan:
        done = {name for name, task in self.desired.tasks.items() if self.is_done(task)}
        for name in sorted(self.desired.tasks):
            self.plan_task(self.desired.tasks[name], done)
        known = set(self.observed.records) | set(self.observed.runs)
        for name in sorted(known - set(self.desired.tasks)):
            self.plan_removed(name)
        self.hold_failed()
        granted = self.fill_slots()
        ordered = sorted(self.actions, key=lambda a: (_KIND_ORDER[a.kind], a.task))
        return Plan(
            revision=self.desired.revision,
            serial=self.observed.serial,
            now=self.now,
            actions=tuple(ordered + granted),
            blocked=tuple(sorted(self.blocked, key=lambda b: b.task)),
            tasks=tuple(self.statuses[name] for name in sorted(self.statuses)),
            outcomes=tuple(self.outcomes),
            requeue=min(self.due, default=None),
            lane_spend=tuple(self.spend.today(name) for name in sorted(self.desired.lanes)),
            pools=tuple(pool_fills(self.desired, self.observed, granted)),
        )


def plan(desired: Desired, observed: Observed, now: float) -> Plan:
    """Compare what the control repo asks for with what was observed; return the actions.

    Pure and deterministic: every input is an argument, including ``now``.
    """
    return _Planner(desired, observed, now).run()
