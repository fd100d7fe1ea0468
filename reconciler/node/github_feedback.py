"""What CI, reviewers and GitHub itself say of a pull request's head commit: the forge's feedback.

Check runs and commit statuses become one verdict (pending, success, failure) with the failing
ones' output tails; the latest review of each reviewer on the head commit that requests changes
becomes its summary and its inline comments as ``path:line``. Whether the head merges into its
base is the PR's ``mergeable`` and ``mergeable_state``, which GitHub computes lazily: null means
it does not know yet (asking starts the computation; a later pass reads the answer). Reads only.

What a pass asks of one open PR depends on what the PR list said of it (its head commit and
``updated_at``) and on what was read before (the lane's cache, ``reconciler.node.github_http``):

- reviews and review comments bump the PR's ``updated_at``: they are read again only when the
  head or ``updated_at`` moved, or while the PR was updated less than ``SETTLE`` before they
  were read (two updates in one second, a clock a little off);
- check runs and statuses do not bump the PR: they are read on every pass while any is pending
  or none was reported yet, and once all are final at most every ``CHECKS_RECHECK`` seconds
  (a re-run is seen then); a head that reports none for ``CHECKS_RECHECK`` counts as final;
- ``mergeable`` is read again when the head or the base branch moved (one conditional request
  for each base branch's ref after each PR list, that is per pass), for ``SETTLE`` after that
  (GitHub may still answer what it computed before the move), and while GitHub does not know.

A new head commit reads everything about it. A PR a webhook delivery named (``fresh``) has its
check runs, statuses, reviews and review comments asked again whatever the cache would trust, so
a verdict arrives seconds after GitHub sends it; the PRs not named cost nothing more. Every read
is conditional, so even a read that finds nothing new costs no rate-limit points.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Literal
from urllib.parse import quote

from reconciler.node.github_http import GitHubClient, GitHubError, Json, Reading, as_dict
from reconciler.protocol import PullRequest

# Check-run conclusions that mean "the change is not good yet" (neutral and skipped do not).
_FAILED_CONCLUSIONS = frozenset({"failure", "timed_out", "cancelled", "action_required"})
FEEDBACK_TAIL = 2000
CHECKS_RECHECK = 600.0  # seconds final checks of a head are trusted before they are asked again
SETTLE = 60.0  # seconds after a change within which GitHub's answers about it are read again

Verdict = Literal["pending", "success", "failure"]


class GitHubFeedback:
    """The checks and reviews of the pull requests of ``client``'s repository."""

    kinds = frozenset({"checks", "reviews"})

    def __init__(self, client: GitHubClient) -> None:
        self.client = client
        self.repo = client.repo

    def feedback(self, pr: PullRequest, kinds: Collection[str], fresh: bool = False) -> PullRequest:
        """The open ``pr`` with what CI (``checks``) and reviewers (``reviews``) say of its head
        commit. Failing checks carry their output's tail; change requests carry their inline
        comments as ``path:line``. ``fresh``: asked again, whatever the cache would trust."""
        if "checks" not in kinds:
            return pr.model_copy(update={"review_feedback": self._change_requests(pr, fresh)})
        checks, failing = self._checks(str(pr.head_sha), fresh)
        return pr.model_copy(
            update={
                "checks": checks,
                "check_feedback": failing,
                "review_feedback": self._change_requests(pr, fresh) if "reviews" in kinds else [],
            }
        )

    def _checks(self, sha: str, fresh: bool) -> tuple[Verdict | None, list[str]]:
        """The verdict of the check runs and statuses of ``sha`` (None: none reported) and the
        failing ones, each with what it said."""
        urls = [f"/repos/{self.repo}/commits/{sha}/{what}" for what in ("check-runs", "status")]
        known = [self.client.recall(url) for url in urls]
        if not fresh and _settled(known, self.client.timing.wall()):
            runs, status = (as_dict(seen.data) for seen in known if seen is not None)
        else:
            runs, status = (as_dict(self.client.get_cached(url)) for url in urls)
        verdict, failing, _ = _verdict(runs, status)
        return verdict, failing

    def _change_requests(self, pr: PullRequest, fresh: bool) -> list[str]:
        """The latest change request of each reviewer on the head commit, with its inline
        comments; asked again only when the PR list says the PR changed, or when ``fresh``."""
        key = f"{pr.head_sha}@{pr.updated_at}"

        def current(seen: Reading) -> bool:
            settled = pr.updated_at is not None and seen.checked - pr.updated_at >= SETTLE
            return settled and not fresh

        reviews = self.client.get_cached(
            f"/repos/{self.repo}/pulls/{pr.number}/reviews", key=key, trust=current
        )
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
        comments = self.client.get_cached(
            f"/repos/{self.repo}/pulls/{pr.number}/comments", key=key, trust=current
        )
        for comment in map(as_dict, comments if isinstance(comments, list) else []):
            if comment.get("pull_request_review_id") in wanted:
                where = (
                    f"{comment.get('path')}:{comment.get('line') or comment.get('original_line')}"
                )
                items.append(f"{where}: {comment.get('body')}")
        return items


def _settled(known: list[Reading | None], now: float) -> bool:
    """Whether the cached check runs and status of a head may stand without asking: both read
    less than ``CHECKS_RECHECK`` ago and final (none pending; none reported counts only once the
    head was first read ``CHECKS_RECHECK`` ago, CI may not have started before)."""
    readings = [seen for seen in known if seen is not None]
    if len(readings) != len(known) or any(now - r.checked >= CHECKS_RECHECK for r in readings):
        return False
    runs, status = (as_dict(r.data) for r in readings)
    _, _, pending = _verdict(runs, status)
    reported = bool(runs.get("check_runs") or status.get("statuses"))
    first = min(r.first for r in readings)
    return not pending and (reported or now - first >= CHECKS_RECHECK)


def _verdict(runs: Json, status: Json) -> tuple[Verdict | None, list[str], bool]:
    """The verdict of a head's check runs and combined status (None: none reported), the
    failing ones each with what it said, and whether any is still pending."""
    pending = False
    failing: list[str] = []
    seen_any = False
    for run in map(as_dict, runs.get("check_runs") or []):
        seen_any = True
        if run.get("status") != "completed":
            pending = True
        elif run.get("conclusion") in _FAILED_CONCLUSIONS:
            output = as_dict(run.get("output"))
            detail = "\n".join(str(output.get(k) or "") for k in ("title", "summary", "text"))
            detail = detail.strip()
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
        return "failure", failing, pending
    return ("pending" if pending else "success" if seen_any else None), failing, pending


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
        self.bases: dict[str, str | None] = {}  # base branch → its commit, once per PR list

    def mergeable(self, pr: PullRequest) -> PullRequest:
        base = self._base(pr.base)
        key = f"{pr.head_sha}:{base}"

        def current(seen: Reading) -> bool:
            """GitHub's answer stands while the head and the base stay where they were, once it
            was given ``SETTLE`` after they moved there (a push moves the PR's ``updated_at``;
            a base seen to move, the answer's key)."""
            item = as_dict(seen.data)
            settled = (
                pr.updated_at is not None
                and seen.checked - pr.updated_at >= SETTLE
                and seen.checked - seen.since >= SETTLE
            )
            known = isinstance(item.get("mergeable"), bool)
            head = as_dict(item.get("head")).get("sha")
            return base is not None and known and settled and head == pr.head_sha

        item = self.client.get_cached(
            f"/repos/{self.repo}/pulls/{pr.number}", key=key, trust=current
        )
        return mergeability(as_dict(item), pr)

    def forget_bases(self) -> None:
        """Where the base branches are is read again (a pass starts with a new PR list)."""
        self.bases.clear()

    def _base(self, branch: str) -> str | None:
        """The commit ``branch`` points at on GitHub (None: it cannot tell; the PR is asked)."""
        if branch not in self.bases:
            try:
                ref = self.client.get_cached(f"/repos/{self.repo}/git/ref/heads/{quote(branch)}")
            except GitHubError:
                ref = None
            sha = as_dict(as_dict(ref).get("object")).get("sha")
            self.bases[branch] = sha if isinstance(sha, str) else None
        return self.bases[branch]
