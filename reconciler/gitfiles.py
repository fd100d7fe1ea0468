"""A repository's refs, worktree list and HEAD, read from its files as git reads them.

The node observes each checkout every pass (its worktrees, its task branches and their
remote-tracking twins) and the reconciler reads its control repository's HEAD every pass: as
git processes, most of a lane's observation and a part of every pass. Here the same answers
are read from the files git itself reads for them (gitrepository-layout, the files backend),
the way git reads them:

- **Refs** (``git for-each-ref``): the loose refs first, then ``packed-refs`` (a ref packed
  meanwhile is then still seen), a loose ref standing over a packed one; lock files skipped.
  A loose ref's contents are kept by the file's identity (inode, size, times, mode), as git's
  index keeps a file's: git replaces a ref by renaming a new file over it, and any other write
  touches it. The one change identity cannot show is a second write within the timestamp
  granularity of the first, so contents read while the file was younger than ``RACY_NS`` are
  never trusted again (git's own "racy" rule): such a file is read every time. What is kept is
  each listed directory's refs as last listed, so it is as large as what exists; a ref named
  alone is read every time.
- **Worktrees** (``git worktree list``): the main worktree, then each linked one in path
  order, from its administrative files (``gitdir``, ``HEAD``, ``locked``); prunable when not
  locked and its ``gitdir`` names nothing that exists; its head read as a ref above.
- **HEAD** (``git rev-parse HEAD``): the branch it names, read as a ref above, or the commit
  it holds.

Whatever is laid out otherwise — reftable, a symbolic or symlinked ref, contents or names git
would call broken, a bare or relative layout, a pattern with other wildcards than a trailing
``*`` — raises :class:`Unreadable`: the caller asks git, which says what it is. Read-only:
nothing here writes to a repository, and no lock is taken. Standard library only; knows
nothing of lanes or the control plane.
"""

from __future__ import annotations

import os
import re
import stat
import threading
import time
from typing import Any

from reconciler.protocol import Worktree

__all__ = [
    "RACY_NS",
    "Unreadable",
    "forget",
    "git_dirs_on_disk",
    "head_commit",
    "identity",
    "read_refs",
    "read_worktrees",
    "settled",
]

# A file changed this recently may change again within its timestamp's granularity without a
# visible difference (git's own "racy" case): contents read then are not kept. Two seconds
# covers the coarsest file systems' times and a little clock skew of a network file system.
RACY_NS = 2_000_000_000
_KEPT = 4096  # directories, packed-refs files and pattern sets kept at most, each

_OBJECT_NAME = re.compile(rb"[0-9a-f]{40}(?:[0-9a-f]{24})?\n")
# What git's check_refname_format refuses, in one component: control characters, space and
# ~^:?*[\, a leading dot, "..", "@{", and a ".lock" ending. Such a name is for git to judge.
_BAD_COMPONENT = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|^\.|\.\.|@\{|\.lock$|^$")
_WILDCARDS = "*?[\\"

_Identity = tuple[int, int, int, int, int]
_Loose = dict[str, tuple[_Identity, str]]  # path → (identity, object name), as last listed
_Matcher = tuple[str, str, bool]  # (directory to list, what a name starts with, below it too)
# What is kept is what exists: the loose refs of each directory listed (each listing replaces
# its directory's), each repository's packed-refs, and which of those some wildcard patterns
# match; never more than _KEPT of each kind (past that, all of that kind go).
_dirs: dict[tuple[str, str], _Loose] = {}  # (common directory, ref directory) → its refs
_packs: dict[str, tuple[_Identity, dict[str, str]]] = {}  # common directory → packed-refs
_matched: dict[tuple[str, tuple[_Matcher, ...]], tuple[dict[str, str], dict[str, str]]] = {}
_lock = threading.Lock()


class Unreadable(Exception):
    """The repository is laid out in a way this reader does not cover: ask git."""


def read_refs(checkout: str, patterns: list[str]) -> dict[str, str]:
    """What ``git for-each-ref PATTERNS`` answers in ``checkout``: full name → commit for the
    refs the patterns match (a name up to a slash, or one trailing ``*`` that matches no
    slash), but the ``HEAD``s among them."""
    _git_dir, common, _config = _layout(checkout)
    matchers = [_matcher(p) for p in patterns]
    found: dict[str, str] = {}
    for scope, recursive in sorted({(m[0], m[2]) for m in matchers}):
        group = [m for m in matchers if (m[0], m[2]) == (scope, recursive)]
        found.update(_loose_refs(common, _valid(scope), recursive, group))
    packed = _packed_matching(common, matchers)
    return {**packed, **found}  # a loose ref stands over its packed line


def head_commit(repository: str) -> str:
    """The commit ``HEAD`` names in ``repository`` (a checkout or a bare repository)."""
    _git_dir, common, _config = _layout(repository)
    return _head(common, _read(os.path.join(common, "HEAD")))[1]


def forget() -> None:
    """Drop every kept content (tests; a process that knows the repositories changed
    wholesale)."""
    with _lock:
        _dirs.clear()
        _packs.clear()
        _matched.clear()


def git_dirs_on_disk(top: str) -> tuple[str, str] | None:
    """``top``'s git directory and the repository's (gitrepository-layout: a ``.git``
    directory, or a ``.git`` file naming a worktree's directory whose ``commondir`` names the
    repository's); None when ``top`` is laid out any other way."""
    dot_git = os.path.join(top, ".git")
    try:
        gitdir = dot_git if os.path.isdir(dot_git) else _gitfile_target(top, dot_git)
        if gitdir is None:
            return None
        try:
            with open(os.path.join(gitdir, "commondir"), encoding="utf-8") as f:
                common = os.path.join(gitdir, f.read().strip())
        except FileNotFoundError:
            common = gitdir  # no commondir: the directory is the repository's own
    except (OSError, UnicodeDecodeError):
        return None
    common = os.path.normpath(common)
    return (gitdir, common) if os.path.isfile(os.path.join(common, "HEAD")) else None


def _gitfile_target(top: str, dot_git: str) -> str | None:
    with open(dot_git, encoding="utf-8") as f:
        key, _, value = f.read().strip().partition(": ")
    return os.path.join(top, value) if key == "gitdir" and value else None


# --------------------------------------------------------------------------------- reading


def identity(st: os.stat_result) -> _Identity:
    """A file's identity as this module keeps it: inode, size, times, mode."""
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode)


def settled(st: os.stat_result, read_at: int) -> bool:
    """Whether the file was last changed before the racy window that ends at ``read_at``:
    only then may what was read stand for the file while its identity stays."""
    return max(st.st_mtime_ns, st.st_ctime_ns) < read_at - RACY_NS


def _keep(table: dict[Any, Any], key: object, value: object) -> None:
    with _lock:
        if key not in table and len(table) >= _KEPT:
            table.clear()
        table[key] = value


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except (FileNotFoundError, NotADirectoryError):
        return None


def _object_name(data: bytes) -> str:
    if not _OBJECT_NAME.fullmatch(data):
        raise Unreadable  # "ref: …", or what git would warn about and skip
    return data[:-1].decode("ascii")


def _loose(path: str) -> str | None:
    """The object name a loose ref file holds, read now; None when it is gone (deleted since
    it was listed, as though it had not been); ``Unreadable`` for a symbolic ref or broken
    contents."""
    data = _read(path)
    return None if data is None else _object_name(data)


def _packed(common: str) -> dict[str, str]:
    """``packed-refs`` as full name → commit (peeled lines left out), kept by its identity."""
    path = os.path.join(common, "packed-refs")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return {}
    with _lock:
        known = _packs.get(common)
    if known is not None and known[0] == identity(st):
        return known[1]
    read_at = time.time_ns()
    data = _read(path)
    if data is None:
        return {}
    found = _packed_lines(data)
    if settled(st, read_at):
        _keep(_packs, common, (identity(st), found))
    return found


def _packed_lines(data: bytes) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in data.split(b"\n"):
        if not line or line.startswith(b"^") or (line.startswith(b"#") and not found):
            continue
        sha, _, name = line.partition(b" ")
        if not name.startswith(b"refs/"):
            raise Unreadable
        found[name.decode("utf-8", "surrogateescape")] = _object_name(sha + b"\n")
    return found


def _layout(checkout: str) -> tuple[str, str, bytes]:
    """(git directory, common directory, its config in lower case) of ``checkout`` as git would
    find them: a ``.git`` directory or file, or a bare repository; ``Unreadable`` for anything
    else, and for a repository whose config names another refs backend."""
    found = git_dirs_on_disk(checkout)
    if found is None:
        if os.path.lexists(os.path.join(checkout, ".git")):
            raise Unreadable
        if not all(
            os.path.isdir(os.path.join(checkout, d)) for d in ("refs", "objects")
        ) or not os.path.isfile(os.path.join(checkout, "HEAD")):
            raise Unreadable
        found = (checkout, checkout)
    common = found[1]
    if os.path.lexists(os.path.join(common, "reftable")):
        raise Unreadable  # the reftable backend: its tables are not files of refs
    config = (_read(os.path.join(common, "config")) or b"").lower()
    if b"refstorage" in config:
        raise Unreadable  # extensions.refStorage names a backend other than these files
    return found[0], common, config


def _valid(name: str) -> str:
    """``name`` if git would take every component of it as part of a ref name."""
    if any(_BAD_COMPONENT.search(part) for part in name.split("/")):
        raise Unreadable
    return name


# ------------------------------------------------------------------------------------ refs


def _loose_refs(
    common: str, scope: str, recursive: bool, matchers: list[_Matcher]
) -> dict[str, str]:
    """The loose refs under ``scope`` the matchers match, each read again only when its file
    is not the one last listed there, or was read while it was younger than the racy window."""
    listing = _listed(common, scope, recursive)
    if listing is None:
        return {}
    directory, entries = listing
    with _lock:
        known = _dirs.get((common, scope), {}) if directory else {}
    kept: _Loose = {}
    found: dict[str, str] = {}
    for name, path, st in entries:
        if name.endswith("/HEAD") or not any(_matches(m, name) for m in matchers):
            continue
        seen = identity(st)
        before = known.get(path)
        if before is not None and before[0] == seen:
            kept[path] = before
            found[name] = before[1]
            continue
        read_at = time.time_ns()
        sha = _loose(path)
        if sha is None:
            continue
        if settled(st, read_at):
            kept[path] = (seen, sha)
        found[name] = sha
    if directory:  # a ref file named alone is read every time: no name is kept for good
        _keep(_dirs, (common, scope), kept)
    return found


def _packed_matching(common: str, matchers: list[_Matcher]) -> dict[str, str]:
    """The packed refs the matchers match; for wildcard patterns (an observation's), the match
    is kept beside the packed-refs it was taken from."""
    every = _packed(common)
    key = (common, tuple(matchers))
    wildcards = not any(below for _scope, _prefix, below in matchers)
    with _lock:
        known = _matched.get(key) if wildcards else None
    if known is not None and known[0] is every:
        return known[1]
    found = {
        n: s
        for n, s in every.items()
        if any(_matches(m, n) for m in matchers) and not n.endswith("/HEAD")
    }
    if wildcards:
        _keep(_matched, key, (every, found))
    return found


def _matcher(pattern: str) -> _Matcher:
    """How git matches ``pattern`` (ref-filter's match_name_as_path): a name without wildcards
    matches itself and the refs below it; ``prefix*`` matches the names that begin with
    ``prefix`` and have no slash after it."""
    if not pattern.startswith("refs/") or ".." in pattern.split("/"):
        raise Unreadable
    wild = [i for i, c in enumerate(pattern) if c in _WILDCARDS]
    if not wild:
        literal = pattern.rstrip("/")
        return literal, literal, True
    if wild != [len(pattern) - 1] or pattern[-1] != "*":
        raise Unreadable
    prefix = pattern[:-1]
    return prefix.rsplit("/", 1)[0], prefix, False


def _matches(matcher: _Matcher, name: str) -> bool:
    _scope, prefix, below = matcher
    if below:
        return name == prefix or name.startswith(prefix + "/")
    return name.startswith(prefix) and "/" not in name[len(prefix) :]


def _listed(
    common: str, scope: str, recursive: bool
) -> tuple[bool, list[tuple[str, str, os.stat_result]]] | None:
    """The loose ref files in ``scope`` (and below it when ``recursive``; a literal pattern's
    scope may be a ref file itself): whether ``scope`` is a directory, and each file's name,
    path and identity, lock files left out; None when there is nothing there."""
    path = os.path.join(common, scope)
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    if stat.S_ISLNK(st.st_mode):
        raise Unreadable  # a symlinked ref or directory: git follows it
    if stat.S_ISREG(st.st_mode):
        return (False, [(scope, path, st)]) if recursive else None
    found: list[tuple[str, str, os.stat_result]] = []
    _walk(path, scope, recursive, found)
    return True, found


def _walk(
    path: str, scope: str, recursive: bool, into: list[tuple[str, str, os.stat_result]]
) -> None:
    try:
        entries = list(os.scandir(path))
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        if entry.name.endswith(".lock"):
            continue  # a ref being written: git's iteration skips it too
        if _BAD_COMPONENT.search(entry.name):
            raise Unreadable  # ``scope`` is valid: the name is, with this
        name = f"{scope}/{entry.name}"
        if entry.is_symlink():
            raise Unreadable
        if entry.is_dir(follow_symlinks=False):
            if recursive:
                _walk(entry.path, name, True, into)
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue  # deleted since the listing: gone, as git would find it
        into.append((name, entry.path, st))


def _resolve(common: str, ref: str) -> str | None:
    """The commit a branch ``ref`` names (loose, else packed); None when it has none."""
    path = os.path.join(common, _valid(ref))
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        st = None
    if st is not None:
        if not stat.S_ISREG(st.st_mode):
            raise Unreadable
        sha = _loose(path)
        if sha is not None:
            return sha
    return _packed(common).get(ref)


# ------------------------------------------------------------------------------- worktrees


def read_worktrees(checkout: str) -> list[Worktree]:
    """What ``git worktree list`` answers in ``checkout``: every worktree, the main one first."""
    git_dir, common, config = _layout(checkout)
    real = os.path.realpath(common)
    if git_dir != common or os.path.basename(real) != ".git":
        raise Unreadable  # bare, or a repository kept apart from its worktree
    if re.search(rb"(?m)^\s*(bare\s*=\s*true|worktree\s*=)", config):
        raise Unreadable  # core.bare or core.worktree: git places the main worktree itself
    main = _worktree(common, os.path.dirname(real), _read(os.path.join(common, "HEAD")))
    linked: list[Worktree] = []
    admin_root = os.path.join(common, "worktrees")
    try:
        entries = list(os.scandir(admin_root))
    except (FileNotFoundError, NotADirectoryError):
        entries = []
    for entry in entries:
        if entry.is_symlink():
            raise Unreadable
        if not entry.is_dir(follow_symlinks=False):
            continue  # git reads no worktree from it
        found = _linked(common, entry.path)
        if found is not None:
            linked.append(found)
    return [main, *sorted(linked, key=lambda wt: wt.path)]


def _linked(common: str, admin: str) -> Worktree | None:
    """A linked worktree from its administrative directory; None where git lists none (no
    ``gitdir``, or an empty one)."""
    gitdir = _read(os.path.join(admin, "gitdir"))
    if gitdir is None:
        return None
    named = gitdir.rstrip().decode("utf-8", "surrogateescape")
    if not named:
        return None
    if not os.path.isabs(named):
        raise Unreadable  # a relative path: where git resolves it from depends on its version
    path = named.removesuffix("/.git")
    prunable = not os.path.exists(os.path.join(admin, "locked")) and not os.path.exists(named)
    return _worktree(common, path, _read(os.path.join(admin, "HEAD")), prunable)


def _worktree(common: str, path: str, head: bytes | None, prunable: bool = False) -> Worktree:
    """A worktree at ``path`` whose ``HEAD`` file holds ``head``."""
    branch, sha = _head(common, head)
    return Worktree(path=path, branch=branch, head=sha, prunable=prunable)


def _head(common: str, head: bytes | None) -> tuple[str | None, str]:
    """The branch (short name; None when detached) and commit a ``HEAD`` file's contents name."""
    if head is not None and head.startswith(b"ref: refs/heads/") and head.endswith(b"\n"):
        ref = head[5:-1].decode("utf-8", "surrogateescape")
        sha = _resolve(common, ref)
        if sha is None:
            raise Unreadable  # an unborn branch: git names it with a null commit
        return ref.removeprefix("refs/heads/"), sha
    if head is not None and _OBJECT_NAME.fullmatch(head):
        return None, head[:-1].decode("ascii")
    raise Unreadable
