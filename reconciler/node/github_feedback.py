"""What CI, reviewers and GitHub itself say of a pull request's head commit: the forge's feedback.

Check runs and commit statuses become one verdict (pending, success, failure) with the failing
ones' output tails; the latest review of each reviewer on the head commit that requests changes
becomes its summary and its inline comments as ``path:line``. Whether the head merges into its
base is the PR's ``mergeable`` and ``mergeable_state``, which GitHub computes lazily: null means
it does not know yet (asking starts the computation; a later pass reads the answer). Every read is
conditional, so an unchanged PR costs no rate-limit points. Reads only.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Literal

from reconciler.node.github_http import GitHubClient, Json, as_dict
from reconciler.protocol import PullRequest

# Check-run conclusions that mean "the change is not good yet" (neutral and skipped do not).
_FAILED_CONCLUSIONS = frozenset({"failure", "timed_out", "cancelled", "action_required"})
FEEDBACK_TAIL = 2000

Verdict = Literal["pending", "success", "failure"]


class GitHubFeedback:
    """The checks and reviews of the pull requests of ``client``'s repository."""

    kinds = frozenset({"checks", "reviews"})

    def __init__(self, client: GitHubClient) -> None:
        self.client = client
        self.repo = client.repo

    def feedback(self, pr: PullRequest, kinds: Collection[str]) -> PullRequest:
        """The open ``pr`` with what CI (``checks``) and reviewers (``reviews``) say of its head
        commit. Failing checks carry their output's tail; change requests carry their inline
        comments as ``path:line``."""
        if "checks" not in kinds:
            return pr.model_copy(update={"review_feedback": self._change_requests(pr)})
        checks, failing = self._checks(str(pr.head_sha))
        return pr.model_copy(
            update={
                "checks": checks,
                "check_feedback": failing,
                "review_feedback": self._change_requests(pr) if "reviews" in kinds else [],
            }
        )

    def _checks(self, sha: str) -> tuple[Verdict | None, list[str]]:
        """The verdict of the check runs and statuses of ``sha`` (None: none reported) and the
        failing ones, each with what it said."""
        runs = as_dict(self.client.get_cached(f"/repos/{self.repo}/commits/{sha}/check-runs"))
        status = as_dict(self.client.get_cached(f"/repos/{self.repo}/commits/{sha}/status"))
        pending = False
        failing: list[str] = []
        seen_any = False
        for run in map(as_dict, runs.get("check_runs") or []):
            seen_any = True
            if run.get("status") != "completed":
                pending = True
            elif run.get("conclusion") in _FAILED_CONCLUSIONS:
                output = as_dict(run.get("output"))
                detail = "\n".join(
                    str(output.get(k) or "") for k in ("title", "summary", "text")
                ).strip()
                line = f"check `{run.get('name')}` {run.get('conclusion')}"
                failing.append(f"{line}:\n```\n{detail[-FEEDBACK_TAIL:]}\n```" if detail else line)
        for item in map(as_dict, status.get("statuses") or []):
            seen_any = True
            if item.get("state") == "pending":
                pending = True
            elif item.get("state") in ("failure", "error"):
                failing.append(
                    f"status `{item.get('context')}` {item.get('state')}: "
                    f"{item.get('description') or ''}".rstrip(": ")
                )
        if failing:
            return "failure", failing
        if pending:
            return "pending", failing
        return ("success" if seen_any else None), failing

    def _change_requests(self, pr: PullRequest) -> list[str]:
        reviews = self.client.get_cached(f"/repos/{self.repo}/pulls/{pr.number}/reviews")
        latest: dict[str, Json] = {}
        for review in map(as_dict, reviews if isinstance(reviews, list) else []):
            if review.get("commit_id") not in (None, pr.head_sha):
                continue  # about an older commit: already answered
            user = str(as_dict(review.get("user")).get("login") or "?")
            if review.get("state") in ("APPROVED", "CHANGES_REQUESTED", "DISMISSED"):
                latest[user] = review
        wanted = {
            review.get("id"): user
            for user, review in latest.items()
            if review.get("state") == "CHANGES_REQUESTED"
        }
        if not wanted:
            return []
        items = [
            f"review by {user} requests changes: {latest[user].get('body') or '(no summary)'}"
            for user in sorted(set(wanted.values()))
        ]
        comments = self.client.get_cached(f"/repos/{self.repo}/pulls/{pr.number}/comments")
        for comment in map(as_dict, comments if isinstance(comments, list) else []):
            if comment.get("pull_request_review_id") in wanted:
                where = (
                    f"{comment.get('path')}:{comment.get('line') or comment.get('original_line')}"
                )
                items.append(f"{where}: {comment.get('body')}")
        return items


def mergeability(item: Json, pr: PullRequest) -> PullRequest:
    """``pr`` with what GitHub's answer ``item`` for it says of merging its head: ``mergeable``
    false (``mergeable_state`` dirty) is a conflict (GitHub names no files), ``behind`` an
    out-of-date head where the base's rules want it current; null is not known yet."""
    if "mergeable" not in item:  # a list item: GitHub says this of one PR at a time
        return pr
    head_sha = as_dict(item.get("head")).get("sha")
    value = item.get("mergeable")
    if head_sha != pr.head_sha or not isinstance(value, bool):
        return pr.model_copy(update={"mergeable": None, "behind": False, "conflicts": []})
    state = item.get("mergeable_state")
    return pr.model_copy(
        update={"mergeable": value, "behind": state == "behind" or not value, "conflicts": []}
    )


class GitHubMergeability:
    """Whether the open pull requests of ``client``'s repository merge into their base."""

    def __init__(self, client: GitHubClient) -> None:
        self.client = client
        self.repo = client.repo

    def mergeable(self, pr: PullRequest) -> PullRequest:
        return mergeability(
            as_dict(self.client.get_cached(f"/repos/{self.repo}/pulls/{pr.number}")), pr
        )
