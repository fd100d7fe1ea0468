"""The planner's state and the steps every part of it shares: what it has seen, the actions,
statuses and deadlines it gathers, and how a run to create waits for its slot."""

from __future__ import annotations

from dataclasses import dataclass, field

from reconciler.manifests.models import (
    ConfigSpec,
    Desired,
    Task,
    TaskSpec,
)
from reconciler.plan.budget import Spend, task_spent
from reconciler.plan.model import (
    NO_PAYLOAD,
    Action,
    ActionKind,
    Blocked,
    Due,
    FailedAction,
    History,
    LaneView,
    Observed,
    Outcome,
    Payload,
    Phase,
    RepoView,
    Requeue,
    RunKey,
    RunView,
    TaskRecord,
    TaskStatus,
    task_status,
)
from reconciler.plan.reasons import Why
from reconciler.plan.slots import Candidate
from reconciler.plan.timing import backoff_delay, next_midnight
from reconciler.protocol import PreflightCheck, PullRequest


def branch_of(config: ConfigSpec, task: str) -> str:
    return f"{config.branch_prefix}{task}"


_NO_REPO = RepoView()


@dataclass(slots=True)
class _TaskPass:
    """What one pass knows of one task while the planner walks its state machine (built once
    per task and never changed; not frozen only because a frozen dataclass costs its fields'
    ``object.__setattr__`` on every one of 100,000 tasks). What the steps read most (its name,
    spec, lane, latest run) are fields rather than properties: each property is a call."""

    task: Task
    lane: LaneView
    runs: tuple[RunView, ...]  # all its runs, every generation
    current: list[RunView]  # the runs of its current generation
    repo: RepoView
    pr: PullRequest | None
    record: TaskRecord | None
    name: str  # the task's
    spec: TaskSpec  # the task's
    lane_name: str  # its spec's
    latest: RunView | None  # the newest run of its current generation
    history: History | None  # its settled runs (of earlier generations), summed

    @property
    def open_pr(self) -> PullRequest | None:
        return self.pr if self.pr is not None and self.pr.state == "open" else None

    @property
    def next_attempt(self) -> int:
        settled = self.history.attempt if self.history is not None else 0
        runs = self.runs
        return max([settled, *(r.attempt for r in runs)]) + 1


@dataclass
class PlannerCore:
    """What one planning pass knows and has decided so far."""

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
    _failing: dict[str, tuple[PreflightCheck, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.spend = Spend(self.desired, self.observed, self.now)

    def failing_checks(self, lane: LaneView) -> tuple[PreflightCheck, ...]:
        """The lane's failed pre-flight checks that keep a task from starting (an advisory one
        is doctor's to report, not a reason to wait), found once per lane and pass."""
        found = self._failing.get(lane.name)
        if found is None:
            found = tuple(c for c in lane.preflight if not (c.ok or c.advisory))
            self._failing[lane.name] = found
        return found

    def lane(self, name: str) -> LaneView | None:
        view = self.observed.lanes.get(name)
        return view if view is not None and view.reachable else None

    def repo_view(self, lane: str, repo: str) -> RepoView:
        view = self.observed.lanes.get(lane)
        if view is None:
            return _NO_REPO
        return view.repos.get(repo, _NO_REPO)

    def pr_for(self, lane: str, repo: str, task: str) -> PullRequest | None:
        """The PR of the task's branch in that repository, unless it is another task's."""
        return self.pr_in(self.repo_view(lane, repo), task)

    def pr_in(self, view: RepoView, task: str) -> PullRequest | None:
        prs = view.prs
        if not prs:  # no forge, or no PR at all: the branch's name is not needed
            return None
        pr = prs.get(branch_of(self.desired.config, task))
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

    def status(
        self,
        task: str,
        phase: Phase,
        lane: str,
        repo: str,
        why: Why,
        *,
        reason: str = "",
        pr: PullRequest | None = None,
        next_attempt_at: float | None = None,
    ) -> None:
        runs = self.observed.runs.get(task)
        history = self.observed.history.get(task)
        if runs:
            latest = runs[-1]
            attempt, iteration = latest.attempt, latest.iteration
            spent, tokens = task_spent(self.observed, task)
            cost: float = round(spent, 6)
        elif history is not None:
            attempt, iteration = history.attempt, history.iteration
            cost, tokens = round(history.cost_usd, 6), history.tokens
        else:  # the sums of no runs, as they always were: the integer 0
            attempt = iteration = tokens = 0
            cost = 0
        self.statuses[task] = task_status(
            task,
            phase,
            lane,
            repo,
            f"{self.desired.config.branch_prefix}{task}",
            attempt=attempt,
            iteration=iteration,
            reason=reason,
            pr=pr,
            next_attempt_at=next_attempt_at,
            cost_usd=cost,
            tokens=tokens,
            why=why,
        )

    def first_seen(self, task: str) -> float:
        record = self.observed.records.get(task)
        return record.first_seen if record is not None else self.now

    def is_done(self, task: Task) -> bool:
        spec = task.spec
        pr = self.pr_in(self.repo_view(spec.lane, spec.repo), task.name)
        if pr is not None and pr.state == "merged":
            return True
        record = self.observed.records.get(task.name)
        return record is not None and record.done and record.done_generation == task.generation

    def done_tasks(self) -> set[str]:
        """The tasks that are done (``is_done``). Only a repository with a merged PR can make
        a task done by its PR: elsewhere its record alone is read, sparing 100,000 tasks the
        look for a PR."""
        merged = {
            (lane, name)
            for lane, view in self.observed.lanes.items()
            for name, repo in view.repos.items()
            if repo.prs and any(pr.state == "merged" for pr in repo.prs.values())
        }
        records = self.observed.records
        done: set[str] = set()
        for name, task in self.desired.tasks.items():
            spec = task.spec
            if merged and (spec.lane, spec.repo) in merged:
                if self.is_done(task):
                    done.add(name)
                continue
            record = records.get(name)
            if record is not None and record.done and record.done_generation == task.generation:
                done.add(name)
        return done

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
            t.next_attempt,
            1,
            reason,
            phase=Phase.PENDING,
            why=why,
            feedback=feedback,
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
            run.attempt,
            run.iteration + 1,
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
        attempt: int,
        iteration: int,
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
        self.candidates.append(
            Candidate(
                task,
                kind,
                attempt,
                iteration,
                reason,
                task.spec.priority,
                self.first_seen(task.name),
                phase,
                why,
                resume_session,
                feedback,
                fetch_base,
            )
        )

    def held_until(self, task: str, kind: ActionKind) -> tuple[float, FailedAction] | None:
        """When an action of ``kind`` may be tried again for ``task``, if it is held back:
        its last try failed for a lasting reason, and the backoff since has not passed."""
        record = self.observed.records.get(task)
        failed = record.failed if record is not None else None
        if failed is None or failed.kind != kind.value:
            return None
        until = failed.at + backoff_delay(self.desired.config, f"{task}/{kind.value}", failed.count)
        return (until, failed) if until > self.now else None
