"""The planner's steps for a task's pull request after a success: open it, adopt it, push new
commits to it, follow its moving base (a rebase, or the agent asked to resolve a conflict), and
iterate on what its checks and reviewers say."""

from __future__ import annotations

from reconciler.manifests.models import (
    Task,
)
from reconciler.plan.core import PlannerCore, branch_of
from reconciler.plan.evaluation import (
    base_moved,
    conflict_feedback,
    conflict_summary,
    pr_feedback,
)
from reconciler.plan.model import (
    ActionKind,
    Completion,
    Phase,
    PrOfRun,
    RepoView,
    RunKey,
    RunView,
    TaskRecord,
)
from reconciler.plan.reasons import Why
from reconciler.protocol import PullRequest


class PrSteps(PlannerCore):
    """How a task that met its success criteria reaches a mergeable PR."""

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
