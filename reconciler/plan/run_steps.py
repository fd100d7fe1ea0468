"""The planner's steps for a task's latest run: alive (stalled, timed out, over budget),
ended (evaluated: a success goes on to its PR, a failure iterates or fails the attempt), or gone
without a word (finished by the reconciler when its agent had finished, else a crash)."""

from __future__ import annotations

import signal as _signal
from typing import Literal

from reconciler.durations import format_duration
from reconciler.manifests.models import (
    AgentSpec,
    Task,
)
from reconciler.plan.core import _TaskPass
from reconciler.plan.evaluation import (
    Evaluation,
    evaluate,
)
from reconciler.plan.model import (
    Action,
    ActionKind,
    Due,
    FinishRun,
    Outcome,
    Phase,
    RunKey,
    RunView,
)
from reconciler.plan.pr_steps import PrSteps
from reconciler.plan.reasons import Why
from reconciler.plan.slots import Candidate
from reconciler.plan.timing import backoff_delay, last_progress, next_midnight, overdue
from reconciler.protocol import ExitInfo, PullRequest

# Finishes of one run begun without one ending it: past these it is a crash after all.
FINISH_TRIES = 3
# Seconds until a run whose end is recorded while its supervisor still lives is looked at again
# (at least: half the time it has lingered since, when that is longer).
EXITING_POLL = 0.1


def _attempts(n: int) -> str:
    return "the only attempt" if n == 1 else f"all {n} attempts"


def _recorded_at(end: ExitInfo) -> float:
    """When ``exit.json`` was written: the agent's end, then the commit, the afterRun hook and
    the checks the supervisor ran after it."""
    steps = [*end.checks, *(s for s in (end.commit, end.after_run) if s is not None)]
    return end.ended_at + sum(step.duration for step in steps)


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


class RunSteps(PrSteps):
    """How a task's latest run moves it on."""

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
                t.task,
                ActionKind.FINISH_RUN,
                latest.attempt,
                latest.iteration,
                reason,
                t.spec.priority,
                self.first_seen(t.name),
                Phase.RUNNING,
                Why.FINISHING_RUN,
                ready=action,
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

    def plan_live(
        self, task: Task, run: RunView, agent: AgentSpec, open_pr: PullRequest | None
    ) -> None:
        spec = task.spec

        def running(why: Why, reason: str) -> None:
            self.status(
                task.name, Phase.RUNNING, spec.lane, spec.repo, why, pr=open_pr, reason=reason
            )

        run_name = f"run {run.attempt}.{run.iteration}"
        if run.exit is not None:
            # Its end is recorded (exit.json) and its supervisor is exiting: its slot frees in a
            # moment, with no file event to say so. Look again shortly, not at the interval; one
            # that lingers (stopped, stuck) is looked at less and less often.
            lingered = max(0.0, self.now - _recorded_at(run.exit))
            self.wake(self.now + max(EXITING_POLL, lingered / 2), Due.EXITING, run.key)
            running(Why.RUNNING, f"{run_name} ended; its supervisor is exiting")
            return
        if run.finishing_since is not None and run.mark is None:
            # The agent's deadlines are over; the finisher's commit, hook and checks each have
            # their own timeout.
            running(
                Why.FINISHING_RUN,
                f"finishing {run_name} after its supervisor died: committing the agent's "
                "changes, running the checks",
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
            self.act(
                ActionKind.STOP,
                task.name,
                spec.lane,
                "run still alive after a stop",
                RunKey(run.attempt, run.iteration),
            )
            running(Why.STOPPING, f"{run_name} still alive after a stop")
            return
        self.wake(last_progress(run) + agent.stall_timeout, Due.STALL, run.key)
        self.wake(run.started_at + agent.timeout, Due.TIMEOUT, run.key)
        running(
            Why.RUNNING,
            f"{run_name} started {format_duration(self.now - run.started_at)} ago"
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
