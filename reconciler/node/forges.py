"""The forge drivers: what a forge implementation offers, and the registry that picks one.

A driver is thin: it lists, creates, edits, comments on and closes pull requests exactly as it is
told, and says what else it can do in its ``Capabilities``. It holds no pull-request rule (the
task marker, one open PR per branch, closing twice): those live once in ``reconciler.node.pulls``,
which is what the rest of the node uses. One module per forge, one entry per kind in ``DRIVERS``.

Opening a driver reads its credentials and touches nothing else, so that pre-flight can report a
failure to open as the forge's token check. Tokens are read inside the lane (a file named in the
lane spec, else ``GH_TOKEN``/``GITHUB_TOKEN`` in the lane's environment) and never leave it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Protocol

from reconciler.node.errors import NodeError
from reconciler.node.lane import Lane
from reconciler.protocol import PrComment, PullRequest, RateLimit, RepoRef


class PullExists(NodeError):
    """The forge refused to open a second PR from a branch that already has an open one."""


class Merger(Protocol):
    def merge_pull(self, number: int) -> PullRequest:
        """Merge the open PR ``number`` into its base; the PR as merged."""
        ...


class FeedbackReader(Protocol):
    kinds: frozenset[str]  # what it reads of a head commit: "checks", "reviews"

    def feedback(self, pr: PullRequest, kinds: Collection[str], fresh: bool = False) -> PullRequest:
        """The open ``pr`` with what ``kinds`` (a subset of ``self.kinds``) say of its head;
        ``fresh``: asked anew, however recently it was read."""
        ...


class MergeChecker(Protocol):
    def mergeable(self, pr: PullRequest) -> PullRequest:
        """The open ``pr`` with ``mergeable``, ``behind`` and ``conflicts`` as its head and its
        base are now (``mergeable`` None while the forge does not know yet)."""
        ...


class Differ(Protocol):
    def diff(self, pr: PullRequest) -> str:
        """The unified diff of ``pr`` against its base (``git diff base...head``)."""
        ...


@dataclass(frozen=True)
class Access:
    """What the forge says of the lane's token: may it push, and how many requests are left."""

    can_write: bool
    full_name: str  # the repository as the forge names it
    remaining: int
    limit: int


class AccessProbe(Protocol):
    def access(self) -> Access:
        """Ask the forge about the token; reads only."""
        ...

    def known_rate(self) -> RateLimit | None:
        """What the forge last said of the token's rate limit, without asking (None: not yet)."""
        ...


@dataclass(frozen=True)
class Capabilities:
    """What a forge can do beyond keeping pull requests; None where it cannot."""

    merge: Merger | None = None  # the reconciler may merge (`reconciler pr merge`)
    merged_on: str = ""  # where a human merges instead, when ``merge`` is None
    feedback: FeedbackReader | None = None  # what CI and reviewers say of a head commit
    mergeable: MergeChecker | None = None  # whether an open PR merges into its base now
    diff: Differ | None = None  # a PR's changes as a unified diff (`reconciler pr diff`)
    access: AccessProbe | None = None  # pre-flight's token, permission and rate-limit probe


class ForgeDriver(Protocol):
    """The pull requests of one repository, as the forge keeps them.

    Every ``PullRequest`` a driver returns leaves ``task`` unset (the rules read the marker);
    an open PR's ``head_sha`` is its branch's commit now. Errors are ``NodeError`` sentences that
    name the PR or repository and the fix.
    """

    @property
    def where(self) -> str:
        """The repository, as messages name it."""
        ...

    @property
    def capabilities(self) -> Capabilities: ...

    def list_pulls(self, head: str | None = None) -> list[PullRequest]:
        """Every PR (or those from branch ``head``), oldest number first."""
        ...

    def get_pull(self, number: int) -> PullRequest: ...

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
        """Open a PR with exactly this body; ``PullExists`` when ``head`` has an open one."""
        ...

    def edit_pull(
        self, number: int, *, title: str | None = None, body: str | None = None
    ) -> PullRequest:
        """Change what is given, exactly as given."""
        ...

    def comment(self, number: int, text: str) -> None: ...

    def comments(self, number: int) -> list[PrComment]:
        """The PR's conversation, oldest first."""
        ...

    def close_pull(self, number: int) -> PullRequest:
        """Close an open PR (a PR that is no longer open stays as it is)."""
        ...

    def flush(self) -> None:
        """Keep what the driver cached for the next pass (conditional requests), if anything."""
        ...


def _local(lane: Lane, repo: RepoRef, checkout: str) -> ForgeDriver:
    from reconciler.node.forge_local import LocalForge

    return LocalForge(checkout, repo.remote)


def _github(lane: Lane, repo: RepoRef, checkout: str) -> ForgeDriver:
    from reconciler.node.credentials import read_token
    from reconciler.node.forge_github import GitHubForge

    if not repo.github_repo:
        raise NodeError(f"repo {repo.name} has a github forge without repo: OWNER/NAME")
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


# The forge kinds a lane repository may name (``RepoRef.forge``), each opening its driver.
DRIVERS: dict[str, Callable[[Lane, RepoRef, str], ForgeDriver]] = {
    "local": _local,
    "github": _github,
}


def driver_for(lane: Lane, repo_name: str) -> ForgeDriver | None:
    """The forge driver of a lane repository, or None when it has none (branch only)."""
    repo, checkout = lane.repo(repo_name)
    if repo.forge is None:
        return None
    return DRIVERS[repo.forge](lane, repo, checkout)
