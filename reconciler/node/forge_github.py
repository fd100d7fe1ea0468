"""The GitHub forge driver: the pull requests of one GitHub (or GitHub Enterprise) repository.

The pull-request operations over the REST client of ``reconciler.node.github_http``: listing is
one paginated, conditional call per repository (the ``head`` filter needs the owner prefix, a
bare branch would be silently ignored) and starts a new look at where the base branches are;
creating asks for labels and reviewers after the PR exists; GitHub's 422 "already exists" is the
driver's ``PullExists``. Capabilities: feedback (checks and reviews) and mergeability
(``reconciler.node.github_feedback``) and the access probe pre-flight uses; no merging, PRs are
merged on GitHub. Holds no pull-request rule (``reconciler.node.pulls``), and must never delete
branches or reopen PRs.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal
from urllib.parse import urlencode

from reconciler.node.forges import Access, Capabilities, PullExists
from reconciler.node.github_feedback import GitHubFeedback, GitHubMergeability, mergeability
from reconciler.node.github_http import (
    GitHubClient,
    GitHubError,
    Json,
    Time,
    as_dict,
    message,
)
from reconciler.protocol import PrComment, PullRequest, RateLimit

REPO_NAME = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")

# Where every GitHub forge of the process reads the time; tests and the benchmark replace it.
TIME = Time()


class GitHubForge:
    """The pull requests of ``repo`` ("OWNER/NAME") as seen by ``token``."""

    def __init__(
        self,
        repo: str,
        token: str,
        api_url: str | None = None,
        *,
        retry_deadline: float = 60.0,
        sleep: Callable[[float], None] | None = None,
        clock: Callable[[], float] | None = None,
        wall: Callable[[], float] | None = None,
        cache_dir: str | None = None,
    ) -> None:
        if not REPO_NAME.match(repo):
            raise GitHubError(f"forge repo {repo!r} is not OWNER/NAME; fix forge.repo")
        if not token:
            raise GitHubError("the GitHub token is empty; set GH_TOKEN or fill the token file")
        self.repo = self.where = repo
        self.owner = repo.split("/", 1)[0]
        timing = Time(clock=clock or TIME.clock, sleep=sleep or TIME.sleep, wall=wall or TIME.wall)
        self.client = GitHubClient(
            repo, token, api_url, retry_deadline=retry_deadline, timing=timing, cache_dir=cache_dir
        )
        self.api_url = self.client.api_url
        self.merging = GitHubMergeability(self.client)
        self.capabilities = Capabilities(
            merged_on="GitHub",
            feedback=GitHubFeedback(self.client),
            mergeable=self.merging,
            access=self,
        )

    def __repr__(self) -> str:
        return f"GitHubForge({self.repo!r}, api_url={self.api_url!r})"

    def list_pulls(self, head: str | None = None) -> list[PullRequest]:
        self.merging.forget_bases()  # a new list, a new look at where the bases are
        params = {"state": "all", "per_page": "100"}
        if head is not None:
            params["head"] = f"{self.owner}:{head}"  # a bare branch would be silently ignored
        items = self.client.get_list(f"/repos/{self.repo}/pulls?{urlencode(params)}")
        pulls = [_pr(item) for item in items]
        if head is not None:
            pulls = [p for p in pulls if p.head == head]
        return sorted(pulls, key=lambda p: p.number)

    def get_pull(self, number: int) -> PullRequest:
        data = self.client.get(f"/repos/{self.repo}/pulls/{number}")
        return _pr(_object(data, f"pull request #{number}"))

    def create_pull(
        self,
        *,
        head: str,
        base: str,
        title: str,
        body: str,
        draft: bool,
        labels: list[str],
        reviewers: list[str],
    ) -> PullRequest:
        url = f"/repos/{self.repo}/pulls"
        payload = {"title": title, "body": body, "head": head, "base": base, "draft": draft}
        status, _, data = self.client.write("POST", url, payload, allow=(422,))
        if status == 422:
            if "already exists" not in message(data):
                raise self.client.error(status, data, "POST", url)
            raise PullExists(
                f"GitHub says a pull request from {self.owner}:{head} already exists in {self.repo}"
            )
        pr = _pr(_object(data, "the created pull request"))
        if labels:
            self.client.write(
                "POST", f"/repos/{self.repo}/issues/{pr.number}/labels", {"labels": labels}
            )
        if reviewers:
            users = [r for r in reviewers if "/" not in r]
            teams = [r.split("/", 1)[1] for r in reviewers if "/" in r]
            self.client.write(
                "POST",
                f"/repos/{self.repo}/pulls/{pr.number}/requested_reviewers",
                {"reviewers": users, "team_reviewers": teams},
            )
        return pr

    def edit_pull(
        self, number: int, *, title: str | None = None, body: str | None = None
    ) -> PullRequest:
        change: Json = {}
        if title is not None:
            change["title"] = title
        if body is not None:
            change["body"] = body
        if not change:
            return self.get_pull(number)
        return self._patch(number, change)

    def comment(self, number: int, text: str) -> None:
        self.client.write("POST", f"/repos/{self.repo}/issues/{number}/comments", {"body": text})

    def comments(self, number: int) -> list[PrComment]:
        items = self.client.get_list(f"/repos/{self.repo}/issues/{number}/comments?per_page=100")
        return [
            PrComment(
                at=_epoch(item.get("created_at")),
                author=str(as_dict(item.get("user")).get("login") or ""),
                body=str(item.get("body") or ""),
            )
            for item in items
        ]

    def close_pull(self, number: int) -> PullRequest:
        return self._patch(number, {"state": "closed"})

    def flush(self) -> None:
        self.client.flush()

    def access(self) -> Access:
        """Whether the token may push and open PRs, and its rate limit left. The repository is
        a conditional request (unchanged: a 304, no points) and ``/rate_limit`` is free."""
        data = self.client.get_cached(f"/repos/{self.repo}")
        if not isinstance(data, dict):
            raise GitHubError(
                f"GitHub answered the repository {self.repo} with something other than an "
                "object; check forge.apiUrl points at the REST API (…/api/v3 for Enterprise)"
            )
        can_write = bool(as_dict(data.get("permissions")).get("push"))
        remaining, limit = self.client.rate_limit()
        return Access(can_write, str(data.get("full_name") or self.repo), remaining, limit)

    def known_rate(self) -> RateLimit | None:
        """The token's rate limit as GitHub last said it to this process (pre-flight's probe,
        or the headers of any answer); asks nothing."""
        known = self.client.known_rate()
        if known is None:
            return None
        remaining, limit, at = known
        return RateLimit(remaining=remaining, limit=limit, at=at)

    def _patch(self, number: int, change: Json) -> PullRequest:
        _, _, data = self.client.write("PATCH", f"/repos/{self.repo}/pulls/{number}", change)
        return _pr(_object(data, f"pull request #{number}"))


def _pr(item: Json) -> PullRequest:
    head, base = as_dict(item.get("head")), as_dict(item.get("base"))
    state: Literal["open", "closed", "merged"]
    if item.get("merged_at"):
        state, changed = "merged", item.get("merged_at")
    elif item.get("state") == "closed":
        state, changed = "closed", item.get("closed_at") or item.get("updated_at")
    else:
        state, changed = "open", item.get("updated_at")
    sha = head.get("sha")
    pr = PullRequest(
        number=int(item["number"]),
        url=str(item.get("html_url") or ""),
        state=state,
        head=str(head.get("ref", "")),
        base=str(base.get("ref", "")),
        title=str(item.get("title") or ""),
        body=str(item.get("body") or ""),
        head_sha=sha if isinstance(sha, str) else None,
        updated_at=_epoch(changed),
    )
    return mergeability(item, pr) if state == "open" else pr


def _object(data: Any, what: str) -> Json:
    if not isinstance(data, dict) or "number" not in data:
        raise GitHubError(f"GitHub returned no JSON object for {what}; retry", temporary=True)
    return data


def _epoch(value: Any) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
