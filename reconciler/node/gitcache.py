"""A repository's refs and worktree list, read with git once per change.

Every pass observes every lane, and an observation lists each checkout's worktrees and branch
heads: two git processes per repository, the bulk of an unchanged lane's cost (twenty lanes
every few seconds, most of them idle). Here the answer git gave is kept beside a digest of the
files git read for it (gitrepository-layout, the files backend), and given again while those
files read as they did.

- The digest holds each file's identity (inode, size, times), as git's index does, and the
  contents of the few small files that name others (``HEAD``s, ``gitdir``s, ``config``). Any
  write to a file replaces or touches it; the one change identity cannot show is a second
  write within the timestamp granularity of the first, so a digest that saw a change younger
  than ``RACY_NS`` vouches for nothing, and git answers (git's own "racy" rule).
- An answer is kept only when the digest taken after git ran equals the one taken before it,
  so it is git's answer for that state, not for one it passed through.
- A repository laid out any other way (reftable, a symlinked ref, more than ``MAX_FILES``
  files to look at) is never kept: git answers every time.

Read-only: nothing here writes to a repository.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from reconciler.node import git as gitops
from reconciler.protocol import Worktree

__all__ = ["BUSY_SECONDS", "MAX_FILES", "RACY_NS", "forget", "refs", "worktrees"]

MAX_FILES = 4096  # files one digest reads at most; past that git answers every time
# A file changed this recently may change again within its timestamp's granularity without a
# visible difference (git's own "racy" case): then git answers. Two seconds covers the
# coarsest file systems' times and a little clock skew of a network file system.
RACY_NS = 2_000_000_000
# After a digest saw such a change, git answers alone for this long: a repository that busy
# (a pass's starts and pushes) would change again before the next pass, and its digest (a stat
# of every ref) would be paid on top of git's answer every time.
BUSY_SECONDS = 5.0
_OBJECT_NAME_SIZES = (41, 65)  # a loose ref holding a SHA-1 or SHA-256 name and a newline
_KEPT = 512  # answers kept at most (a few per checkout); past that all are forgotten

T = TypeVar("T")

_Seen = tuple[tuple[object, ...], ...]  # what a digest saw, in order
_answers: dict[tuple[str, ...], tuple[_Seen, object]] = {}
_busy: dict[tuple[str, ...], float] = {}  # when a digest last saw a racy change, by question
_lock = threading.Lock()


class _Unkept(Exception):
    """The repository is laid out in a way this digest does not cover: ask git."""


def refs(checkout: str, patterns: list[str]) -> dict[str, str]:
    """:func:`reconciler.node.git.refs`, from the last answer while the refs read the same."""
    found = _remembered(
        ("refs", checkout, *patterns),
        lambda: _refs_digest(checkout, patterns),
        lambda: gitops.refs(checkout, patterns),
    )
    return dict(found)


def worktrees(checkout: str) -> list[Worktree]:
    """:func:`reconciler.node.git.list_worktrees`, from the last answer while the worktree
    list's files (and the refs its HEADs name) read the same."""
    found = _remembered(
        ("worktrees", checkout),
        lambda: _worktrees_digest(checkout),
        lambda: gitops.list_worktrees(checkout),
    )
    return [wt.model_copy() for wt in found]


def forget() -> None:
    """Drop every kept answer (tests; a process that knows the repositories changed wholesale)."""
    with _lock:
        _answers.clear()
        _busy.clear()


def _remembered(
    key: tuple[str, ...], digest: Callable[[], _Seen | None], ask: Callable[[], T]
) -> T:
    now = time.monotonic()
    with _lock:
        busy = now - _busy.get(key, -BUSY_SECONDS) < BUSY_SECONDS
    if busy:
        return ask()  # it changes all the time: a digest would only add to git's cost
    try:
        before = digest()
    except (_Unkept, OSError):  # laid out otherwise, or unreadable: git says what it is
        return ask()
    if before is None:  # something changed a moment ago: git's answer alone is sure
        with _lock:
            if len(_busy) >= _KEPT:
                _busy.clear()
            _busy[key] = now
        return ask()
    with _lock:
        kept = _answers.get(key)
    if kept is not None and kept[0] == before:
        return kept[1]  # type: ignore[return-value]  # stored by this key's own ``ask``
    answer = ask()
    try:
        after = digest()
    except (_Unkept, OSError):
        return answer
    if after == before:
        with _lock:
            if len(_answers) >= _KEPT:
                _answers.clear()
            _answers[key] = (before, answer)
    return answer


# ---------------------------------------------------------------------------------- digests


class _Digest:
    """What a digest has seen: names, file identities (inode, size, times, mode) and a few
    contents; and whether any of it changed too recently to be told from a change to come
    (``racy``). Kept as the plain values: comparing them costs less than hashing them."""

    def __init__(self) -> None:
        self._parts: list[tuple[object, ...]] = []
        self._recent = time.time_ns() - RACY_NS
        self.racy = False

    def add(self, label: str, data: bytes | None) -> None:
        if len(self._parts) >= MAX_FILES:
            raise _Unkept
        self._parts.append((label, data))

    def add_stat(self, label: str, st: os.stat_result | None) -> None:
        """A file or directory by identity: any write replaces or touches it, which changes
        its inode, size or times, unless it lands within the file system's timestamp
        granularity of the one seen, hence ``racy``."""
        if st is None:
            self.add(label, None)
            return
        if len(self._parts) >= MAX_FILES:
            raise _Unkept
        mtime, ctime = st.st_mtime_ns, st.st_ctime_ns
        if mtime >= self._recent or ctime >= self._recent:
            self.racy = True
        self._parts.append((label, st.st_ino, st.st_size, mtime, ctime, st.st_mode))

    def digest(self) -> tuple[tuple[object, ...], ...] | None:
        """What was seen, or None when it is racy (it cannot vouch for an answer)."""
        return None if self.racy else tuple(self._parts)


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _read(path: str) -> bytes | None:
    """A file's bytes; None when there is none (or it is a directory: nothing git reads)."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None


def _layout(checkout: str) -> tuple[str, str]:
    """(git directory, common directory) of ``checkout`` as git would find them: a ``.git``
    directory or file, or a bare repository; ``_Unkept`` for anything else."""
    found = gitops.git_dirs_on_disk(checkout)
    if found is None:
        if os.path.lexists(os.path.join(checkout, ".git")):
            raise _Unkept
        if not all(
            os.path.isdir(os.path.join(checkout, d)) for d in ("refs", "objects")
        ) or not os.path.isfile(os.path.join(checkout, "HEAD")):
            raise _Unkept
        found = (checkout, checkout)
    _git_dir, common = found
    if os.path.lexists(os.path.join(common, "reftable")):
        raise _Unkept  # the reftable backend: its tables are not files of refs
    return found


def _config(common: str, into: _Digest) -> None:
    """The repository's config (it names the refs backend), and its ``packed-refs``."""
    config = _read(os.path.join(common, "config"))
    if config is not None and b"refstorage" in config.lower():
        raise _Unkept  # extensions.refStorage names a backend other than these files
    into.add("config", config)
    into.add_stat("packed-refs", _lstat(os.path.join(common, "packed-refs")))


def _walk(root: str, rel: str, into: _Digest) -> Iterator[tuple[str, bytes]]:
    """Every directory and file under ``root/rel`` into the digest by identity;
    yields the files that are symbolic refs, by name, with their contents (a loose ref of
    another size than an object name's is read to know)."""
    into.add_stat(rel + "/", _lstat(os.path.join(root, rel)))
    try:
        entries = list(os.scandir(os.path.join(root, rel)))  # unsorted: another order misses
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        name = f"{rel}/{entry.name}"
        if entry.is_symlink():
            raise _Unkept  # a symlinked ref: git follows it, the digest would not
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(root, name, into)
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:  # deleted since the listing: it is changing right now
            into.racy = True
            continue
        into.add_stat(name, st)
        if st.st_size not in _OBJECT_NAME_SIZES:
            data = _read(entry.path)
            if data is not None and data.startswith(b"ref:"):
                yield name, data


def _symbolic(common: str, data: bytes, into: _Digest) -> None:
    """What a symbolic ref names, into the digest (one level: deeper is for git)."""
    target = data[4:].strip().decode("utf-8", "surrogateescape")
    if not target.startswith("refs/") or ".." in target.split("/"):
        raise _Unkept
    path = os.path.join(common, target)
    st = _lstat(path)
    into.add_stat(target, st)
    if st is not None and st.st_size not in _OBJECT_NAME_SIZES:
        content = _read(path)
        if content is not None and content.startswith(b"ref:"):
            raise _Unkept


def _scope(pattern: str) -> str:
    """The directory under which every ref ``pattern`` matches lives: its part before the
    first wildcard, up to the last slash (``refs/heads/agent/*`` → ``refs/heads/agent``; a
    plain name matches itself and the refs below it: its parent's directory)."""
    cut = min((i for i, c in enumerate(pattern) if c in "*?[\\"), default=len(pattern))
    head = pattern[:cut]
    scope = head.rsplit("/", 1)[0] if "/" in head else ""
    if not scope.startswith("refs") or ".." in scope.split("/"):
        raise _Unkept
    return scope


def _refs_digest(checkout: str, patterns: list[str]) -> _Seen | None:
    _git_dir, common = _layout(checkout)
    into = _Digest()
    _config(common, into)
    for scope in sorted({_scope(p) for p in patterns}):
        for name, data in _walk(common, scope, into):
            if not name.endswith("/HEAD"):  # HEADs are left out of the answer
                _symbolic(common, data, into)
    return into.digest()


def _worktrees_digest(checkout: str) -> _Seen | None:
    """The files ``git worktree list`` reads: the main HEAD, each linked worktree's admin
    files (``gitdir``, ``HEAD``, ``locked``), whether the worktree it names is still there
    (else it is prunable), and the refs every HEAD points to."""
    _git_dir, common = _layout(checkout)
    into = _Digest()
    _config(common, into)
    heads = [_read(os.path.join(common, "HEAD"))]
    into.add("HEAD", heads[0])
    admin_root = os.path.join(common, "worktrees")
    try:
        ids = sorted(os.listdir(admin_root))
    except (FileNotFoundError, NotADirectoryError):
        ids = []
    into.add("worktrees/", "\0".join(ids).encode("utf-8", "surrogateescape"))
    for wt_id in ids:
        admin = os.path.join(admin_root, wt_id)
        try:
            names = sorted(os.listdir(admin))
        except (FileNotFoundError, NotADirectoryError):
            into.add(f"worktrees/{wt_id}/", None)
            continue
        into.add(f"worktrees/{wt_id}/", "\0".join(names).encode("utf-8", "surrogateescape"))
        for name in ("gitdir", "HEAD", "locked"):
            data = _read(os.path.join(admin, name))
            into.add(f"worktrees/{wt_id}/{name}", data)
            if name == "HEAD":
                heads.append(data)
            elif name == "gitdir" and data is not None:  # absolute, or relative to the admin
                named = os.path.join(admin, data.strip().decode("utf-8", "surrogateescape"))
                there = os.path.lexists(named)
                into.add(f"worktrees/{wt_id}/gitdir exists", b"1" if there else b"0")
    for head in heads:
        if head is not None and head.startswith(b"ref:"):
            _symbolic(common, head, into)
    return into.digest()
