"""The forge registry: which implementation serves a repository's pull requests in the lane.

One module per forge, one entry per kind here. Tokens are read inside the lane (a file named in
the lane spec, else ``GH_TOKEN``/``GITHUB_TOKEN`` in the lane's environment) and never leave it.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from typing import Protocol

from reconciler.node.errors import NodeError
from reconciler.node.lane import Lane
from reconciler.protocol import PullRequest


class Forge(Protocol):
    def list_pulls(self, head: str | None = None) -> list[PullRequest]: ...

    def open_pull(
        self,
        *,
        task: str,
        head: str,
        base: str,
        title: str,
        body: str,
        draft: bool = False,
        labels: list[str] | None = None,
        reviewers: list[str] | None = None,
    ) -> tuple[PullRequest, bool]: ...

    def update_pull(
        self,
        number: int,
        *,
        title: str | None = None,
        body: str | None = None,
        comment: str | None = None,
    ) -> PullRequest: ...

    def close_pull(self, number: int, comment: str) -> PullRequest: ...

    def merge_pull(self, number: int) -> PullRequest:
        """Merge a PR where the forge lets the reconciler do it (the local forge); a hosted
        forge refuses with where to merge instead."""
        ...

    def with_feedback(
        self, pr: PullRequest, kinds: Collection[str] = ("checks", "reviews")
    ) -> PullRequest:
        """The PR with what CI and reviewers say of its head commit, where the forge has them
        (the local forge has none: the PR as it is)."""
        ...

    def flush(self) -> None:
        """Keep what the forge's client cached for the next pass (conditional requests)."""
        ...


def forge_for(lane: Lane, repo_name: str) -> Forge | None:
    """The forge of a lane repository, or None when it has none (branch only)."""
    repo, checkout = lane.repo(repo_name)
    if repo.forge == "local":
        from reconciler.node.forge_local import LocalForge

        return LocalForge(checkout, repo.remote)
    if repo.forge == "github":
        from reconciler.node.credentials import read_token
        from reconciler.node.forge_github import GitHubForge

        if not repo.github_repo:
            raise NodeError(f"repo {repo_name} has a github forge without repo: OWNER/NAME")
        if not lane.env_tokens and not lane.ref.github_token_file:
            raise NodeError(
                f"lane {lane.ref.name} runs as the reconciler's own user, so its GitHub token "
                "must come from a file (credentials.github: ~/.config/reconciler/github-token, "
                "chmod 600): the reconciler's own GH_TOKEN or GITHUB_TOKEN is never used for a "
                "lane"
            )
        token = read_token(lane.ref.github_token_file, os.environ)
        cache = os.path.join(lane.root, ".cache", "github")
        return GitHubForge(repo.github_repo, token, repo.api_url, cache_dir=cache)
    return None
