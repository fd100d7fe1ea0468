"""What a task's branch changed against its base, for the dashboard: read-only, as the lane user.

While the task's worktree exists the changes are the worktree's against the commit where its
branch left the base (``git diff MERGE_BASE``: what the agent committed and what it has not yet
committed, as a reviewer would see it next), and the files it created but has not added yet,
each as a new file. Once the worktree is gone (the task is done and cleaned up) they are the
branch as committed, ``git diff base...branch``. Nothing is written: no index refresh, no fetch.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile

from reconciler.node import git as gitops
from reconciler.node.lane import Lane
from reconciler.protocol import ChangesRequest, ChangesResult

UNTRACKED_MAX = 200  # names of new files listed at most


def changes(lane: Lane, req: ChangesRequest) -> ChangesResult:
    repo, checkout, workspace = lane.task(req.task)
    if not gitops.is_repo(checkout):
        return ChangesResult(source="none")
    base_ref = gitops.base_ref(checkout, req.task.base, repo.remote) if req.task.base else None
    worktree = os.path.isdir(workspace) and gitops.registered(checkout, workspace) is not None
    where = workspace if worktree else checkout
    head = gitops.resolve(where, "HEAD" if worktree else f"refs/heads/{req.task.branch}")
    if head is None or base_ref is None:
        return ChangesResult(source="none", head=head)
    base = _merge_base(where, base_ref, head)
    if base is None:
        return ChangesResult(source="none", head=head)
    # --no-optional-locks: reading must not refresh the index the agent may be writing
    args = ["--no-optional-locks", "diff", "--no-color", "--no-ext-diff", "--no-renames"]
    untracked: list[str] = []
    if worktree:
        listed = gitops.run(
            ["--no-optional-locks", "ls-files", "--others", "--exclude-standard", "-z"], workspace
        ).stdout
        untracked = [name for name in listed.split("\0") if name][:UNTRACKED_MAX]
        text = _worktree_diff(workspace, args, base, untracked)
    else:
        text = gitops.run([*args, base, head, "--"], checkout).stdout
    diff, truncated = _cut(text, req.limit)
    return ChangesResult(
        source="worktree" if worktree else "branch",
        base=base,
        head=head,
        diff=diff,
        untracked=untracked,
        truncated=truncated,
    )


def _worktree_diff(workspace: str, args: list[str], base: str, untracked: list[str]) -> str:
    """The worktree against ``base``, its new files shown as the commit adding them will show
    them: they are marked intent-to-add in a copy of the index, so the diff is three git
    processes however many files there are, and the agent's own index is never written."""
    if not untracked:
        return gitops.run([*args, base, "--"], workspace).stdout
    index = gitops.run(["rev-parse", "--git-path", "index"], workspace).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="reconciler-changes-") as tmp:
        copy = os.path.join(tmp, "index")
        with contextlib.suppress(FileNotFoundError):  # no index yet: an empty one will do
            shutil.copyfile(os.path.join(workspace, index), copy)
        env = {"GIT_INDEX_FILE": copy}
        gitops.run(
            ["--literal-pathspecs", "add", "--intent-to-add", "--", *untracked], workspace, env=env
        )
        return gitops.run([*args, base, "--"], workspace, env=env).stdout


def _merge_base(repo: str, base_ref: str, head: str) -> str | None:
    proc = gitops.run(["merge-base", base_ref, head], repo, check=False)
    if proc.returncode != 0:
        return None  # no common history
    return proc.stdout.strip() or None


def _cut(text: str, limit: int) -> tuple[str, bool]:
    """``text`` at most ``limit`` characters, cut at a line's end."""
    if len(text) <= limit:
        return text, False
    cut = text.rfind("\n", 0, limit)
    return text[: cut + 1 if cut >= 0 else limit], True
