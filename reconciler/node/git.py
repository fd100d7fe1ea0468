"""Git for the lane: worktrees, branch heads, ahead counts, status, push, trial merges and the
rebase of a task's branch in its worktree, all as argv lists.

Worktree add/remove/prune on one repository are serialized with an ``flock`` inside the
repository's common git dir, because parallel ``git worktree add`` corrupts admin files. Must
never build a shell string, prompt for credentials, or touch paths its caller did not validate.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

from reconciler import gitfiles
from reconciler.gitenv import git_env
from reconciler.gitfiles import git_dirs_on_disk
from reconciler.node import procs
from reconciler.node.errors import NodeError
from reconciler.node.files import locked, read_json, write_json_atomic
from reconciler.protocol import Fingerprint, Worktree

LOCK_NAME = "reconciler-worktrees.lock"
LOCK_TIMEOUT = 120.0
BASE_FRESH = 1.0  # seconds: how old the fetch a new branch starts from may be, at most


class GitError(NodeError):
    """A git command failed; the message names the command, the repository and git's reason."""


def _reason(stderr: str) -> str:
    """git's own explanation, shortened to its meaningful lines."""
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    important = [ln for ln in lines if ln.startswith(("fatal:", "error:", "!"))]
    text = "; ".join((important or lines)[-3:])
    return text.removeprefix("fatal: ").removeprefix("error: ") or "no message"


def run(
    args: list[str],
    cwd: str,
    *,
    check: bool = True,
    stdin: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float | None = 300.0,
) -> subprocess.CompletedProcess[str]:
    """Run ``git -C cwd ARGS``; with ``check`` a non-zero exit raises GitError."""
    argv = ["git", "-C", cwd, *args]
    try:
        proc = subprocess.run(
            argv,
            check=False,
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="replace",
            input=stdin,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            env=git_env(env),
            timeout=timeout,
        )
    except FileNotFoundError:
        raise GitError(
            "git is not installed or not on PATH; install git 2.30 or newer for the lane user"
        ) from None
    except subprocess.TimeoutExpired:
        raise GitError(
            f"git {args[0]} in {cwd} did not finish within {timeout:.0f}s; retry later",
            temporary=True,
        ) from None
    if check and proc.returncode != 0:
        raise GitError(f"git {args[0]} failed in {cwd}: {_reason(proc.stderr)}")
    return proc


def version() -> tuple[int, ...]:
    """git's version as numbers, e.g. (2, 39, 5); GitError when git cannot run."""
    try:
        out = subprocess.run(
            ["git", "--version"], check=True, capture_output=True, text=True, env=git_env()
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        raise GitError(
            "git is not installed or not on PATH; install git 2.30 or newer for the lane user"
        ) from None
    m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", out)
    if not m:
        raise GitError(f"could not read git's version from {out.strip()!r}; reinstall git")
    return tuple(int(g) for g in m.groups() if g is not None)


def is_repo(path: str) -> bool:
    """Whether git takes ``path`` for a repository (or a directory inside one). Asked before
    every start, removal and observation: a checkout laid out as git lays it out, all of it
    this user's own (git's safe.directory check passes), is one without a git process."""
    if not os.path.isdir(path):
        return False
    if _own_repository(path):
        return True
    proc = run(["rev-parse", "--git-dir"], path, check=False)
    return proc.returncode == 0


def _own_repository(top: str) -> bool:
    """``top`` holds a ``.git`` git would read (gitrepository-layout) and ``top``, its git
    directory and the repository's are all owned by this user; anything else is for git to
    judge (a subdirectory, a bare repository, another owner that safe.directory may allow)."""
    found = git_dirs_on_disk(top)
    if found is None:
        return False
    me = os.geteuid()
    try:
        places = (top, os.path.join(top, ".git"), *found)
        return all(os.stat(p).st_uid == me for p in places)
    except OSError:
        return False


def common_dir(checkout: str) -> str:
    """The repository's own git directory (a linked worktree's is its main one's)."""
    found = _common_dir_on_disk(checkout)
    if found is not None:
        return found
    out = run(["rev-parse", "--git-common-dir"], checkout).stdout.strip()
    return os.path.normpath(os.path.join(checkout, out))


def _common_dir_on_disk(top: str) -> str | None:
    """``rev-parse --git-common-dir`` read from the files git itself reads, without a git
    process: every worktree lock and start asks. None when ``top`` is laid out any other way
    (a bare repository, a subdirectory): git answers."""
    found = git_dirs_on_disk(top)
    return found[1] if found is not None else None


@contextlib.contextmanager
def repo_lock(checkout: str) -> Iterator[None]:
    """Serialize worktree changes of one repository across threads and processes."""
    path = os.path.join(common_dir(checkout), LOCK_NAME)
    try:
        with locked(path, LOCK_TIMEOUT, f"the worktree list of {checkout}"):
            yield
    except TimeoutError as exc:
        raise GitError(str(exc), temporary=True) from None


def resolve(checkout: str, ref: str) -> str | None:
    """The commit a full ref name points to, or None when it does not exist."""
    proc = run(["rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], checkout, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


def base_ref(checkout: str, base: str, remote: str) -> str | None:
    """The ref a task's base names: the remote-tracking branch (what others merged), else the
    local one."""
    found = _base(checkout, base, remote)
    return found[0] if found is not None else None


def base_commit(checkout: str, base: str, remote: str) -> str | None:
    """The commit :func:`base_ref` names, in the same one git process."""
    found = _base(checkout, base, remote)
    return found[1] if found is not None else None


def _base(checkout: str, base: str, remote: str) -> tuple[str, str] | None:
    return _base_in(start_refs(checkout, base, remote), base, remote)


def start_refs(checkout: str, base: str, remote: str, branch: str | None = None) -> dict[str, str]:
    """The refs a branch starts from (the base, remote-tracking and local) and, with
    ``branch``, the branch itself: full name → commit, read from the repository's files (else
    in one git process); none of them where git cannot read the repository. What a start
    decides from them is which exist: a fetch of the base since moves a commit, and makes no
    ref but the remote-tracking one."""
    names = [f"refs/remotes/{remote}/{base}", f"refs/heads/{base}"]
    if branch is not None:
        names.append(f"refs/heads/{branch}")
    found = _files_refs(checkout, names)
    return {name: sha for name, sha in found.items() if name in names}  # not refs below them


def ref_commit(checkout: str, ref: str) -> str | None:
    """The commit the full ref name ``ref`` names, read from the repository's files (else asked
    of git); None when there is no such ref."""
    return _files_refs(checkout, [ref]).get(ref)


def _files_refs(checkout: str, patterns: list[str]) -> dict[str, str]:
    """:func:`refs` without ``check``, read from the repository's files where git's files
    backend laid them out (``gitcache``), else asked of git."""
    from reconciler.node import gitcache  # which asks git through this module

    return gitcache.refs(checkout, patterns, check=False)


def _base_in(found: Mapping[str, str], base: str, remote: str) -> tuple[str, str] | None:
    """The base's (ref, commit) among ``found``: remote-tracking first, else the local one."""
    for ref in (f"refs/remotes/{remote}/{base}", f"refs/heads/{base}"):
        sha = found.get(ref)
        if sha is not None:
            return ref, sha
    return None


def list_worktrees(checkout: str) -> list[Worktree]:
    """Every worktree of the repository (the main checkout first), from the porcelain format."""
    out = run(["worktree", "list", "--porcelain"], checkout).stdout
    trees: list[Worktree] = []
    for block in out.split("\n\n"):
        path: str | None = None
        head: str | None = None
        branch: str | None = None
        prunable = False
        for line in block.splitlines():
            key, _, value = line.partition(" ")
            if key == "worktree":
                path = value
            elif key == "HEAD":
                head = value
            elif key == "branch":
                branch = value.removeprefix("refs/heads/")
            elif key == "prunable":
                prunable = True
        if path is not None:
            trees.append(Worktree(path=path, branch=branch, head=head, prunable=prunable))
    return trees


def worktrees(checkout: str) -> list[Worktree]:
    """:func:`list_worktrees`, read from the files where git laid them out as it does
    (:mod:`reconciler.gitfiles`), else asked of git: an iteration's start, which finds its
    worktree there, runs no git process to learn that it is registered."""
    try:
        return gitfiles.read_worktrees(checkout)
    except (gitfiles.Unreadable, OSError):
        return list_worktrees(checkout)


def registered(checkout: str, path: str) -> Worktree | None:
    real = os.path.realpath(path)
    for wt in worktrees(checkout):
        if os.path.realpath(wt.path) == real:
            return wt
    return None


def _checked_out(checkout: str, branch: str) -> bool:
    return any(wt.branch == branch for wt in worktrees(checkout))


def _clear_leftover(checkout: str, path: str) -> None:
    """Remove a directory at ``path`` that is not (or no longer) a registered worktree."""
    real = os.path.realpath(path)
    repo = os.path.realpath(checkout)
    if real == repo or repo.startswith(real + os.sep):
        raise GitError(f"refusing to remove {path}: it holds the checkout {checkout}")
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def prepare_workspace(
    checkout: str,
    path: str,
    branch: str,
    base: str,
    remote: str,
    *,
    sparse: list[str] | None = None,
    known: Mapping[str, str] | None = None,
) -> bool:
    """Make ``path`` a worktree of ``checkout`` on ``branch``; True when it was created now.

    An existing registered worktree is reused as it is. A new branch starts at ``base`` (the
    remote-tracking branch, which the caller fetched, else the local one) without upstream
    tracking. ``known``: :func:`start_refs` for ``branch`` as the caller read them, whose names
    still hold (else they are read here).
    Only the worktree bookkeeping holds the repository's lock: every git call under it delays
    every other start and cleanup on the same repository. So the worktree is registered
    without its files (``--no-checkout``) under the lock and checked out after it; a worktree
    found registered but never checked out (its node died in between) is checked out now, and
    counts as created.
    """
    # A worktree made and checked out before (by the task's earlier runs, or by a start that
    # died after making it) is known without the lock: the list changes only under it, and
    # nothing removes a task's worktree while the task starts. So an iteration's start does not
    # queue behind the other starts and cleanups of the repository.
    if os.path.isdir(path) and _has_index(path):
        existing = registered(checkout, path)
        if existing is not None and not existing.prunable:
            return False
    # Reading the refs needs no lock: only what changes the worktrees waits for the others.
    found = None
    if not os.path.isdir(path):
        found = dict(known) if known is not None else start_refs(checkout, base, remote, branch)
    if found is not None and f"refs/heads/{branch}" not in found:
        found = _make_branch(checkout, branch, base, remote, found)
    with repo_lock(checkout):
        existing = registered(checkout, path) if os.path.isdir(path) else None
        if existing is not None and not existing.prunable:
            if _has_index(path):
                return False
        else:
            if os.path.isdir(path) and os.listdir(path):
                raise GitError(
                    f"{path} exists and is not a worktree of {checkout}; move it away or remove "
                    "it (remove-workspace does), then prepare the workspace again"
                )
            _register(checkout, path, branch, base, remote, found=found)
    check_out(path, sparse or [])
    return True


def _make_branch(
    checkout: str, branch: str, base: str, remote: str, found: dict[str, str]
) -> dict[str, str] | None:
    """Make the new ``branch`` at the base, outside the repository's worktree lock (a branch is
    a ref: only the worktree's registration needs the lock, which is then one git process
    shorter). The refs with it; None when git refused (made meanwhile): read them again. A
    start that dies after this leaves the branch at the base, where the next one takes it up."""
    start = _base_start(checkout, base, remote, found)
    # By name: git takes the commit the base has now, after the caller's fetch.
    if run(["branch", "--no-track", branch, start], checkout, check=False).returncode != 0:
        return None
    return {**found, f"refs/heads/{branch}": found[start]}


def _base_start(checkout: str, base: str, remote: str, found: Mapping[str, str]) -> str:
    """The ref a new branch starts from, among ``found``; GitError naming the fix when the
    base exists nowhere."""
    start = (_base_in(found, base, remote) or (None,))[0]
    if start is None:
        raise GitError(
            f"base branch {base!r} exists neither as refs/heads/{base} nor as "
            f"refs/remotes/{remote}/{base} in {checkout}; fetch it "
            f"(git -C {checkout} fetch {remote}) or fix the task's base"
        )
    return start


def _has_index(path: str) -> bool:
    """Whether the worktree at ``path`` was ever checked out: ``worktree add --no-checkout``
    leaves no index. One laid out otherwise is taken as checked out (as it was before)."""
    dirs = git_dirs_on_disk(path)
    return dirs is None or os.path.exists(os.path.join(dirs[0], "index"))


def _register(
    checkout: str, path: str, branch: str, base: str, remote: str, *, found: dict[str, str] | None
) -> None:
    """Register the worktree at ``path`` on ``branch`` (made at the base when new), without
    its files; once more after cleaning up when the first try fails. Under the lock."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    reason = ""
    for _ in range(2):
        found = found or start_refs(checkout, base, remote, branch)
        branch_existed = f"refs/heads/{branch}" in found
        if branch_existed:
            args = ["worktree", "add", "--no-checkout", path, branch]
        else:
            start = _base_start(checkout, base, remote, found)
            args = ["worktree", "add", "--no-checkout", "--no-track", "-b", branch, path, start]
        proc = run(args, checkout, check=False)
        if proc.returncode == 0:
            return
        reason, found = _reason(proc.stderr), None  # the retry reads the refs again
        # Undo what a failed add can leave behind (or a stale record of a deleted worktree
        # that made it refuse the path), so the retry starts clean.
        run(["worktree", "prune"], checkout, check=False)
        if registered(checkout, path) is None and os.path.lexists(path):
            _clear_leftover(checkout, path)
        if (
            not branch_existed
            and resolve(checkout, f"refs/heads/{branch}") is not None
            and not _checked_out(checkout, branch)
        ):
            run(["branch", "-D", branch], checkout, check=False)
    raise GitError(
        f"could not create worktree {path} on branch {branch} of {checkout}: {reason}; "
        "fix the cause and retry"
    )


class _SharedFetches:
    """Fetches of one base ref, shared by the callers that ask close together. A caller needs
    the base as the remote had it at most ``fresh`` seconds before it asked: a fetch that began
    since gives it that, whether it has ended or still runs. So a burst of starts on one
    repository (a pass's, or the passes' of a busy second) makes one fetch, not one each, and a
    rebase (``fresh`` 0) shares only a fetch that began after it asked. One fetch of a ref runs
    at a time; a caller that arrives while an older one runs waits for it to end and then
    fetches again."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._cond = threading.Condition()
        self._running: dict[tuple[str, str, str], float] = {}  # when the running fetch began
        self._ended: dict[tuple[str, str, str], float] = {}  # when the newest ended one began

    def fetch(self, checkout: str, remote: str, base: str, fresh: float) -> None:
        key = (os.path.realpath(checkout), remote, base)
        with self._cond:
            fresh_from = self._clock() - fresh
            while self._ended.get(key, -math.inf) < fresh_from:
                if key in self._running:
                    self._cond.wait()  # one runs: wait for it, then see whether it was fresh
                    continue
                began = self._running[key] = self._clock()
                break
            else:
                return
        try:
            _fetch(checkout, remote, base)
        finally:
            with self._cond:
                del self._running[key]
                self._ended[key] = max(self._ended.get(key, -math.inf), began)
                self._cond.notify_all()


_FETCHES = _SharedFetches()


def fetch_base(checkout: str, remote: str, base: str, *, fresh: float = 0.0) -> None:
    """Bring the remote-tracking base up to the remote's, not as this clone last saw it: a
    fetch that began at most ``fresh`` seconds before this call (by default after it), this
    one's or another caller's (``_SharedFetches``). New branches start from a base
    ``BASE_FRESH`` old at most. Best effort: an unreachable remote is reported by pre-flight."""
    _FETCHES.fetch(checkout, remote, base, fresh)


def _fetch(checkout: str, remote: str, base: str) -> None:
    run(
        [
            "fetch",
            "--quiet",
            "--no-tags",
            remote,
            f"+refs/heads/{base}:refs/remotes/{remote}/{base}",
        ],
        checkout,
        check=False,
        timeout=60.0,
    )


def remove_workspace(checkout: str, path: str) -> bool:
    """Remove the worktree at ``path`` (even if dirty); the branch stays. Idempotent."""
    with repo_lock(checkout):
        proc: subprocess.CompletedProcess[str] | None = None
        if os.path.isfile(os.path.join(path, ".git")):  # a linked worktree, as made: one process
            proc = run(["worktree", "remove", "--force", path], checkout, check=False)
            if proc.returncode == 0:
                return True
        removed = False
        if registered(checkout, path) is not None:
            if proc is None:  # git was not asked yet (it refuses the same way twice)
                proc = run(["worktree", "remove", "--force", path], checkout, check=False)
            if proc.returncode != 0 and os.path.isdir(path):
                raise GitError(
                    f"could not remove worktree {path} of {checkout}: {_reason(proc.stderr)}; "
                    "unlock it (git worktree unlock) or remove the directory by hand"
                )
            removed = True
        if os.path.lexists(path):
            _clear_leftover(checkout, path)
            removed = True
            run(["worktree", "prune"], checkout)  # the record of what we just deleted by hand
        return removed


def refs(checkout: str, patterns: list[str], *, check: bool = True) -> dict[str, str]:
    """Full ref name → commit for refs matching the ``for-each-ref`` patterns, in one call;
    without ``check``, none where git cannot read the repository."""
    if not patterns:
        return {}
    out = run(
        ["for-each-ref", "--format=%(objectname) %(refname)", "--", *patterns],
        checkout,
        check=check,
    ).stdout
    result: dict[str, str] = {}
    for line in out.splitlines():
        sha, _, name = line.partition(" ")
        if name and not name.endswith("/HEAD"):
            result[name] = sha
    return result


def commits_ahead(checkout: str, base: str, branch: str) -> int:
    """Commits reachable from ``branch`` but not from ``base`` (refs or shas)."""
    out = run(["rev-list", "--count", f"{base}..{branch}", "--"], checkout).stdout
    return int(out.strip())


def ahead_of_base(checkout: str, branch: str, base: str, remote: str) -> int | None:
    """Commits ``branch`` has over the task's base; None when either does not exist. One git
    process when both the branch and the remote-tracking base exist (every judged run asks)."""
    tracking = f"refs/remotes/{remote}/{base}"
    counted = run(
        ["rev-list", "--count", f"{tracking}..refs/heads/{branch}", "--"], checkout, check=False
    )
    if counted.returncode == 0:
        return int(counted.stdout.strip())
    found = start_refs(checkout, base, remote, branch)
    start = _base_in(found, base, remote)
    if f"refs/heads/{branch}" not in found or start is None:
        return None
    return commits_ahead(checkout, start[0], f"refs/heads/{branch}")


def status(workspace: str, limit: int = 50) -> list[str]:
    """``git status --porcelain`` lines of a worktree, at most ``limit``."""
    # Optional locks off: observing must not fight a running agent for index.lock.
    proc = run(["status", "--porcelain"], workspace, env={"GIT_OPTIONAL_LOCKS": "0"}, timeout=120.0)
    return proc.stdout.splitlines()[:limit]


def remote_url(checkout: str, remote: str) -> str:
    proc = run(["remote", "get-url", remote], checkout, check=False)
    if proc.returncode != 0:
        raise GitError(
            f"remote {remote!r} is not configured in {checkout}; add it with "
            f"git -C {checkout} remote add {remote} URL"
        )
    return proc.stdout.strip()


def push(checkout: str, remote: str, branch: str, force_with_lease: bool = False) -> str:
    """Push the local branch to the same name on ``remote``; returns the pushed commit."""
    sha = ref_commit(checkout, f"refs/heads/{branch}")
    if sha is None:
        raise GitError(
            f"branch {branch} does not exist in {checkout}; nothing to push (did the run commit?)"
        )
    args = ["push"]
    if force_with_lease:
        # The lease alone trusts the remote-tracking ref, which any fetch moves; with
        # --force-if-includes a commit someone else pushed is only replaced once the local
        # branch has seen it (git 2.30, the minimum pre-flight asks for).
        args += ["--force-with-lease", "--force-if-includes"]
    args += [remote, f"refs/heads/{branch}:refs/heads/{branch}"]
    proc = run(args, checkout, check=False)
    if proc.returncode != 0:
        text = proc.stderr
        if "[rejected]" in text or "non-fast-forward" in text or "stale info" in text:
            raise GitError(
                f"push of {branch} to {remote} was rejected: the remote branch has commits "
                "the task's branch has not seen (someone else pushed to it); nothing was "
                "overwritten. Integrate or drop those commits on the remote branch (or delete "
                "it to start over), then the next pass pushes again"
            )
        temporary = "Could not read from remote" in text or "unable to access" in text
        raise GitError(
            f"push of {branch} to {remote} from {checkout} failed: {_reason(text)}",
            temporary=temporary,
        )
    return sha


# ------------------------------------------------------------------------- pooled worktrees


def _sparse_checkout(path: str, sparse: list[str]) -> None:
    """Check out only the ``sparse`` directories (cone mode) of a worktree added without one."""
    run(["sparse-checkout", "set", "--cone", "--", *sparse], path)
    run(["reset", "--hard", "--quiet"], path)


def add_detached(checkout: str, path: str, start: str) -> None:
    """A new worktree at ``path`` with a detached HEAD at ``start`` and no file checked out yet
    (for the pool): what needs the repository's lock, and quick on any repository."""
    proc = run(["worktree", "add", "--no-checkout", "--detach", path, start], checkout, check=False)
    if proc.returncode != 0:
        run(["worktree", "prune"], checkout, check=False)
        if os.path.lexists(path):
            _clear_leftover(checkout, path)
        raise GitError(f"could not add pooled worktree {path}: {_reason(proc.stderr)}")


def check_out(path: str, sparse: list[str]) -> None:
    """The files of a worktree registered without them (``add_detached``, a start's
    ``_register``); only the ``sparse`` directories, when named. It touches that worktree's
    own index and files alone, so it needs no lock; the repository's post-checkout hook runs as
    a checkout runs it (its HEAD as both the old and the new one)."""
    if sparse:
        _sparse_checkout(path, sparse)
    else:
        run(["checkout", "--force", "--quiet"], path)


def clean_head(path: str) -> str | None:
    """The commit a worktree's HEAD is at when its files are that commit's, with nothing
    untracked (ignored files may be there); None when anything differs. One ``status`` that
    reads only: no index refresh is written (``--no-optional-locks``), so a worktree whose
    index was settled when it was made costs a stat of each file and directory."""
    args = ["--no-optional-locks", "status", "--porcelain=v2", "--branch", "--no-ahead-behind"]
    # untracked files shown whatever the user's configuration says
    proc = run([*args, "--untracked-files=normal"], path, check=False)
    head: str | None = None
    for line in proc.stdout.splitlines() if proc.returncode == 0 else ["failed"]:
        if not line.startswith("# "):
            return None  # a changed, unmerged or untracked file
        key, _, value = line[2:].partition(" ")
        if key == "branch.oid" and value != "(initial)":
            head = value
    return head


def settle_index(*paths: str) -> None:
    """Record in new worktrees' indexes the files' stat data, once the clock is past the second
    they were written in. Until then git cannot trust their times ("racily clean" entries) and
    every status reads their content again; after it, a status is a stat of each file. The
    worktrees wait for that second together, not one after another."""
    newest = 0.0
    for path in paths:
        index = run(["rev-parse", "--git-path", "index"], path).stdout.strip()
        newest = max(newest, os.stat(os.path.join(path, index)).st_mtime)
    wait = math.floor(newest) + 1 - time.time()
    if paths and wait > 0:
        time.sleep(wait + 0.01)
    for path in paths:
        run(["update-index", "-q", "--refresh"], path, check=False)


def claim(path: str, branch: str) -> None:
    """Put a clean pooled worktree on a new ``branch`` at its HEAD, in one git process. No file
    is touched and the index stays as it is (a switch that creates a branch where HEAD already
    is checks nothing out): only the branch ref is created (never overwriting one that exists)
    and HEAD pointed at it. No hook runs: the repository's post-checkout ran when the pool made
    the worktree, and no file changes here."""
    args = ["switch", "--quiet", "--no-track", "--no-recurse-submodules", "--create", branch]
    run(["-c", "core.hooksPath=/dev/null", *args], path)


def reset_detached(path: str, start: str) -> None:
    """Bring a pooled worktree to ``start`` (detached), with nothing git does not track left
    over (ignored files, e.g. installed dependencies, stay)."""
    # --force: tracked files back to the commit's content, whatever was done to them
    run(["checkout", "--quiet", "--force", "--detach", start], path)
    run(["clean", "-ffd", "--quiet"], path)


def repoint(path: str, branch: str, start: str) -> None:
    """Put a pooled worktree on a new ``branch`` at ``start``, with nothing git does not track
    left over (ignored files, e.g. installed dependencies, stay)."""
    # --force: tracked files back to the commit's content, whatever was done to them
    run(["checkout", "--quiet", "--force", "--no-track", "-B", branch, start], path)
    run(["clean", "-ffd", "--quiet"], path)


def move_worktree(checkout: str, source: str, target: str) -> None:
    proc = run(["worktree", "move", source, target], checkout, check=False)
    if proc.returncode != 0:
        raise GitError(f"could not move worktree {source} to {target}: {_reason(proc.stderr)}")


def drop_worktree(checkout: str, path: str, branch: str | None = None) -> None:
    """Remove a worktree that must not be used (and the branch it was given, if any)."""
    run(["worktree", "remove", "--force", path], checkout, check=False)
    if os.path.lexists(path):
        _clear_leftover(checkout, path)
    run(["worktree", "prune"], checkout, check=False)
    if branch is not None and not _checked_out(checkout, branch):
        run(["branch", "-D", branch], checkout, check=False)


# ------------------------------------------------------------------------- merging and rebasing

# Who commits what the reconciler itself writes (a rebased branch, a merge commit): the lane
# user's git configuration may name no one.
IDENTITY = {
    "GIT_AUTHOR_NAME": "reconciler",
    "GIT_AUTHOR_EMAIL": "reconciler@localhost",
    "GIT_COMMITTER_NAME": "reconciler",
    "GIT_COMMITTER_EMAIL": "reconciler@localhost",
}
MERGE_TREE_GIT = (2, 38)  # git merge-tree --write-tree


def is_ancestor(repo: str, older: str, newer: str) -> bool:
    """Whether commit ``older`` is reachable from ``newer``."""
    return run(["merge-base", "--is-ancestor", older, newer], repo, check=False).returncode == 0


@dataclass(frozen=True)
class TrialMerge:
    """What merging two commits gives, without a worktree: the merged tree (conflict markers
    where it conflicts) and the conflicting paths (none: it merges cleanly)."""

    tree: str
    conflicts: list[str]

    @property
    def clean(self) -> bool:
        return not self.conflicts


def merge_trees(repo: str, ours: str, theirs: str, *, keep: bool = False) -> TrialMerge:
    """Merge commit ``theirs`` into ``ours`` as ``git merge`` would, touching no worktree or
    ref (``git merge-tree --write-tree``, git 2.38). Without ``keep`` the objects it makes go to
    a throwaway object directory, so asking changes nothing in ``repo``; with it they stay, for
    a merge commit of that tree."""
    if version() < MERGE_TREE_GIT:
        raise GitError(
            "a trial merge needs git merge-tree --write-tree (git 2.38 or newer); upgrade git "
            "for the lane user"
        )
    args = ["merge-tree", "--write-tree", "--name-only", "--no-messages", ours, theirs]
    with contextlib.ExitStack() as stack:
        env = dict(IDENTITY)
        if not keep:
            objects = run(["rev-parse", "--path-format=absolute", "--git-path", "objects"], repo)
            scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="reconciler-merge-"))
            env["GIT_OBJECT_DIRECTORY"] = scratch
            env["GIT_ALTERNATE_OBJECT_DIRECTORIES"] = objects.stdout.strip()
        proc = run(args, repo, check=False, env=env)
    if proc.returncode not in (0, 1):
        raise GitError(f"git merge-tree failed in {repo}: {_reason(proc.stderr)}")
    # The tree, then (on a conflict) the conflicting paths, one per line.
    tree, *paths = proc.stdout.splitlines()
    return TrialMerge(tree.strip(), sorted({p for p in paths if p}))


REBASE_MARK = "reconciler-rebase.json"  # in a worktree's git directory while the node rebases it
REBASE_ENV = "RECONCILER_REBASING"  # carried by that rebase's git processes: the worktree's path
INTERRUPTED_WAIT = 60.0  # seconds an interrupted rebase's git processes have to end


@contextlib.contextmanager
def _rebasing(workspace: str) -> Iterator[dict[str, str]]:
    """Mark ``workspace`` as being rebased by this process for the block; yields the environment
    the rebase's git processes carry, so that they can be found by it.

    A mark found on the way in was left by a node that died mid-rebase (the reconciler killed
    during a pass). Its git process, orphaned, may still be rewriting the branch: that is waited
    for, then what it left unfinished (a rebase or merge in progress, HEAD detached) is aborted,
    which puts the branch and the uncommitted work back as they were. Only then does this
    rebase look at the worktree."""
    dirs = git_dirs_on_disk(workspace)
    if dirs is None:  # laid out otherwise: no mark, git alone judges
        yield {}
        return
    mark = os.path.join(dirs[0], REBASE_MARK)
    if os.path.lexists(mark):
        _finish_interrupted(workspace, dirs[0], mark)
    me = procs.fingerprint(os.getpid())
    write_json_atomic(mark, me.model_dump() if me is not None else {})
    try:
        yield {REBASE_ENV: workspace}
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(mark)


def _finish_interrupted(workspace: str, gitdir: str, mark: str) -> None:
    """Wait for the node that left ``mark`` and for the git processes of its rebase to end,
    then abort the rebase or merge they left in progress and remove the mark."""
    try:
        node: Fingerprint | None = Fingerprint.model_validate(read_json(mark))
    except ValueError:
        node = None  # the mark is written whole or not at all: an empty one names no process

    def ended() -> bool:
        if node is not None and node.pid != os.getpid() and procs.is_alive(node):
            return False
        return not procs.pids_with_env(REBASE_ENV, workspace)

    if not procs.wait_until(ended, INTERRUPTED_WAIT):
        raise GitError(
            f"the git processes of an interrupted rebase still run in {workspace} after "
            f"{INTERRUPTED_WAIT:.0f}s; the next pass looks again",
            temporary=True,
        )
    left = _in_progress(gitdir)
    if left:
        run([left, "--abort"], workspace, check=False)
    os.unlink(mark)


def _in_progress(gitdir: str | None) -> str:
    """``rebase`` or ``merge`` when one is in progress in the worktree whose git directory is
    ``gitdir``, else ''."""
    if gitdir is None:
        return ""
    if any(os.path.isdir(os.path.join(gitdir, d)) for d in ("rebase-merge", "rebase-apply")):
        return "rebase"
    return "merge" if os.path.isfile(os.path.join(gitdir, "MERGE_HEAD")) else ""


def diff(repo: str, base: str, head: str) -> str:
    """The changes of ``head`` since it left ``base``: ``git diff base...head``."""
    return run(["diff", "--no-color", "--no-ext-diff", f"{base}...{head}", "--"], repo).stdout


def rebase_on_base(
    checkout: str, workspace: str, branch: str, base: str, remote: str
) -> tuple[str, str, Literal["rebased", "merged", "current"]]:
    """Bring ``branch``, checked out in the worktree ``workspace``, up to date with ``base`` as
    the remote has it now: rebase it, or when the rebase stops on a conflict that the merge as
    a whole does not have, merge the base into it. Uncommitted changes are kept (stashed and
    put back). Returns (new head, base commit, how). A conflict leaves the worktree as it was and
    raises GitError naming the files: resolving it is the agent's work, not the reconciler's."""
    with _rebasing(workspace) as marked:
        return _rebase(checkout, workspace, branch, base, remote, marked=marked)


def _rebase(
    checkout: str, workspace: str, branch: str, base: str, remote: str, *, marked: dict[str, str]
) -> tuple[str, str, Literal["rebased", "merged", "current"]]:
    tree = registered(checkout, workspace)
    if tree is None or tree.prunable:
        raise GitError(
            f"the worktree {workspace} of {branch} is missing; prepare the workspace again"
        )
    if tree.branch != branch:
        left = _in_progress((git_dirs_on_disk(workspace) or (None,))[0])
        raise GitError(
            f"a {left} is in progress in the worktree {workspace}, not the reconciler's; finish "
            f"or abort it (git -C {workspace} {left} --abort), then the next pass rebases"
            if left
            else f"the worktree {workspace} is on {tree.branch or 'a detached HEAD'}, not "
            f"{branch}; nothing was rebased"
        )
    fetch_base(checkout, remote, base)
    ref = base_ref(checkout, base, remote)
    onto = resolve(checkout, ref) if ref is not None else None
    if ref is None or onto is None:
        raise GitError(f"base branch {base!r} of {checkout} was not found; nothing was rebased")
    head = resolve(checkout, f"refs/heads/{branch}")
    if head is None:
        raise GitError(f"branch {branch} does not exist in {checkout}; nothing was rebased")
    if is_ancestor(checkout, onto, head):
        return head, onto, "current"
    trial = merge_trees(checkout, head, onto)
    if not trial.clean:
        raise GitError(
            f"{branch} conflicts with {base} in {', '.join(trial.conflicts)}; nothing was "
            "rebased (the agent is asked to resolve it)"
        )
    # The reconciler rewrites the commits: it is their committer, their authors stay.
    committer = {k: v for k, v in IDENTITY.items() if k.startswith("GIT_COMMITTER")}
    how: Literal["rebased", "merged"] = "rebased"
    proc = run(
        ["rebase", "--autostash", "--no-autosquash", onto],
        workspace,
        check=False,
        env={**committer, **marked},
    )
    if proc.returncode != 0:
        run(["rebase", "--abort"], workspace, check=False, env=marked)
        how = "merged"
        message = f"Merge {base} into {branch}"
        proc = run(
            ["merge", "--autostash", "--no-edit", "-m", message, onto],
            workspace,
            check=False,
            env={**IDENTITY, **marked},
        )
        if proc.returncode != 0:
            run(["merge", "--abort"], workspace, check=False, env=marked)
            raise GitError(
                f"could not bring {branch} up to date with {base} in {workspace}: "
                f"{_reason(proc.stderr or proc.stdout)}; the worktree was left as it was"
            )
    new = resolve(checkout, f"refs/heads/{branch}")
    assert new is not None
    return new, onto, how
