"""A warm pool of worktrees per repository and base: dispatch becomes a branch switch.

A pooled worktree is a detached worktree of the lane's checkout at a base commit, kept under
``<workspaceRoot>/.pool/<repo>/<base>/<id>``. Taking one for a task (under the repository's
worktree lock): put the task's branch at the base as the remote has it now, with every tracked
file back to that commit (``checkout --force -B``), remove everything git does not track
(``clean -ffd``; ignored files such as installed dependencies stay), check that HEAD is the base,
and ``git worktree move`` it into the task's place. A worktree that fails any of that is
removed, never handed out. Filling creates what is missing, one ``worktree add`` each.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable
from urllib.parse import quote, unquote

from reconciler.node import git as gitops
from reconciler.node.errors import NodeError

POOL_DIR = ".pool"


def pool_dir(root: str, repo: str, base: str) -> str:
    return os.path.join(root, POOL_DIR, repo, quote(base, safe=""))


def ready(root: str, repo: str) -> dict[str, int]:
    """Idle pooled worktrees per base (by directory: cheap, no git)."""
    found: dict[str, int] = {}
    top = os.path.join(root, POOL_DIR, repo)
    try:
        bases = os.listdir(top)
    except (FileNotFoundError, NotADirectoryError):
        return found
    for quoted in bases:
        found[unquote(quoted)] = len(entries(os.path.join(top, quoted)))
    return found


def entries(directory: str) -> list[str]:
    try:
        names = sorted(os.listdir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [os.path.join(directory, n) for n in names if not n.startswith(".")]


def fill(
    checkout: str,
    directory: str,
    *,
    base: str,
    remote: str,
    size: int,
    sparse: list[str],
    prepared: Callable[[str], tuple[bool, str]] = lambda _path: (True, ""),
) -> list[str]:
    """Create pooled worktrees until ``size`` are ready; the paths created now.

    ``prepared`` runs in each new one (the repository's afterCreate hook, so that a task taking
    it finds its dependencies installed); one it fails for is removed and the error raised."""
    created: list[str] = []
    ready = [p for p in entries(directory) if _usable(checkout, p)]
    if len(ready) >= size:
        return created
    gitops.fetch_base(checkout, remote, base)
    start = gitops.base_ref(checkout, base, remote)
    if start is None:
        raise NodeError(f"base branch {base!r} does not exist in {checkout}; fix the task's base")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    for _ in range(size - len(ready)):
        path = os.path.join(directory, secrets.token_hex(4))
        with gitops.repo_lock(checkout):
            gitops.add_detached(checkout, path, start, sparse)
        ok, message = prepared(path)
        if not ok:
            with gitops.repo_lock(checkout):
                gitops.drop_worktree(checkout, path)
            raise NodeError(f"{message}; the pooled worktree was removed")
        created.append(path)
    return created


def _usable(checkout: str, path: str) -> bool:
    wt = gitops.registered(checkout, path)
    if wt is None or wt.prunable:
        shutil.rmtree(path, ignore_errors=True)
        return False
    return True


def take(
    checkout: str, directory: str, target: str, *, branch: str, base: str, remote: str
) -> str | None:
    """Hand a pooled worktree to a task as ``target`` on a new ``branch`` at ``base``.

    Returns the path it came from, or None when the pool had none (the caller creates one).
    The branch must not exist yet (an existing branch keeps its own history: no pool).
    """
    start = gitops.base_ref(checkout, base, remote)
    if start is None:
        return None
    base_sha = gitops.resolve(checkout, start)
    for path in entries(directory):
        with gitops.repo_lock(checkout):
            if not _usable(checkout, path):
                continue
            try:
                # checkout --force and clean leave it clean by construction: only HEAD is checked
                gitops.repoint(path, branch, start)
                if gitops.resolve(path, "HEAD") != base_sha:
                    raise NodeError(f"pooled worktree {path} is not at {base} after the reset")
                os.makedirs(os.path.dirname(target), exist_ok=True)
                gitops.move_worktree(checkout, path, target)
            except NodeError:
                gitops.drop_worktree(checkout, path, branch)
                continue
            return path
    return None
