"""The health of the state: is the database intact and ours, is its directory fit to hold it.

``check`` examines ``<state>/state.db`` read-only (SQLite's integrity check, the schema version
against this reconciler's, the columns, the serial and the row counts) and says what is wrong
and what to do; ``check_dir`` looks at the directory (free space, writable, not writable by
others). Both only read: they never repair, move or create anything. This module must not import
``reconciler.node``, ``lanes``, ``plan``, ``apply``, ``observe`` or ``cli``.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from reconciler.diskspace import free_bytes, human_bytes, space_left
from reconciler.state.damage import StateDamaged, StateError, move_aside, raise_named
from reconciler.state.store import (
    DB_FILE,
    SCHEMA_VERSION,
    STATE_ID,
    _connect,
    _exists,
    _schema_problems,
    _user_version,
)

MIN_FREE = 100 * 1024 * 1024  # room for the database, its WAL and the manifest cache to grow
_SHOWN = 10  # integrity problems listed; SQLite can report thousands

Verdict = Literal["healthy", "missing", "damaged", "unusable"]


@dataclass(frozen=True)
class Health:
    """What ``check`` found. ``problems`` are sentences; ``fix`` says what to do about them."""

    path: Path
    verdict: Verdict
    problems: tuple[str, ...] = ()
    fix: str = ""
    notes: tuple[str, ...] = ()  # worth knowing, not wrong (an older schema, a stray WAL)
    schema_version: int | None = None
    serial: int | None = None
    counts: dict[str, int] = field(default_factory=dict)  # tasks, runs, events
    size: int = 0  # bytes of the database and its WAL
    state_id: str | None = None  # the identity the lanes this state owns record

    @property
    def ok(self) -> bool:
        return self.verdict in ("healthy", "missing")


def check(state_dir: Path, *, thorough: bool = True) -> Health:
    """Examine the state database read-only; safe while a writer works. ``thorough``: SQLite's
    full ``integrity_check`` (every index against its table), else the faster ``quick_check``."""
    path = Path(state_dir) / DB_FILE
    try:
        present = _exists(path)
    except StateError as exc:
        return Health(path, "unusable", problems=(str(exc),))
    if not present:
        notes: tuple[str, ...] = ()
        if os.path.lexists(f"{path}-wal"):
            notes = (f"{path}-wal is left over from a database that is no longer there",)
        return Health(path, "missing", notes=notes)
    size = sum(_size(f"{path}{suffix}") for suffix in ("", "-wal"))
    conn: sqlite3.Connection | None = None
    try:
        conn = _connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        return _examine(conn, path, size, thorough)
    except sqlite3.Error as exc:
        try:
            raise_named(exc, path, writing=False)
        except StateDamaged:
            pass
        except StateError as named:  # not the file's fault: permissions, a full disk, a lock
            return Health(path, "unusable", problems=(str(named),), size=size)
        return _damaged(path, size, (str(exc),))
    finally:
        if conn is not None:
            conn.close()


def _examine(conn: sqlite3.Connection, path: Path, size: int, thorough: bool) -> Health:
    version = _user_version(conn)
    if version > SCHEMA_VERSION:
        return Health(
            path,
            "unusable",
            problems=(
                f"its schema version {version} is newer than this reconciler's ({SCHEMA_VERSION})",
            ),
            fix="upgrade reconciler to the version that wrote it",
            schema_version=version,
            size=size,
        )
    pragma = "integrity_check" if thorough else "quick_check"
    found = [
        line
        for row in conn.execute(f"PRAGMA {pragma}(100)")
        for line in str(row[0]).splitlines()
        if line != "ok" and not line.startswith("*** in database")
    ]
    problems = found[:_SHOWN]
    if len(found) > _SHOWN:
        problems.append(f"… and {len(found) - _SHOWN} more")
    notes: list[str] = []
    if version == 0:
        notes.append("it was created but never initialised: the next apply does that")
    elif version < SCHEMA_VERSION:
        notes.append(
            f"schema version {version} is older than this reconciler's ({SCHEMA_VERSION}); "
            "the next `reconciler apply` migrates it"
        )
    else:
        problems += _schema_problems(conn)
    if problems:
        return _damaged(path, size, tuple(problems), version)
    if version == 0:
        return Health(path, "healthy", notes=tuple(notes), schema_version=0, size=size)
    dangling = conn.execute("PRAGMA foreign_key_check").fetchall()
    if dangling:
        problems.append(f"{len(dangling)} rows refer to tasks that are not there")
    if problems:
        return _damaged(path, size, tuple(problems), version)
    serial = int(conn.execute("SELECT value FROM serial WHERE id = 1").fetchone()[0])
    counts = {
        table: int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # noqa: S608
        for table in ("tasks", "runs", "events")
    }
    found_id = conn.execute("SELECT value FROM meta WHERE key = ?", (STATE_ID,)).fetchone()
    return Health(
        path,
        "healthy",
        notes=tuple(notes),
        schema_version=version,
        serial=serial,
        counts=counts,
        size=size,
        state_id=str(found_id[0]) if found_id else None,
    )


def _damaged(
    path: Path, size: int, problems: tuple[str, ...], version: int | None = None
) -> Health:
    return Health(
        path,
        "damaged",
        problems=problems,
        fix=move_aside(path, check=False),
        schema_version=version,
        size=size,
    )


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


@dataclass(frozen=True)
class DirCheck:
    """One finding about the state directory, as ``doctor`` shows it."""

    name: str
    ok: bool
    detail: str
    fix: str = ""


def check_dir(state_dir: Path, min_free: int = MIN_FREE) -> DirCheck:
    """Whether ``state_dir`` can hold the state: room to grow, writable by this user, and private
    (a directory others can write is refused by every command before this runs)."""
    state_dir = Path(state_dir)
    problems: list[str] = []
    fixes: list[str] = []
    where = str(state_dir)
    if state_dir.exists() and not state_dir.is_dir():
        return DirCheck(
            "state-dir",
            False,
            f"{state_dir} exists but is not a directory",
            "move it aside or give another --state",
        )
    if state_dir.is_dir():
        st = state_dir.stat()
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:  # (writable by others is refused outright: reconciler.trust)
            problems.append(
                f"{state_dir} is mode {mode:o}: other users can read its database, whose events "
                "quote what agents printed"
            )
            fixes.append(f"chmod 700 {state_dir}")
        if not os.access(state_dir, os.W_OK | os.X_OK):
            problems.append(f"{state_dir} is not writable by this user")
            fixes.append("run the reconciler as the directory's owner, or chown it")
        shown = f"{state_dir} (mode {mode:o})"
    else:
        parent = Path(os.path.dirname(where))
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not os.access(parent, os.W_OK | os.X_OK):
            problems.append(f"{state_dir} does not exist and cannot be created in {parent}")
            fixes.append(f"create it (mkdir -m 700 {state_dir}) as the reconciler's user")
        shown = f"{state_dir} (not created yet)"
    free = free_bytes(where)
    if free is not None and free < min_free:
        problems.append(
            f"only {space_left(where)}; the state needs room to grow (at least "
            f"{human_bytes(min_free)})"
        )
        fixes.append("free some space there, or move the state directory")
    if problems:
        return DirCheck("state-dir", False, "; ".join(problems) + ".", "; ".join(fixes))
    return DirCheck("state-dir", True, f"{shown}: writable, {space_left(where)}.")
