"""A warm pool of worktrees per repository and base: dispatch becomes a branch switch.

A pooled worktree is a detached worktree of the lane's checkout at a base commit, kept under
``<workspaceRoot>/.pool/<repo>/<base>/<id>``. Taking one for a task costs no checkout: ``git
worktree move`` (the only step under the repository's worktree lock) puts it into the task's
place, and
when its HEAD is the base as the remote has it now and its files are clean (one ``status`` that
writes nothing), the task's branch is created at that commit and HEAD pointed at it
(``update-ref``, ``symbolic-ref``). One that is behind or was changed is reset instead
(``checkout --force -B``, ``clean -ffd``; ignored files such as installed dependencies stay) and
its HEAD checked. A worktree that fails any of that is removed, never handed out.

Filling is the slow part and runs after a pass's starts: it creates what is missing, one
``worktree add`` each, brings ready ones whose base moved to it, and settles each new index so
that the next take's ``status`` is a stat per file, not a read.
"""

from __future__ import annotations

import math
import os
import secrets
import shutil
import time
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

    Ready ones whose base moved since they were made (as this clone last fetched it) are
    brought to it here, so that the next take finds them at the base. ``prepared`` runs in each
    new one (the repository's afterCreate hook, so that a task taking it finds its dependencies
    installed); one it fails for is removed and the error raised. Each new or moved one has its
    index settled (``settle_index``), which is what keeps a take from reading files."""
    ready = _refreshed(checkout, directory, base, remote)
    created: list[str] = []
    if len(ready) >= size:
        return created
    gitops.fetch_base(checkout, remote, base, fresh=gitops.BASE_FRESH)
    start = gitops.base_ref(checkout, base, remote)
    if start is None:
        raise NodeError(f"base branch {base!r} does not exist in {checkout}; fix the task's base")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    # New ones wait for their index's second to pass (settle_index) together, not one after
    # another, unless the next would take longer to make than they have left to wait (a large
    # repository's checkout): then they join the pool at once.
    waiting: list[str] = []
    try:
        for _ in range(size - len(ready)):
            began = time.monotonic()
            waiting.append(_make(checkout, directory, start, sparse, prepared))
            now = time.time()
            if math.floor(now) + 1 - now < time.monotonic() - began:
                created += _show(checkout, directory, waiting)
                waiting = []
    finally:  # those made before a failure still join the pool
        created += _show(checkout, directory, waiting)
    return created


def _show(checkout: str, directory: str, hidden: list[str]) -> list[str]:
    """New pooled worktrees, their indexes settled, moved to where takes find them."""
    gitops.settle_index(*hidden)
    shown = []
    for making in hidden:
        path = os.path.join(directory, os.path.basename(making).removeprefix(".new-"))
        with gitops.repo_lock(checkout):
            gitops.move_worktree(checkout, making, path)
        shown.append(path)
    return shown


def _make(
    checkout: str,
    directory: str,
    start: str,
    sparse: list[str],
    prepared: Callable[[str], tuple[bool, str]],
) -> str:
    """A new pooled worktree at ``start``, checked out and prepared, under a hidden name: made
    hidden (``entries`` lists none) and shown only once its index is settled, so that a start
    taking from the pool meanwhile (fills run beside the passes) never gets one whose
    afterCreate hook is still running or whose index is not settled."""
    making = os.path.join(directory, f".new-{secrets.token_hex(4)}")
    with gitops.repo_lock(checkout):
        gitops.add_detached(checkout, making, start)
    # The checkout, the longest step on a large repository, runs outside the lock: a take
    # from this repository's pool meanwhile does not wait for it.
    try:
        gitops.check_out(making, sparse)
        ok, message = prepared(making)
    except NodeError:
        with gitops.repo_lock(checkout):
            gitops.drop_worktree(checkout, making)
        raise
    if not ok:
        with gitops.repo_lock(checkout):
            gitops.drop_worktree(checkout, making)
        raise NodeError(f"{message}; the pooled worktree was removed")
    return making


def _refreshed(checkout: str, directory: str, base: str, remote: str) -> list[str]:
    """The pooled worktrees of ``directory`` still registered, each at the base (moved there
    when it was behind); leftovers are removed."""
    sha = gitops.base_commit(checkout, base, remote)
    ready: list[str] = []
    moved: list[tuple[str, str]] = []  # (hidden while brought to the base, its place)
    _clear_unfinished(checkout, directory)
    for path in entries(directory):
        with gitops.repo_lock(checkout):
            if not _usable(checkout, path):
                continue
            if sha is None or gitops.resolve(path, "HEAD") == sha:
                ready.append(path)
                continue
            # behind the base: out of sight while it is brought there (a start may take meanwhile)
            hidden = os.path.join(directory, "." + os.path.basename(path))
            gitops.move_worktree(checkout, path, hidden)
        try:  # this worktree alone: no lock, so takes from the pool do not wait for it
            gitops.reset_detached(hidden, sha)
        except NodeError:
            with gitops.repo_lock(checkout):
                gitops.drop_worktree(checkout, hidden)
            continue
        moved.append((hidden, path))
    gitops.settle_index(*(hidden for hidden, _ in moved))
    for hidden, path in moved:
        with gitops.repo_lock(checkout):
            gitops.move_worktree(checkout, hidden, path)
        ready.append(path)
    return ready


def _clear_unfinished(checkout: str, directory: str) -> None:
    """Pooled worktrees a fill left hidden (it was stopped half-way): removed."""
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return
    for name in names:
        if name.startswith("."):
            with gitops.repo_lock(checkout):
                gitops.drop_worktree(checkout, os.path.join(directory, name))


def _usable(checkout: str, path: str) -> bool:
    """Whether ``path`` (under the repository's lock) is still a registered worktree; a
    leftover directory that is not is removed."""
    if not os.path.isdir(path):  # taken meanwhile
        return False
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
    The branch must not exist yet (an existing branch keeps its own history: no pool). Only the
    move into the task's place holds the repository's lock; what follows touches that worktree
    alone, so starts on one repository do not wait for each other's ``status``. A take that a
    dead node left between the two (in the task's place, no branch yet) is finished here.
    """
    sha = gitops.base_commit(checkout, base, remote)
    if sha is None:
        return None  # no base: the caller's worktree add says what
    if os.path.lexists(target):
        return _resume(checkout, target, branch=branch, sha=sha, base=base)
    for path in entries(directory):
        with gitops.repo_lock(checkout):
            if not os.path.isdir(path):  # taken meanwhile
                continue
            os.makedirs(os.path.dirname(target), exist_ok=True)
            try:
                # git moves only a worktree it has registered: a leftover directory (or one
                # whose record was pruned) fails here and is removed, as _usable would have
                gitops.move_worktree(checkout, path, target)
            except NodeError:
                gitops.drop_worktree(checkout, path)
                continue
        try:
            _branch_off(target, branch, sha, base)
        except NodeError:
            with gitops.repo_lock(checkout):
                gitops.drop_worktree(checkout, target, branch)
            continue
        return path
    return None


def _resume(checkout: str, target: str, *, branch: str, sha: str, base: str) -> str | None:
    """Finish a take interrupted after its move (the node died before the branch): a clean
    worktree registered in the task's place on a detached HEAD is put on ``branch`` at the
    base, as the take would have. Anything else in the way is left for the caller's worktree
    add to name (None)."""
    with gitops.repo_lock(checkout):
        found = gitops.registered(checkout, target)
    if found is None or found.prunable or found.branch is not None:
        return None
    if gitops.clean_head(target) is None:
        raise NodeError(
            f"the worktree {target} is on a detached HEAD with changes, and {branch} does not "
            f"exist; move what is worth keeping away and remove it (git -C {checkout} worktree "
            f"remove --force {target}), then the task starts again"
        )
    _branch_off(target, branch, sha, base)
    return target


def _branch_off(path: str, branch: str, sha: str, base: str) -> None:
    """Put the worktree at ``path`` on a new ``branch`` at commit ``sha``, every tracked file
    that commit's and nothing untracked. One already there and clean is only claimed: the
    branch is created at its HEAD, no file written and the index kept. One that is behind
    (its base moved since the last fill) or was changed is reset first."""
    if gitops.clean_head(path) == sha:  # this worktree is the task's now: HEAD stays there
        gitops.claim(path, branch)
        return
    gitops.repoint(path, branch, sha)
    if gitops.resolve(path, "HEAD") != sha:
        raise NodeError(f"pooled worktree {path} is not at {base} after the reset")
