"""The pull-request rules, once, over any forge driver; what the rest of the node uses.

- A PR belongs to a task by the marker in its body (``protocol.pr_marker``): opening adds it,
  editing the body keeps it, and every PR read is given the task its marker names.
- One open PR per branch: opening reuses the open PR from the task's branch, also when the forge
  refuses a second one that a concurrent writer (or a lost answer) created meanwhile. A closed PR
  is never reopened or adopted: a new one is opened.
- Closing a PR that is no longer open is a no-op (no comment, and a merged PR stays merged).
- Merging is the reconciler's only where the forge lets it; elsewhere it names where to merge.
- Feedback is read only for open PRs with a head commit: of the kinds the forge has, and whether
  the head merges into its base now, where the forge can tell.

Drivers (``reconciler.node.forges``) do what they are told and nothing more; nothing here knows
which forge it talks to.
"""

from __future__ import annotations

from collections.abc import Collection

from reconciler.node.errors import NodeError
from reconciler.node.forges import Capabilities, ForgeDriver, PullExists, driver_for
from reconciler.node.lane import Lane
from reconciler.protocol import PrComment, PullRequest, marked_task, with_marker


class Pulls:
    """The pull requests of one repository, under the rules, through ``driver``."""

    def __init__(self, driver: ForgeDriver) -> None:
        self.driver = driver

    def __repr__(self) -> str:
        return f"Pulls({self.driver!r})"

    @property
    def capabilities(self) -> Capabilities:
        return self.driver.capabilities

    def list_pulls(self, head: str | None = None, *, mergeable: bool = False) -> list[PullRequest]:
        """Every PR of the repository (or those from branch ``head``), oldest number first;
        with ``mergeable``, each open one with whether it merges into its base now."""
        found = [_marked(pr) for pr in self.driver.list_pulls(head)]
        return [self._mergeable(pr) for pr in found] if mergeable else found

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
    ) -> tuple[PullRequest, bool]:
        """Open ``task``'s PR unless an open one from ``head`` exists; (pr, created)."""
        if head == base:
            raise NodeError(f"a pull request needs different head and base, both are {head}")
        existing = self._open_from(head)
        if existing is not None:
            return existing, False
        try:
            created = self.driver.create_pull(
                head=head,
                base=base,
                title=title,
                body=with_marker(body, task),
                draft=draft,
                labels=list(labels or []),
                reviewers=list(reviewers or []),
            )
        except PullExists as exc:
            adopted = self._open_from(head)
            if adopted is None:
                raise NodeError(
                    f"{exc}, but no open one was found; retry on the next pass", temporary=True
                ) from None
            return adopted, False
        return _marked(created), True

    def update_pull(
        self,
        number: int,
        *,
        title: str | None = None,
        body: str | None = None,
        comment: str | None = None,
    ) -> PullRequest:
        """Comment, then change the title and body; a new body keeps the PR's task marker."""
        current = self.driver.get_pull(number)
        if comment is not None:
            self.driver.comment(number, comment)
        if title is None and body is None:
            return _marked(self.driver.get_pull(number) if comment is not None else current)
        if body is not None:
            body = with_marker(body, marked_task(current.body))
        return _marked(self.driver.edit_pull(number, title=title, body=body))

    def close_pull(self, number: int, comment: str) -> PullRequest:
        """Comment and close an open PR; a PR no longer open is returned as it is."""
        current = self.driver.get_pull(number)
        if current.state != "open":
            return _marked(current)
        if comment:
            self.driver.comment(number, comment)
        return _marked(self.driver.close_pull(number))

    def merge_pull(self, number: int) -> PullRequest:
        """Merge an open PR where the forge lets the reconciler do it; a merged PR stays as it
        is. Elsewhere: an error naming where to merge it instead."""
        merger = self.capabilities.merge
        if merger is None:
            raise NodeError(
                f"PR #{number} of {self.driver.where} lives on {self.capabilities.merged_on}: "
                "merge it there; the next pass sees the merge and marks the task done"
            )
        current = self.driver.get_pull(number)
        if current.state == "merged":
            return _marked(current)
        if current.state != "open":
            raise NodeError(
                f"pull request #{number} in {self.driver.where} is closed; it cannot merge"
            )
        return _marked(merger.merge_pull(number))

    def with_feedback(
        self, pr: PullRequest, kinds: Collection[str] = ("checks", "reviews"), fresh: bool = False
    ) -> PullRequest:
        """The PR with what the forge says of its head commit: whether it merges into its base
        now, and what CI and reviewers say of it, of the ``kinds`` the forge has (a forge that
        can tell none of it: the PR as it is). ``fresh``: read anew, whatever was read lately."""
        if pr.state != "open" or not pr.head_sha:
            return pr
        pr = self._mergeable(pr)
        reader = self.capabilities.feedback
        wanted = [kind for kind in kinds if reader is not None and kind in reader.kinds]
        return reader.feedback(pr, wanted, fresh) if reader is not None and wanted else pr

    def show(
        self, number: int, *, diff: bool = False
    ) -> tuple[PullRequest, list[PrComment], str | None]:
        """One PR as a person reads it: the PR (an open one with whether it merges now), its
        comments and, with ``diff``, its changes against its base, where the forge shows them."""
        pr = self._mergeable(_marked(self.driver.get_pull(number)))
        text = None
        if diff:
            differ = self.capabilities.diff
            if differ is None:
                raise NodeError(
                    f"PR #{number} of {self.driver.where} lives on {self.capabilities.merged_on}: "
                    "see its changes there"
                )
            text = differ.diff(pr)
        return pr, self.driver.comments(number), text

    def flush(self) -> None:
        self.driver.flush()

    def _mergeable(self, pr: PullRequest) -> PullRequest:
        """An open PR with whether it merges into its base now, where the forge can tell."""
        checker = self.capabilities.mergeable
        if checker is None or pr.state != "open" or not pr.head_sha:
            return pr
        return checker.mergeable(pr)

    def _open_from(self, head: str) -> PullRequest | None:
        return next((p for p in self.list_pulls(head) if p.state == "open"), None)


def _marked(pr: PullRequest) -> PullRequest:
    return pr.model_copy(update={"task": marked_task(pr.body)})


def pulls_for(lane: Lane, repo_name: str) -> Pulls | None:
    """The pull requests of a lane repository, or None when it has no forge (branch only)."""
    driver = driver_for(lane, repo_name)
    return Pulls(driver) if driver is not None else None
