"""Why the state directory cannot be used, as one sentence with the file and the fix.

SQLite and the operating system report a damaged database, a full disk or a permission problem as
error codes. ``raise_named`` turns those codes into ``StateError`` subclasses whose message names
the file, what is wrong with it and what to do, so that no user ever sees "database disk image is
malformed" with a traceback. Errors that are not about the file (a wrong SQL statement, a
constraint the code broke) are left alone: those are bugs and are reported as such.

Only reads metadata (``stat``, ``statvfs``, ``access``) of the files it names; never changes them.
This module must not import ``reconciler.node``, ``lanes``, ``plan``, ``apply``, ``observe`` or
``cli``.
"""

from __future__ import annotations

import errno
import os
import pwd
import sqlite3
from pathlib import Path
from typing import ClassVar

from reconciler.diskspace import free_bytes, space_left

# SQLite's primary result codes (the low byte of an extended code).
_PERM, _BUSY, _LOCKED, _READONLY, _IOERR, _CORRUPT = 3, 5, 6, 8, 10, 11
_FULL, _CANTOPEN, _AUTH, _NOTADB = 13, 14, 23, 26
NEARLY_FULL = 1 << 20  # below this, an I/O error is taken for a full disk


class StateError(Exception):
    """The state database cannot be used as asked (newer schema, read-only store, misuse).

    ``temporary``: the same command may succeed later without anyone repairing anything."""

    temporary: ClassVar[bool] = False


class StateDamaged(StateError):
    """The database file is not a database this reconciler can read: corrupt, truncated,
    overwritten, or something else in its place. Moving it aside rebuilds the state."""


class StateDenied(StateError):
    """The reconciler's user may not read or write the state directory or database, or the file
    system is mounted read-only."""


class StateFull(StateError):
    """A write to the state directory failed for lack of space."""

    temporary = True


class StateBusy(StateError):
    """Another program holds a lock on the database for longer than the reconciler waits."""

    temporary = True


def move_aside(db: Path, *, check: bool = True) -> str:
    """The fix for a damaged database: what to run and what it costs."""
    first = "Check it with `reconciler state check`; to go on, move" if check else "to go on, move"
    return (
        f"{first} it aside (mv {db} {db}.damaged) and run `reconciler apply`: the state is "
        "rebuilt from the lanes and forges without duplicate runs or PRs (its history is lost)"
    )


def damaged(db: Path, reason: str) -> StateDamaged:
    return StateDamaged(f"the state database {db} is damaged ({reason}). {move_aside(db)}")


def full(path: Path, what: str = "the state database") -> StateFull:
    return StateFull(
        f"{what} {path} cannot be written: no space left on the device "
        f"({space_left(str(path))}); free some space, then run again"
    )


def raise_named(
    exc: sqlite3.Error | OSError, path: Path, *, writing: bool, what: str = "the state database"
) -> None:
    """Raise the ``StateError`` that says what ``exc`` means for ``path`` (the database, or
    ``what`` else); return when ``exc`` is not about the file (the caller re-raises it as the
    bug it is)."""
    named = (
        _sqlite(exc, path, writing=writing)
        if isinstance(exc, sqlite3.Error)
        else _os(exc, path, writing=writing, what=what)
    )
    if named is not None:
        raise named from exc


def state_dir_problem(exc: OSError, state_dir: Path) -> StateError | None:
    """An ``OSError`` of some write into the state directory (or of any write that ran out of
    space), as a sentence; None when it is neither."""
    name = Path(os.fsdecode(exc.filename)) if exc.filename else None
    inside = name is not None and (name == state_dir or state_dir in name.parents)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        if name is None:  # a failed write() names no file: most likely one of the state's
            return full(state_dir, "a file in the state directory")
        return full(name, "the state directory file" if inside else "the file")
    if not inside or name is None:
        return None
    what = "the state directory" if name == state_dir else "the state directory file"
    return _os(exc, name, writing=True, what=what)


# ------------------------------------------------------------------------------- internals


def _sqlite(exc: sqlite3.Error, db: Path, *, writing: bool) -> StateError | None:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        return None
    primary = code & 0xFF
    reason = str(exc)
    if primary in (_CORRUPT, _NOTADB):
        return damaged(db, reason)
    if primary == _FULL:
        return full(db)
    if primary in (_BUSY, _LOCKED):
        return StateBusy(
            f"the state database {db} is locked by another program ({reason}); close whatever "
            "holds it open (an sqlite3 shell inside a transaction, a copy tool), then run again"
        )
    if os.path.isdir(db):
        return damaged(db, "a directory is in its place")
    if primary in (_PERM, _READONLY, _AUTH, _CANTOPEN):
        return _denied(db, writing=writing, reason=reason)
    if primary == _IOERR:
        # Readers write too: SQLite keeps a shared-memory file (-shm) beside a WAL database.
        free = free_bytes(str(db.parent))
        if free is not None and free < NEARLY_FULL:
            return full(db)
        return damaged(db, f"{reason}: it could not be read or written; check the disk")
    return None


def _os(
    exc: OSError, path: Path, *, writing: bool, what: str = "the state database"
) -> StateError | None:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return full(path, what)
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return _denied(path, writing=writing, reason=exc.strerror or str(exc), what=what)
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        # a file where the state directory (or one above it) should be
        for candidate in (path, *path.parents) if what == "the state directory" else path.parents:
            if candidate.exists() and not candidate.is_dir():
                return StateError(
                    f"{candidate} is not a directory, but the state directory is to be there "
                    "or below it; move it aside, or give another --state"
                )
    return None


def _denied(
    path: Path, *, writing: bool, reason: str, what: str = "the state database"
) -> StateError:
    if _read_only_fs(path):
        return StateDenied(
            f"{what} {path} cannot be written: its file system is mounted read-only; remount it "
            "read-write, or give a writable --state directory"
        )
    me = _user(os.geteuid())
    blocker = _blocker(path, writing=writing)
    try:
        st = blocker.stat()
        whose = f"it belongs to {_user(st.st_uid)} and is mode {st.st_mode & 0o7777:o}"
        owner = _user(st.st_uid)
    except OSError:
        whose, owner = "it cannot be examined", "its owner"
    if writing:  # the state belongs to whoever runs apply and run
        verb, fix = "written", f"or make {me} its owner (chown -R {me} {path.parent})"
    else:  # a reader of someone else's state: be that someone, rather than take it over
        verb, fix = "read", f"or let {me} read {blocker}"
    return StateDenied(
        f"{what} {path} cannot be {verb} by user {me} ({reason}: {blocker} is in the way; "
        f"{whose}); run the reconciler as {owner} (sudo -u {owner} reconciler …), {fix}"
    )


def _blocker(path: Path, *, writing: bool) -> Path:
    """The first directory on the way to ``path``, or ``path`` itself, that this user may not
    use as needed (SQLite creates ``-wal`` and ``-shm`` files beside a database it writes)."""
    for parent in reversed(path.parents):
        if parent.exists() and not os.access(parent, os.X_OK):
            return parent
    directory = path.parent
    if writing and not os.access(directory, os.W_OK | os.X_OK):
        return directory
    mode = os.W_OK | os.R_OK if writing else os.R_OK
    if os.path.lexists(path) and not os.access(path, mode):
        return path
    return directory if not os.access(directory, os.R_OK | os.X_OK) else path


def _read_only_fs(path: Path) -> bool:
    for candidate in (path, *path.parents):
        try:
            return bool(os.statvfs(candidate).f_flag & os.ST_RDONLY)
        except OSError:
            continue
    return False


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


__all__ = [
    "StateBusy",
    "StateDamaged",
    "StateDenied",
    "StateError",
    "StateFull",
    "damaged",
    "full",
    "move_aside",
    "raise_named",
    "state_dir_problem",
]
