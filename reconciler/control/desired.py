"""Desired state from the control repo, with on-disk caches keyed by git object ids.

Two caches in ``<state>/cache/``: ``manifests.pickle`` maps each manifest's blob id to its
parsed documents, so a load after a commit parses only the files that changed (it still lists
the files, runs the cross-file checks and resolves prompt files); ``desired.pickle`` holds the
whole desired state of the last commit loaded, keyed by the commit's root tree id, so a pass
over an unchanged tree (the common case: a daemon, cron) does none of that. Both are written
atomically, only when they changed, and one that cannot be read is ignored (rebuilt, never
trusted). They are pickles, so they must live in the reconciler's own state directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import importlib.util
import os
import pickle
import sys
import tempfile
from pathlib import Path
from typing import Any

import pydantic

from reconciler.control.repo import WORKTREE_REVISION, ControlError, ControlRepo
from reconciler.manifests.loader import LaneCheck, gc_paused, load
from reconciler.manifests.models import Desired
from reconciler.trust import private_file

CACHE_FILE = Path("cache") / "manifests.pickle"
DESIRED_FILE = Path("cache") / "desired.pickle"

# The last cache read or written per path, with the file's identity: a long-running
# reconciler does not unpickle its own cache again on every pass.
_memo: dict[Path, tuple[tuple[int, int, int], dict[str, Any]]] = {}


def forget_memory() -> None:
    """Forget the caches this process read or wrote: the next load reads them from disk, as a
    new process would (``make bench`` times one-shot commands in-process)."""
    _memo.clear()


def load_desired(
    control: ControlRepo,
    state_dir: Path | None,
    worktree: bool = False,
    rev: str | None = None,
    lane_check: LaneCheck | None = None,
) -> Desired:
    """Load and check every manifest of ``control`` (at HEAD, or on disk with ``worktree``).

    ``lane_check`` adds each lane's policy problems as manifest errors (``validate``); a load with
    it neither reads nor writes the cache of whole desired states.

    Raises :class:`~reconciler.manifests.errors.ManifestErrors` for invalid manifests and
    :class:`ControlError` when the repository cannot be read. ``state_dir`` None: no cache.
    """
    if control.kind == "directory" and not worktree:
        raise ControlError(
            f"{control.location} is not a git repository: only its working tree can be "
            "validated; commit it to a git repository to plan or apply"
        )
    rev = WORKTREE_REVISION if worktree else (rev or control.revision())
    path = state_dir / CACHE_FILE if state_dir is not None else None
    whole = (
        state_dir / DESIRED_FILE
        if state_dir is not None and not worktree and lane_check is None
        else None
    )
    tree = control.tree(rev) if whole is not None else None
    if whole is not None and tree is not None:
        cached = _read_cache(whole).get(tree)
        if isinstance(cached, Desired):
            return dataclasses.replace(cached, revision=rev)
    with gc_paused():  # many small long-lived objects: collections would only cost time
        files = control.files(worktree, rev=None if worktree else rev)
        read = control.reader(worktree, rev=None if worktree else rev)
        entries = _read_cache(path) if path is not None else {}
        work = dict(entries)
        try:
            desired = load(files, read, rev, work, lane_check)
            if whole is not None and tree is not None:
                _write_cache(whole, {tree: desired})
            return desired
        finally:
            close = getattr(read, "close", None)
            if close is not None:
                close()
            if path is not None:
                kept = {f.blob: work[f.blob] for f in files if f.blob in work}
                if kept.keys() != entries.keys():
                    _write_cache(path, kept)


@functools.cache
def _fingerprint() -> str:
    """Changes whenever the cached objects could mean something else: code or library versions.
    Every module of ``reconciler.manifests`` counts (parsing, safety limits, cross-file checks,
    the models), whatever the package is split into, and ``durations``."""
    digest = hashlib.sha256()
    digest.update(f"{sys.version_info[:2]}|{pydantic.VERSION}".encode())
    package = importlib.util.find_spec("reconciler.manifests")
    where = package.submodule_search_locations if package is not None else None
    sources = sorted(Path(p) for d in (where or []) for p in Path(d).glob("*.py"))
    durations = importlib.util.find_spec("reconciler.durations")
    if durations is not None and durations.origin:
        sources.append(Path(durations.origin))
    for source in sources:
        digest.update(source.name.encode())
        try:
            digest.update(source.read_bytes())
        except OSError:
            digest.update(b"unreadable")
    return digest.hexdigest()


def _identity(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        st = path.stat()
    except OSError:
        return {}
    memo = _memo.get(path)
    if memo is not None and memo[0] == _identity(st):
        return memo[1]
    try:
        with gc_paused(), path.open("rb") as f:
            if not private_file(f.fileno()):
                return {}  # written by someone else: never unpickled, rebuilt instead
            data = pickle.load(f)  # noqa: S301 - our own file in our own state directory
    except Exception:  # a damaged cache is rebuilt, whatever the damage
        return {}
    if not isinstance(data, dict) or data.get("format") != _fingerprint():
        return {}
    entries = data.get("entries")
    if not isinstance(entries, dict):
        return {}
    _memo[path] = (_identity(st), entries)
    return entries


def _write_cache(path: Path, entries: dict[str, Any]) -> None:
    tmp = ""
    try:
        path.parent.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # the state dir
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".manifests.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            pickle.dump({"format": _fingerprint(), "entries": entries}, f, pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)
        tmp = ""
        _memo[path] = (_identity(path.stat()), entries)
    except OSError:
        pass  # a cache that cannot be written only costs time on the next load
    finally:
        if tmp:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
