"""Judging an ended run against its task's success criteria, a PR's feedback and its conflicts.

What fails becomes one line each for the task's reason and, in detail, feedback for the agent's
next prompt. Pure: the run's recorded exit, checks and result are all it reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from reconciler.durations import format_duration
from reconciler.manifests.models import Task
from reconciler.plan.model import RunView
from reconciler.protocol import PullRequest

FEEDBACK_TAIL = 2000  # characters of check output / agent message fed back per item


@dataclass
class Evaluation:
    ok: bool
    failures: list[str] = field(default_factory=list)  # one line each, for reasons
    feedback: list[str] = field(default_factory=list)  # detailed, for the agent


def _tail(text: str, limit: int = FEEDBACK_TAIL) -> str:
    text = text.rstrip()
    return text if len(text) <= limit else "…" + text[-limit:]


def evaluate(task: Task, run: RunView) -> Evaluation:
    """Check an ended run (with an exit record, no signal) against the task's success criteria."""
    assert run.exit is not None
    ev = Evaluation(ok=True)
    success = task.spec.success
    result = run.result
    said = f": {result.error}" if result is not None and result.error else ""
    if run.exit.exit_code != 0:
        kind = result.subtype if result is not None else None
        named = f" ({kind})" if kind not in (None, "success", "error") else ""
        said = "" if named and result is not None and result.error == kind else said
        ev.failures.append(f"agent exited with status {run.exit.exit_code}{named}{said}")
    if result is not None and not result.ok and run.exit.exit_code == 0:
        what = result.subtype if result.subtype not in (None, "success") else "an error"
        ev.failures.append(f"agent reported {what}{said}")
    commit = run.exit.commit
    if commit is not None and commit.exit_code != 0:
        what = "timed out" if commit.timed_out else f"failed with status {commit.exit_code}"
        ev.failures.append(f"committing the agent's changes {what}")
        if commit.output_tail.strip():
            tail = _tail(commit.output_tail)
            ev.feedback.append(f"Output of the commit (tail):\n```\n{tail}\n```")
    final_text = result.final_text if result is not None else ""
    for marker in success.markers:
        if marker not in final_text:
            ev.failures.append(f"marker {marker} missing from the agent's final output")
    for check in run.exit.checks:
        if check.exit_code == 0:
            continue
        cmd = " ".join(check.argv)
        if check.timed_out:
            ev.failures.append(f"check `{cmd}` timed out after {format_duration(check.duration)}")
        elif check.exit_code is None:
            ev.failures.append(f"check `{cmd}` could not be started")
        else:
            ev.failures.append(f"check `{cmd}` failed with status {check.exit_code}")
        if check.output_tail.strip():
            ev.feedback.append(f"Output of `{cmd}` (tail):\n```\n{_tail(check.output_tail)}\n```")
    if success.require_commits and not run.commits_ahead:
        ev.failures.append("no commits ahead of the base branch; commit your changes")
    ev.ok = not ev.failures
    if not ev.ok:
        if final_text.strip():
            ev.feedback.append(f"Your last message (tail):\n```\n{_tail(final_text)}\n```")
        if run.dirty:
            status = "\n".join(run.dirty)
            ev.feedback.append(
                f"Uncommitted changes (`git status --porcelain`):\n```\n{status}\n```"
            )
    return ev


def pr_feedback(task: Task, pr: PullRequest, pushed: str | None) -> list[str]:
    """What the PR's checks and reviewers ask of the commit the reconciler pushed last.

    Feedback on an older commit is stale (the agent already answered it), and pending checks
    are waited for, so a PR is never iterated on twice for the same news.
    """
    if pushed is None or pr.head_sha != pushed:
        return []
    wanted = task.spec.pr.iterate_on
    items: list[str] = []
    if "checks" in wanted and pr.checks == "failure":
        items += pr.check_feedback or ["the PR's checks failed"]
    if "reviews" in wanted:
        items += pr.review_feedback
    return items


def base_moved(pr: PullRequest, pushed: str | None) -> bool:
    """Whether the base of ``pr`` moved under the commit the reconciler pushed last, as far as
    the forge knows: the head is behind its base, and whether it merges is known."""
    return pushed is not None and pr.head_sha == pushed and pr.behind and pr.mergeable is not None


def conflict_summary(pr: PullRequest) -> str:
    """ "conflicts with main in a.txt, b.txt" (the files where the forge names them)."""
    shown = ", ".join(pr.conflicts[:10]) + (", …" if len(pr.conflicts) > 10 else "")
    return f"conflicts with {pr.base}" + (f" in {shown}" if shown else "")


def conflict_feedback(pr: PullRequest, remote: str) -> str:
    """What an agent is asked when its PR conflicts with the base: which files, and how."""
    upstream = f"{remote}/{pr.base}"
    return (
        f"PR #{pr.number} {conflict_summary(pr)}: {pr.base} moved on since this branch left it, "
        f"and the changes overlap. `{upstream}` is fetched as the remote has it now. Bring it "
        f"into this branch (`git merge {upstream}`, or `git rebase {upstream}`), resolve every "
        "conflict keeping the intent of both sides, and commit the result with no conflict "
        "markers left. Do not push: the reconciler pushes the branch to the PR."
    )
