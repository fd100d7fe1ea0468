"""A repository's refs and worktree list as git would answer them, read from its files.

:mod:`reconciler.gitfiles` reads them as git reads them; what it does not cover (reftable, a
symbolic ref, a bare checkout's worktrees…) is asked of git here. An observation of a busy
checkout then costs a ``stat`` per ref and a read of the refs that changed, where it cost two
git processes.
"""

from __future__ import annotations

from reconciler import gitfiles
from reconciler.node import git as gitops
from reconciler.protocol import Worktree

__all__ = ["refs", "worktrees"]


def refs(checkout: str, patterns: list[str], *, check: bool = True) -> dict[str, str]:
    """:func:`reconciler.node.git.refs`, read from the files where git's files backend laid
    them out."""
    try:
        return gitfiles.read_refs(checkout, patterns)
    except (gitfiles.Unreadable, OSError):
        return gitops.refs(checkout, patterns, check=check)


def worktrees(checkout: str) -> list[Worktree]:
    """:func:`reconciler.node.git.list_worktrees`, read from the files where git laid them
    out."""
    return gitops.worktrees(checkout)
