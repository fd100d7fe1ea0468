"""The planner: ``plan(desired, observed, now) -> Plan``.

Pure: no I/O, no clock reads, no randomness (jitter is a hash of the task and attempt), so the
same inputs always give the same plan. Reasons are written for humans; apply never reads them.

The plan also says when the next pass is due (``Plan.requeue``): the earliest moment at which it
would differ with nothing else changing: a backoff ending, a live run reaching its stall or
timeout deadline, a lane's daily budget starting afresh at 00:00 UTC. Events (a push, a run's
exit, a poke) are not times: ``run`` watches for those. A hosted forge's PR state is learned by
the pass itself, so it is polled at ``run``'s interval; the planner knows no poll period.

The planner is one class built in layers: ``core.PlannerCore`` (what a pass has seen and
decided, and the steps all share), ``pr_steps.PrSteps`` (a success on its way to a mergeable
PR), ``run_steps.RunSteps`` (a task's latest run: alive, ended or gone), and ``_Planner`` here
(each task's state machine, removed tasks, slots, held actions, the plan).
"""

from __future__ import annotations

from dataclasses import replace
from functools import cache

from reconciler.durations import format_duration
from reconciler.manifests.models import (
    Desired,
    Task,
)
from reconciler.plan.core import _TaskPass
from reconciler.plan.model import (
    Action,
    ActionKind,
    Blocked,
    Completion,
    Due,
    NewRun,
    Observed,
    Phase,
    Plan,
    PrRef,
    RunKey,
    RunView,
)
from reconciler.plan.reasons import Why
from reconciler.plan.run_steps import RunSteps
from reconciler.plan.slots import Candidate, allot, pool_fills, standby_order

# Order in which actions appear (and are applied): free slots first, then records and the forge,
# then the slot-filling actions in slot order.
_KIND_ORDER = {
    ActionKind.STOP: 0,
    ActionKind.WITHDRAW: 0,
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


@cache
def _standby_reason(in_use: str, lane: str) -> str:
    """A standby run's status: what happens next, and the slots in use its wait names."""
    return f"on standby in lane {lane}: starts as a run there ends ({in_use})"


@cache
def _start_reason(respec: bool, attempt: int) -> str:
    """A first start's reason: one string shared by the many tasks starting alike."""
    first = "spec changed; starting again" if respec else "new task"
    return f"{first} (attempt {attempt})"


class _Planner(RunSteps):
    """One pass: each task's state machine, the removed tasks, slots and held actions."""

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
        spec = task.spec
        runs = self.observed.runs.get(task.name, ())
        if runs:
            self.stop_old_generation(task, runs)
        repo = self.repo_view(spec.lane, spec.repo)
        current = [r for r in runs if r.generation == task.generation] if runs else []
        t = _TaskPass(
            task,
            lane,
            runs,
            current,
            repo,
            self.pr_in(repo, task.name) if repo.prs else None,
            self.observed.records.get(task.name),
            task.name,
            spec,
            spec.lane,
            current[-1] if current else None,
            self.observed.history.get(task.name),
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
        spent = self.spend.task_over(t.task)
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
        blocker = self.start_blocker(t, done)
        if blocker is not None:
            code, reason = blocker
            self.blocked.append(Blocked(t.name, reason, code))
            self.status(
                t.name, Phase.BLOCKED, t.lane_name, t.spec.repo, code, reason=reason, pr=t.open_pr
            )
            return True
        self.new_attempt(
            t,
            ActionKind.START,
            _start_reason(bool(t.runs) or t.history is not None, t.next_attempt),
            Why.STARTING,
        )
        return True

    def start_blocker(self, t: _TaskPass, done: set[str]) -> tuple[Why, str] | None:
        """Why a task cannot start now (dependencies, pre-flight), or None."""
        task = t.task
        for dep in task.spec.depends_on:
            if dep not in self.desired.tasks:
                why = f"depends on {dep}, which is not a task in the control repo"
                return Why.DEPENDENCY_MISSING, why
            if dep not in done:
                return Why.DEPENDENCY_PENDING, f"waiting for {dep} to be done"
        if t.repo.error:
            return Why.REPO_UNREADABLE, f"repository {task.spec.repo}: {t.repo.error}"
        failing = self.failing_checks(t.lane)
        if not failing:
            return None
        agent = self.desired.agents[task.spec.agent]
        agent_cmd = agent.command[0] if agent.command else agent.kind
        subjects = ("", task.spec.repo, f"{task.spec.repo}:{task.spec.base}", agent_cmd)
        for check in failing:
            if check.subject in subjects:
                fix = f" ({check.fix})" if check.fix else ""
                return Why.PREFLIGHT_FAILED, f"pre-flight {check.name} failed: {check.detail}{fix}"
        return None

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
        pr = self.pr_for(lane_name, repo_name, name)
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
        """Grant the waiting starts and iterations their slots, and the full lanes' next ones
        their standby starts; the rest are queued. Standby runs no longer wanted are
        withdrawn."""
        granted: list[Action] = []
        allotment = allot(self.desired, self.observed, self.freed, self.candidates)
        for verdict in allotment.allotted:
            cand = verdict.cand
            task = cand.task
            spec = task.spec
            view = self.repo_view(spec.lane, spec.repo)
            pr = self.pr_in(view, task.name) if view.prs else None
            open_pr = pr if pr is not None and pr.state == "open" else None
            if verdict.wait is None:
                granted.append(cand.action(self.spend))
                phase, why, reason = cand.phase_with_slot, cand.why, cand.reason
            elif verdict.entry is not None or (verdict.queue and not self.standby_held(task)):
                phase, why = Phase.QUEUED, Why.ON_STANDBY
                reason = _standby_reason(verdict.in_use, spec.lane)
                if verdict.queue:
                    granted.append(self.standby(cand, reason))
            else:
                phase, why, reason = Phase.QUEUED, Why.WAITING_FOR_SLOT, verdict.wait
            self.status(task.name, phase, spec.lane, spec.repo, why, pr=open_pr, reason=reason)
        for lane, entry in allotment.withdraw:
            self.act(
                ActionKind.WITHDRAW,
                entry.task,
                lane,
                f"standby run {entry.attempt}.{entry.iteration} is no longer the next to start "
                "(its task changed, was paused, removed or started otherwise); taking it out of "
                f"lane {lane}'s queue",
                RunKey(entry.attempt, entry.iteration),
            )
        return granted

    def standby_held(self, task: Task) -> bool:
        """Whether queueing the task's run failed for a lasting reason and waits its backoff
        (then it waits for a slot as any task does, and a pass starts it)."""
        held = self.held_until(task.name, ActionKind.STANDBY)
        if held is not None:
            self.wake(held[0], Due.HELD, task.name)
        return held is not None

    def standby(self, cand: Candidate, reason: str) -> Action:
        """A standby start: the run the candidate would start, prepared now and queued in its
        lane, in grant order, for the next run there to end to start."""
        action = cand.action(self.spend)
        payload = replace(action.want(NewRun), order=standby_order(cand))
        return replace(
            action,
            kind=ActionKind.STANDBY,
            reason=f"{cand.reason}; {reason}",
            payload=payload,
        )

    # ------------------------------------------------------------------ the whole plan

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

    def prunes(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """Per reachable lane, the expired runs whose directories it removes after the pass
        (a lane out of reach keeps them until it is back)."""
        per_lane: dict[str, list[str]] = {}
        for run in self.observed.expired:
            if self.lane(run.lane) is not None:
                per_lane.setdefault(run.lane, []).append(run.key)
        return tuple((lane, tuple(keys)) for lane, keys in sorted(per_lane.items()))

    def run(self) -> Plan:
        done = self.done_tasks()
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
            tasks=tuple(map(self.statuses.__getitem__, sorted(self.statuses))),
            outcomes=tuple(self.outcomes),
            requeue=min(self.due, default=None),
            lane_spend=tuple(self.spend.today(name) for name in sorted(self.desired.lanes)),
            pools=tuple(pool_fills(self.desired, self.observed, granted)),
            prunes=self.prunes(),
        )


def plan(desired: Desired, observed: Observed, now: float) -> Plan:
    """Compare what the control repo asks for with what was observed; return the actions.

    Pure and deterministic: every input is an argument, including ``now``.
    """
    return _Planner(desired, observed, now).run()
