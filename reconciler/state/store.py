"""The state database: the reconciler holding the state lock is the only writer of state.

SQLite in WAL mode at ``<state_dir>/state.db``. Rows are frozen dataclasses (a run's is the one run
model, ``reconciler.record.Run``, that observation and apply share); the mapping between
rows and dataclasses is derived once from ``dataclasses.fields`` (``_Table``), so the columns are
spelt out only in the schema DDL (checked against the dataclasses when a writer opens the store).

Every write happens inside ``with store.transaction() as tx:`` (``BEGIN IMMEDIATE``). When the
block exits normally the transaction commits and the ``serial`` goes up by exactly one if and only
if at least one row actually changed: upserts and updates carry a ``WHERE … IS NOT …`` guard, so
rewriting identical values changes nothing. An exception rolls everything back and propagates.

Readers (``status``, ``describe``, ``plan``) use ``Store.open_readonly``, which never blocks on or
disturbs the writer; a missing database reads as empty. Each read method is one query; use
``with store.snapshot():`` to make several reads see one consistent moment.

The state is an inspectable cache of history; the world stays the authority. Its free text
(event messages, meta values, a run's failures) quotes agents, lanes and git, so the write API
masks anything shaped like a credential in it (``reconciler.redact``) before it is stored. This
module must not import ``reconciler.node``, ``lanes``, ``plan``, ``apply``, ``observe`` or ``cli``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import operator
import os
import secrets
import sqlite3
import threading
import time
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

from reconciler import safefile
from reconciler.record import Run
from reconciler.redact import redact
from reconciler.state.damage import StateError, damaged, raise_named
from reconciler.state.histories import HistoryRow, HistoryRows, Version

DB_FILE = "state.db"


# --------------------------------------------------------------------------------------- rows


# meta: the control revision the last pass applied (the last good one: it loaded)
LAST_REVISION = "last_revision"
# meta: this state's identity, random, made with the database; the lanes it owns record it
STATE_ID = "state_id"
# meta: when notifying began (sinks configured); absent: what is so now is not news yet
NOTIFY_SINCE = "notify_since"


@dataclass(frozen=True)
class TaskRow:
    """One task the reconciler knows of (also after it left the manifests)."""

    name: str
    lane: str
    repo: str
    first_seen: float
    done: bool = False
    done_generation: str | None = None
    pr_number: int | None = None  # the PR it opened or adopted (the forge stays the authority)
    generation: str | None = None
    # the task's last action that failed for a reason that does not pass by itself (a PR the
    # forge refuses, a push rejected): its kind, its message, when, and how many times in a row
    failed_action: str | None = None
    failed_message: str | None = None
    failed_at: float | None = None
    failed_count: int = 0


@dataclass(frozen=True)
class SpendRow:
    """What a lane's settled runs started in one UTC hour (``hour``: its first second) spent."""

    lane: str
    hour: int
    cost_usd: float
    tokens: int


@dataclass(frozen=True)
class EventRow:
    """One entry of the append-only event log."""

    id: int
    at: float
    task: str | None
    kind: str
    message: str
    revision: str | None


# ------------------------------------------------------------------------------------- schema

# MIGRATIONS[i] takes the database from user_version i to i + 1. Never edit a released entry;
# append a new one (and bump the dataclasses) instead.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE tasks (
        name            TEXT PRIMARY KEY,
        lane            TEXT NOT NULL,
        repo            TEXT NOT NULL,
        first_seen      REAL NOT NULL,
        done            INTEGER NOT NULL DEFAULT 0,
        done_generation TEXT,
        pr_number       INTEGER,
        pr_url          TEXT,
        pr_intent       INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL,
        removed_at      REAL,
        generation      TEXT
    );
    CREATE TABLE runs (
        task          TEXT NOT NULL REFERENCES tasks(name) ON DELETE CASCADE,
        attempt       INTEGER NOT NULL,
        iteration     INTEGER NOT NULL,
        generation    TEXT NOT NULL,
        lane          TEXT NOT NULL,
        repo          TEXT NOT NULL,
        run_dir       TEXT NOT NULL,
        started_at    REAL NOT NULL,
        ended_at      REAL,
        exit_code     INTEGER,
        signal        INTEGER,
        outcome       TEXT CHECK (outcome IN ('succeeded','failed','crashed','stalled','stopped')),
        mark          TEXT CHECK (mark IN ('crashed','stalled','stopped')),
        marked_at     REAL,
        session_id    TEXT,
        cost_usd      REAL,
        input_tokens  INTEGER,
        output_tokens INTEGER,
        pid           INTEGER,
        boot_id       TEXT,
        start_time    INTEGER,
        failures      TEXT,
        PRIMARY KEY (task, attempt, iteration)
    ) WITHOUT ROWID;
    CREATE TABLE events (
        id       INTEGER PRIMARY KEY AUTOINCREMENT,
        at       REAL NOT NULL,
        task     TEXT,
        kind     TEXT NOT NULL,
        message  TEXT NOT NULL,
        revision TEXT
    );
    CREATE INDEX events_by_task ON events (task, id);
    CREATE TRIGGER events_no_update BEFORE UPDATE ON events
        BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
    CREATE TRIGGER events_no_delete BEFORE DELETE ON events
        BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
    CREATE TABLE serial (
        id    INTEGER PRIMARY KEY CHECK (id = 1),
        value INTEGER NOT NULL
    );
    INSERT INTO serial (id, value) VALUES (1, 0);
    """,
    """
    ALTER TABLE runs ADD COLUMN progress_offset INTEGER;
    ALTER TABLE runs ADD COLUMN progress_at REAL;
    """,
    """
    ALTER TABLE runs ADD COLUMN turns INTEGER;
    ALTER TABLE runs ADD COLUMN tool_calls INTEGER;
    """,
    """
    ALTER TABLE tasks ADD COLUMN failed_action TEXT;
    ALTER TABLE tasks ADD COLUMN failed_message TEXT;
    ALTER TABLE tasks ADD COLUMN failed_at REAL;
    ALTER TABLE tasks ADD COLUMN failed_count INTEGER NOT NULL DEFAULT 0;
    """,
    # Columns nothing read go: pr_url, pr_intent, next_attempt_at, removed_at. (The table is
    # rebuilt, as SQLite before 3.35 cannot drop a column; migrations run with foreign keys off,
    # so dropping the old table does not cascade to the runs.)
    """
    CREATE TABLE tasks_v5 (
        name            TEXT PRIMARY KEY,
        lane            TEXT NOT NULL,
        repo            TEXT NOT NULL,
        first_seen      REAL NOT NULL,
        done            INTEGER NOT NULL DEFAULT 0,
        done_generation TEXT,
        pr_number       INTEGER,
        generation      TEXT,
        failed_action   TEXT,
        failed_message  TEXT,
        failed_at       REAL,
        failed_count    INTEGER NOT NULL DEFAULT 0
    );
    INSERT INTO tasks_v5
        SELECT name, lane, repo, first_seen, done, done_generation, pr_number, generation,
               failed_action, failed_message, failed_at, failed_count
        FROM tasks;
    DROP TABLE tasks;
    ALTER TABLE tasks_v5 RENAME TO tasks;
    """,
    # What `run` last notified per subject (a task; ``lane:NAME``; ``:control``) and transition,
    # and which occurrence of it: a restart compares the world against it, so it neither sends
    # everything again nor misses what happened while it was down.
    """
    CREATE TABLE notified (
        subject    TEXT NOT NULL,
        transition TEXT NOT NULL,
        occurrence TEXT NOT NULL,
        at         REAL NOT NULL,
        PRIMARY KEY (subject, transition)
    ) WITHOUT ROWID;
    """,
    # A run over for good and of an earlier generation is settled: its row stays, and its
    # figures are added once to its task's history (what a pass needs of it: how many runs,
    # the last, their spend) and to its lane's spend by hour (the daily budget's). A pass then
    # reads the open runs, the histories and today's hours, not every run ever made.
    """
    ALTER TABLE runs ADD COLUMN settled INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX runs_open ON runs (task, attempt, iteration) WHERE settled = 0;
    CREATE INDEX runs_kept ON runs (started_at) WHERE settled = 1 AND run_dir != '';
    CREATE TABLE run_history (
        task      TEXT NOT NULL REFERENCES tasks(name) ON DELETE CASCADE,
        lane      TEXT NOT NULL,
        repo      TEXT NOT NULL,
        runs      INTEGER NOT NULL,
        attempt   INTEGER NOT NULL,
        iteration INTEGER NOT NULL,
        cost_usd  REAL NOT NULL,
        tokens    INTEGER NOT NULL,
        PRIMARY KEY (task, lane, repo)
    ) WITHOUT ROWID;
    CREATE TABLE lane_spend (
        lane     TEXT NOT NULL,
        hour     INTEGER NOT NULL,
        cost_usd REAL NOT NULL,
        tokens   INTEGER NOT NULL,
        PRIMARY KEY (lane, hour)
    ) WITHOUT ROWID;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


R = TypeVar("R")


class _Table(Generic[R]):
    """Row <-> dataclass mapping for one table, derived from ``dataclasses.fields``."""

    def __init__(self, name: str, cls: type[R], key: Sequence[str]) -> None:
        self.name = name
        self.cls = cls
        hints = typing.get_type_hints(cls)
        fields = dataclasses.fields(cls)  # type: ignore[arg-type]
        self.columns: tuple[str, ...] = tuple(f.name for f in fields)
        self.key: tuple[str, ...] = tuple(key)
        self.mutable: frozenset[str] = frozenset(self.columns) - frozenset(self.key)
        self._getter = operator.attrgetter(*self.columns)
        self._new = object.__new__
        self._bool_columns = tuple(
            f.name for f in fields if bool in (typing.get_args(hints[f.name]) or (hints[f.name],))
        )
        cols = ", ".join(self.columns)
        # Identifiers below come from dataclass fields, never from callers: S608 does not apply.
        self.select = f"SELECT {cols} FROM {name}"  # noqa: S608
        others = [c for c in self.columns if c not in self.key]
        self.upsert = (
            f"INSERT INTO {name} ({cols}) VALUES ({', '.join('?' * len(self.columns))}) "  # noqa: S608
            f"ON CONFLICT ({', '.join(self.key)}) DO UPDATE SET "
            + ", ".join(f"{c} = excluded.{c}" for c in others)
            + " WHERE "
            + " OR ".join(f"{name}.{c} IS NOT excluded.{c}" for c in others)
        )
        self.where_key = " AND ".join(f"{c} = ?" for c in self.key)

    def values(self, row: R) -> tuple[Any, ...]:
        if type(row) is not self.cls:
            raise TypeError(f"expected {self.cls.__name__}, got {type(row).__name__}")
        return tuple(self._getter(row))

    def load(self, raw: Sequence[Any]) -> R:
        # Rows come from our own schema, column for field: fill the frozen instance directly
        # rather than through its __init__ (a frozen __init__ costs a setattr per field, which
        # dominates reading 10,000 rows), then make SQLite's integers of boolean fields bools.
        row = self._new(self.cls)
        fields = row.__dict__
        fields.update(zip(self.columns, raw, strict=True))
        for name in self._bool_columns:
            if fields[name] is not None:
                fields[name] = bool(fields[name])
        return row

    def check_fields(self, fields: dict[str, object]) -> None:
        unknown = sorted(set(fields) - self.mutable)
        if unknown:
            what = "key field" if set(unknown) & set(self.key) else "unexpected field"
            raise TypeError(
                f"{self.name}: cannot update {what}(s) {', '.join(unknown)}; "
                f"updatable: {', '.join(c for c in self.columns if c in self.mutable)}"
            )


_TASKS = _Table("tasks", TaskRow, ("name",))
_RUNS = _Table("runs", Run, ("task", "attempt", "iteration"))
_EVENTS = _Table("events", EventRow, ("id",))
_HISTORY = _Table("run_history", HistoryRow, ("task", "lane", "repo"))
# The writer's log of what changed, kept by triggers in the connection's own temporary database:
# written in the same transaction as the change, undone with it. ``tasks``: a task row added,
# changed or removed; ``history``: a task's history rows (also by the task's removal, or its
# record moving, which may change the history's owner). ``Store.tasks`` and ``Store.histories``
# read it to bring what they keep up to date row by row, instead of reading every row again.
_CHANGE_LOG = (
    "CREATE TEMP TABLE change_log"
    " (id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, name TEXT NOT NULL)",
    "CREATE TEMP TRIGGER task_added AFTER INSERT ON main.tasks"
    " BEGIN INSERT INTO change_log (kind, name) VALUES ('tasks', NEW.name); END",
    "CREATE TEMP TRIGGER task_changed AFTER UPDATE ON main.tasks BEGIN"
    " INSERT INTO change_log (kind, name) VALUES ('tasks', OLD.name), ('tasks', NEW.name);"
    " INSERT INTO change_log (kind, name) SELECT 'history', NEW.name"
    " WHERE OLD.lane IS NOT NEW.lane OR OLD.repo IS NOT NEW.repo; END",
    "CREATE TEMP TRIGGER task_removed AFTER DELETE ON main.tasks"
    " BEGIN INSERT INTO change_log (kind, name) VALUES ('tasks', OLD.name); END",
    "CREATE TEMP TRIGGER history_added AFTER INSERT ON main.run_history"
    " BEGIN INSERT INTO change_log (kind, name) VALUES ('history', NEW.task); END",
    "CREATE TEMP TRIGGER history_changed AFTER UPDATE ON main.run_history BEGIN"
    " INSERT INTO change_log (kind, name) VALUES ('history', OLD.task), ('history', NEW.task);"
    " END",
    "CREATE TEMP TRIGGER history_removed AFTER DELETE ON main.run_history"
    " BEGIN INSERT INTO change_log (kind, name) VALUES ('history', OLD.task); END",
)
_LOGGED_SINCE = "SELECT id, kind, name FROM temp.change_log WHERE id > ? ORDER BY id"
_LOG_END = "SELECT COALESCE(MAX(id), 0) FROM temp.change_log"
_LOG_TAKEN = "DELETE FROM temp.change_log WHERE id <= ?"
_SPEND = _Table("lane_spend", SpendRow, ("lane", "hour"))
_RUN_FAILURES = _RUNS.columns.index("failures")


# Settling a run: mark it, then add its figures to its task's history and to its lane's spend
# in the hour it started (and let go of hours older than two days).
_SETTLE = (
    "UPDATE runs SET settled = 1 WHERE task = ? AND attempt = ? AND iteration = ? AND settled = 0"
)
_RUN_EXISTS = "SELECT 1 FROM runs WHERE task = ? AND attempt = ? AND iteration = ?"
_FOLD = (
    "INSERT INTO run_history (task, lane, repo, runs, attempt, iteration, cost_usd, tokens)"
    " SELECT task, lane, repo, 1, attempt, iteration, COALESCE(cost_usd, 0.0),"
    " COALESCE(input_tokens, 0) + COALESCE(output_tokens, 0)"
    " FROM runs WHERE task = ? AND attempt = ? AND iteration = ?"
    " ON CONFLICT (task, lane, repo) DO UPDATE SET runs = runs + 1,"
    " cost_usd = cost_usd + excluded.cost_usd, tokens = tokens + excluded.tokens,"
    " attempt = MAX(attempt, excluded.attempt),"
    " iteration = CASE WHEN (excluded.attempt, excluded.iteration) > (attempt, iteration)"
    " THEN excluded.iteration ELSE iteration END",
    "INSERT INTO lane_spend (lane, hour, cost_usd, tokens)"
    " SELECT lane, CAST(started_at / 3600 AS INTEGER) * 3600, COALESCE(cost_usd, 0.0),"
    " COALESCE(input_tokens, 0) + COALESCE(output_tokens, 0)"
    " FROM runs WHERE task = ? AND attempt = ? AND iteration = ?"
    " ON CONFLICT (lane, hour) DO UPDATE SET cost_usd = cost_usd + excluded.cost_usd,"
    " tokens = tokens + excluded.tokens",
    "DELETE FROM lane_spend WHERE hour < (SELECT started_at - 2 * 86400"
    " FROM runs WHERE task = ? AND attempt = ? AND iteration = ?)",
)


# -------------------------------------------------------------------------------------- store


class Store:
    """The state database. Construct with ``Store.open`` (writer) or ``Store.open_readonly``."""

    def __init__(self, conn: sqlite3.Connection, path: Path, *, readonly: bool) -> None:
        self._conn = conn
        self.path = path
        self.readonly = readonly
        self._mutex = threading.RLock()
        self._tx: Transaction | None = None
        # what a read-only store's tasks() and histories() read, with the key it was read at
        self._kept: dict[str, tuple[tuple[int, int], Any]] = {}
        # the writer's: the data_version and the last entry of the change log its rows include
        # (see _logged), then its tasks and histories
        self._logged_at: tuple[int, int] | None = None
        self._tasks: Version[TaskRow] = Version({})
        self._histories = HistoryRows({})

    # ---------------------------------------------------------------------------- opening

    @classmethod
    def open(cls, state_dir: Path) -> Store:
        """Open (creating the 0700 directory and database, migrating the schema) for writing.

        The caller is expected to hold the ``StateLock``: the lock, not SQLite, is what makes
        this process the only writer of state.
        """
        state_dir = Path(state_dir)
        path = state_dir / DB_FILE
        conn: sqlite3.Connection | None = None
        try:
            state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            _may_write(path)
            conn = _connect(str(path), uri=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            _migrate(conn, path)
            _check_columns(conn, path)
            for statement in _CHANGE_LOG:
                conn.execute(statement)
        except BaseException as exc:
            if conn is not None:
                conn.close()
            if isinstance(exc, sqlite3.Error | OSError):
                raise_named(exc, path, writing=True)
            raise
        return cls(conn, path, readonly=False)

    @classmethod
    def open_readonly(cls, state_dir: Path) -> Store:
        """Open for reading only; safe while a writer holds the lock. No database reads as empty."""
        path = Path(state_dir) / DB_FILE
        conn: sqlite3.Connection | None = None
        if _exists(path):
            try:
                conn = _connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
                version = _user_version(conn)
                if version > SCHEMA_VERSION:
                    raise _too_new(path, version)
                if 0 < version < SCHEMA_VERSION:
                    raise StateError(
                        f"{path} has schema version {version}, older than this reconciler's "
                        f"{SCHEMA_VERSION}; run `reconciler apply` once to migrate it"
                    )
                if version == 0:  # created but not yet initialised by a writer: read as empty
                    conn.close()
                    conn = None
            except BaseException as exc:
                if conn is not None:
                    conn.close()
                if isinstance(exc, sqlite3.Error | OSError):
                    raise_named(exc, path, writing=False)
                raise
        if conn is None:
            conn = _connect(":memory:", uri=False)
            _migrate(conn, None)
            conn.execute("PRAGMA query_only=ON")
        return cls(conn, path, readonly=True)

    def close(self) -> None:
        with self._mutex:
            if self._tx is not None:
                raise StateError("cannot close the state store inside a transaction")
            self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------------------ reads

    def _query(self, sql: str, params: Sequence[object] = ()) -> list[Any]:
        with self._mutex:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise_named(exc, self.path, writing=not self.readonly)
                raise

    def last_event_id(self) -> int:
        """The id of the newest event (0 with none): what a watcher compares."""
        return int(self._query("SELECT COALESCE(MAX(id), 0) FROM events")[0][0])

    def serial(self) -> int:
        """Goes up by one with every committed transaction that changed something."""
        return int(self._query("SELECT value FROM serial WHERE id = 1")[0][0])

    def tasks(self) -> dict[str, TaskRow]:
        """All tasks by name (a fresh dict each call; the rows are immutable)."""
        return dict(self.task_rows())

    def task_rows(self) -> Mapping[str, TaskRow]:
        """All tasks by name: the same object while they stay as they were, else the writer's
        next version of it (``Version.patched``), so that what is made of them can be kept with
        them. Kept between calls; see ``_logged``."""
        if self.readonly:
            rows: dict[str, TaskRow] = self._read_kept("tasks", self._all_tasks)
            return rows
        with self._mutex:
            self._logged()
            return self._tasks

    def histories(self) -> HistoryRows:
        """Every task's settled runs, summed per lane and repository, by task: the same object
        while they stay as they were, else the next version of it (``HistoryRows.patched``), so
        that what is made of them can be kept with them. A pass reads one for every task ever
        done. Kept between calls; see ``_logged``."""
        if self.readonly:
            kept: HistoryRows = self._read_kept("histories", self._all_histories)
            return kept
        with self._mutex:
            self._logged()
            return self._histories

    def _logged(self) -> None:
        """Bring the writer's tasks and histories up to date: read whole the first time, after
        another connection's commit (SQLite's ``data_version``) and after a rollback; else only
        the rows of the tasks the change log (``_CHANGE_LOG``) names since the last call. A pass
        over 100,000 tasks then reads the few that changed, not 100,000 rows after each write."""
        version = self._data_version()
        if self._logged_at is None or self._logged_at[0] != version:
            end = int(self._query(_LOG_END)[0][0])
            self._tasks = Version(self._all_tasks())
            self._histories = self._all_histories()
            self._logged_at = (version, end)
            return
        logged = self._query(_LOGGED_SINCE, (self._logged_at[1],))
        if not logged:
            return
        self._logged_at = (version, int(logged[-1][0]))
        names: dict[str, set[str]] = {"tasks": set(), "history": set()}
        for _id, kind, name in logged:
            names[str(kind)].add(str(name))
        if names["tasks"]:
            changed = sorted(names["tasks"])
            fresh = {row.name: row for row in self._rows_of(_TASKS, "name", changed)}
            self._tasks = self._tasks.patched(changed, fresh)
        if names["history"]:
            changed = sorted(names["history"])
            rows = HistoryRows.by_task(self._rows_of(_HISTORY, "task", changed))
            self._histories = self._histories.patched(changed, rows)

    def _all_tasks(self) -> dict[str, TaskRow]:
        load = _TASKS.load
        return {r[0]: load(r) for r in self._query(_TASKS.select)}

    def _all_histories(self) -> HistoryRows:
        load = _HISTORY.load
        return HistoryRows.of(load(r) for r in self._query(_HISTORY.select))

    def _rows_of(self, table: _Table[R], column: str, names: Sequence[str]) -> list[R]:
        """``table``'s rows whose ``column`` is one of ``names``."""
        rows: list[R] = []
        for start in range(0, len(names), 500):  # within SQLite's limit of bound values
            chunk = names[start : start + 500]
            where = f"{table.select} WHERE {column} IN ({', '.join('?' * len(chunk))})"
            rows += (table.load(r) for r in self._query(where, tuple(chunk)))
        return rows

    def _read_kept(self, name: str, read: Callable[[], Any]) -> Any:
        """What ``read`` answers, kept until the database changes (a read-only store's tasks
        and histories): this connection's ``total_changes`` tracks its own writes (a rollback
        drops what is kept) and ``PRAGMA data_version`` other connections' commits. The key is
        read before the rows, so a racing commit can only cause a needless re-read."""
        with self._mutex:
            key = (self._conn.total_changes, self._data_version())
            kept = self._kept.get(name)
            if kept is None or kept[0] != key:
                kept = self._kept[name] = (key, read())
            return kept[1]

    def _data_version(self) -> int:
        return int(self._query("PRAGMA data_version")[0][0])

    def task(self, name: str) -> TaskRow | None:
        rows = self._query(f"{_TASKS.select} WHERE name = ?", (name,))
        return _TASKS.load(rows[0]) if rows else None

    def runs(self, task: str | None = None) -> list[Run]:
        """Runs sorted by (task, attempt, iteration), optionally of one task only."""
        order = " ORDER BY task, attempt, iteration"
        if task is None:
            rows = self._query(_RUNS.select + order)
        else:
            rows = self._query(f"{_RUNS.select} WHERE task = ?{order}", (task,))
        return [_RUNS.load(r) for r in rows]

    def open_runs(self) -> list[Run]:
        """The runs not settled (``Transaction.settle_run``), sorted by (task, attempt,
        iteration): what a pass reads of the runs, however many were made before."""
        rows = self._query(f"{_RUNS.select} WHERE settled = 0 ORDER BY task, attempt, iteration")
        return [_RUNS.load(r) for r in rows]

    def lane_spend(self, since: float) -> list[SpendRow]:
        """What settled runs started since ``since`` spent, per lane and hour."""
        rows = self._query(f"{_SPEND.select} WHERE hour >= ?", (since,))
        return [_SPEND.load(r) for r in rows]

    def expired_runs(self, before: float, limit: int) -> list[Run]:
        """Up to ``limit`` settled runs started before ``before`` whose directories are still
        kept (``run_dir`` not emptied by a prune), oldest first; never a run of the generation
        its task is done for (a task's current generation keeps its runs' directories)."""
        rows = self._query(
            f"{_RUNS.select} WHERE settled = 1 AND run_dir != '' AND started_at < ?"  # noqa: S608
            " AND NOT EXISTS (SELECT 1 FROM tasks WHERE tasks.name = runs.task AND tasks.done"
            " AND tasks.done_generation = runs.generation)"
            " ORDER BY started_at LIMIT ?",
            (before, limit),
        )
        return [_RUNS.load(r) for r in rows]

    def events(
        self, task: str | None = None, limit: int = 100, after_id: int = 0
    ) -> list[EventRow]:
        """The newest ``limit`` events with ``id > after_id`` (of ``task``), newest last."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        where = "id > ?"
        params: list[object] = [after_id]
        if task is not None:
            where += " AND task = ?"
            params.append(task)
        rows = self._query(
            f"{_EVENTS.select} WHERE {where} ORDER BY id DESC LIMIT ?", (*params, limit)
        )
        return [_EVENTS.load(r) for r in reversed(rows)]

    def has_event(self, kind: str, message: str, task: str | None = None) -> bool:
        """Whether the log already holds this exact event (for once-only warnings)."""
        rows = self._query(
            "SELECT 1 FROM events WHERE task IS ? AND kind = ? AND message = ? LIMIT 1",
            (task, kind, message),
        )
        return bool(rows)

    def notified(self) -> dict[tuple[str, str], str]:
        """(subject, transition) → the occurrence last notified (``reconciler.notify``)."""
        rows = self._query("SELECT subject, transition, occurrence FROM notified")
        return {(str(s), str(t)): str(o) for s, t, o in rows}

    def get_meta(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    def state_id(self) -> str | None:
        """This state's identity (None: no database yet). Made once, with the database, and
        kept by backups and copies of it: a restored database owns the lanes it owned."""
        return self.get_meta(STATE_ID)

    def totals(self, task: str | None = None) -> tuple[float, int]:
        """(summed cost_usd, summed input + output tokens) over all runs or one task's runs."""
        sql = (
            "SELECT COALESCE(SUM(cost_usd), 0.0),"
            " COALESCE(SUM(COALESCE(input_tokens, 0) + COALESCE(output_tokens, 0)), 0) FROM runs"
        )
        rows = self._query(sql) if task is None else self._query(sql + " WHERE task = ?", (task,))
        return float(rows[0][0]), int(rows[0][1])

    def run_tally(self) -> list[tuple[str, str, int]]:
        """(lane, verdict, count) over all runs: the verdict is the outcome, else the
        reconciler's mark, else ``running`` (not ended) or ``ended`` (not judged yet)."""
        rows = self._query(
            "SELECT lane, COALESCE(outcome, mark,"
            " CASE WHEN ended_at IS NULL THEN 'running' ELSE 'ended' END), COUNT(*)"
            " FROM runs GROUP BY 1, 2 ORDER BY 1, 2"
        )
        return [(str(lane), str(verdict), int(n)) for lane, verdict, n in rows]

    def events_after(self, task: str | None, after_id: int, limit: int) -> list[EventRow]:
        """The oldest ``limit`` events of ``task`` (None: of every task and lane) with
        ``id > after_id``, oldest first (a page forward through the log)."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        if task is None:
            rows = self._query(
                f"{_EVENTS.select} WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)
            )
        else:
            rows = self._query(
                f"{_EVENTS.select} WHERE task = ? AND id > ? ORDER BY id LIMIT ?",
                (task, after_id, limit),
            )
        return [_EVENTS.load(r) for r in rows]

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[Self]:
        """Reads inside the block see one consistent state (a read transaction)."""
        with self._mutex:
            if self._tx is not None or self._conn.in_transaction:
                yield self  # already inside a transaction: reads are consistent anyway
                return
            self._query("BEGIN")
            try:
                yield self
            finally:
                self._query("COMMIT")

    def backup(self, target: Path) -> int:
        """Write a consistent copy of the database to ``target``; return its size in bytes.

        SQLite's online backup reads one moment of the database, so a writer may go on working
        meanwhile. The copy is taken in memory and lands in ``target`` through a fresh temporary
        file beside it (``O_EXCL|O_NOFOLLOW``, mode 0600) and a rename: a symlink or file
        planted at ``target`` is replaced, never written through.
        """
        with self._mutex:
            if not self._query("PRAGMA database_list")[0][2]:
                raise StateError(
                    f"there is no state database at {self.path} to back up (nothing was "
                    "recorded yet, or it was moved aside)"
                )
            copy = sqlite3.connect(":memory:")
            try:
                self._conn.backup(copy)
                data = copy.serialize()
            except sqlite3.Error as exc:
                raise_named(exc, self.path, writing=False)
                raise
            finally:
                copy.close()
        try:
            safefile.write_atomic(target, data, 0o600)
        except OSError as exc:
            raise_named(exc, Path(target), writing=True, what="the backup")
            raise StateError(
                f"the backup {target} cannot be written ({exc.strerror or exc}); give a FILE "
                "in a directory that exists and that you may write"
            ) from exc
        return len(data)

    # ----------------------------------------------------------------------------- writes

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """``BEGIN IMMEDIATE``; commit (bumping the serial iff a row changed) or roll back."""
        if self.readonly:
            raise StateError("the state store was opened read-only")
        with self._mutex:
            if self._tx is not None:
                raise StateError("transactions do not nest")
            conn = self._conn
            self._query("BEGIN IMMEDIATE")
            tx = Transaction(conn)
            self._tx = tx
            before = conn.total_changes
            try:
                yield tx
                if conn.total_changes != before:
                    conn.execute("UPDATE serial SET value = value + 1 WHERE id = 1")
                    if self._logged_at is not None:  # what was taken in is no longer needed
                        conn.execute(_LOG_TAKEN, (self._logged_at[1],))
                conn.execute("COMMIT")
            except BaseException as exc:
                self._kept.clear()  # may hold rows that the rollback just undid
                self._logged_at = None  # the same: read them whole again
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        if not isinstance(exc, sqlite3.Error):
                            raise
                        # the first error says what went wrong; SQLite has given up the
                        # transaction on its own when it cannot even roll back
                if isinstance(exc, sqlite3.Error):
                    raise_named(exc, self.path, writing=True)
                raise
            finally:
                tx._closed = True
                self._tx = None


class Transaction:
    """The write API; valid only inside ``with store.transaction() as tx:``."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._closed = False

    def _exec(self, sql: str, params: Sequence[object] = ()) -> sqlite3.Cursor:
        if self._closed:
            raise StateError("this transaction has already ended")
        return self._conn.execute(sql, params)

    def _update(
        self, table: _Table[Any], key: tuple[object, ...], fields: dict[str, object]
    ) -> None:
        table.check_fields(fields)
        if not fields:
            return
        names = list(fields)  # validated against the dataclass fields above
        sql = (
            f"UPDATE {table.name} SET {', '.join(f'{c} = ?' for c in names)} "  # noqa: S608
            f"WHERE {table.where_key} AND ({' OR '.join(f'{c} IS NOT ?' for c in names)})"
        )
        values = list(fields.values())
        cur = self._exec(sql, (*values, *key, *values))
        if cur.rowcount == 0:
            exists = self._exec(f"SELECT 1 FROM {table.name} WHERE {table.where_key}", key)  # noqa: S608
            if exists.fetchone() is None:
                raise KeyError(f"{table.name}: no row {key!r}")

    def upsert_task(self, row: TaskRow) -> None:
        self._exec(_TASKS.upsert, _TASKS.values(row))

    def update_task(self, name: str, /, **fields: object) -> None:
        """Set some fields of an existing task; TypeError for unknown fields, KeyError if absent."""
        self._update(_TASKS, (name,), fields)

    def delete_task(self, name: str) -> None:
        """Remove a task and (by cascade) its runs; events stay. Absent task: no-op."""
        self._exec("DELETE FROM tasks WHERE name = ?", (name,))

    def upsert_run(self, row: Run) -> None:
        """Insert the run or replace all its fields (its task must exist)."""
        if row.settled:
            raise TypeError("runs: a run is settled with settle_run, which adds it to history")
        values = _RUNS.values(row)
        if row.failures:
            values = (
                *values[:_RUN_FAILURES],
                redact(row.failures),
                *values[_RUN_FAILURES + 1 :],
            )
        self._exec(_RUNS.upsert, values)

    def delete_run(self, task: str, attempt: int, iteration: int) -> None:
        """Forget a run whose start never reached its lane (nothing of it exists anywhere)."""
        self._exec(
            "DELETE FROM runs WHERE task = ? AND attempt = ? AND iteration = ?",
            (task, attempt, iteration),
        )

    def update_run(self, task: str, attempt: int, iteration: int, /, **fields: object) -> None:
        """Set some fields of an existing run; TypeError for unknown fields, KeyError if absent."""
        if "settled" in fields:
            raise TypeError("runs: a run is settled with settle_run, which adds it to history")
        failures = fields.get("failures")
        if isinstance(failures, str):
            fields["failures"] = redact(failures)
        self._update(_RUNS, (task, attempt, iteration), fields)

    def settle_run(self, task: str, attempt: int, iteration: int) -> bool:
        """Settle a run (over for good, of an earlier generation): its row stays, marked, and its
        figures are added to its task's history and its lane's spend by hour, once: settling a
        settled run changes nothing. False when it was settled already; KeyError if absent."""
        key = (task, attempt, iteration)
        if self._exec(_SETTLE, key).rowcount == 0:
            if self._exec(_RUN_EXISTS, key).fetchone() is None:
                raise KeyError(f"runs: no row {key!r}")
            return False
        for statement in _FOLD:
            self._exec(statement, key)
        return True

    def add_event(
        self,
        task: str | None,
        kind: str,
        message: str,
        revision: str | None = None,
        at: float | None = None,
    ) -> int:
        """Append an event (``at`` defaults to now); returns its id."""
        cur = self._exec(
            "INSERT INTO events (at, task, kind, message, revision) VALUES (?, ?, ?, ?, ?)",
            (time.time() if at is None else at, task, kind, redact(message), revision),
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def set_notified(self, subject: str, transition: str, occurrence: str, at: float) -> None:
        """Record ``occurrence`` as the last of ``transition`` notified for ``subject``."""
        self._exec(
            "INSERT INTO notified (subject, transition, occurrence, at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (subject, transition) DO UPDATE SET occurrence = excluded.occurrence,"
            " at = excluded.at WHERE notified.occurrence IS NOT excluded.occurrence",
            (subject, transition, occurrence, at),
        )

    def clear_notified(self) -> None:
        """Forget what was notified (no sink left: the next sink starts from what is so)."""
        self._exec("DELETE FROM notified")

    def set_meta(self, key: str, value: str | None) -> None:
        """Set a meta key (``None`` removes it)."""
        if value is None:
            self._exec("DELETE FROM meta WHERE key = ?", (key,))
            return
        self._exec(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE"
            " SET value = excluded.value WHERE meta.value IS NOT excluded.value",
            (key, redact(value)),
        )


# ------------------------------------------------------------------------------- internals


def _connect(target: str, *, uri: bool) -> sqlite3.Connection:
    conn = sqlite3.connect(
        target, uri=uri, isolation_level=None, check_same_thread=False, timeout=10.0
    )
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def _user_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def _too_new(path: Path | None, version: int) -> StateError:
    return StateError(
        f"{path} has schema version {version}, newer than this reconciler supports "
        f"({SCHEMA_VERSION}); upgrade reconciler"
    )


def _migrate(conn: sqlite3.Connection, path: Path | None) -> None:
    """Take the database to this reconciler's schema in one transaction. Foreign keys are off
    meanwhile (SQLite's way to rebuild a table) and checked before the commit."""
    conn.execute("PRAGMA foreign_keys=OFF")  # outside a transaction, or it does nothing
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = _user_version(conn)
        if version > SCHEMA_VERSION:
            raise _too_new(path, version)
        for step in MIGRATIONS[version:]:
            for statement in _statements(step):
                conn.execute(statement)
        if version != SCHEMA_VERSION:
            broken = conn.execute("PRAGMA foreign_key_check").fetchall()
            if broken:
                raise sqlite3.IntegrityError(f"foreign keys broken by the migration: {broken}")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")
        if path is not None:  # a real database (not a reader's empty stand-in) has an identity
            conn.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)",
                (STATE_ID, secrets.token_hex(16)),
            )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    finally:
        conn.execute("PRAGMA foreign_keys=ON")


def _statements(script: str) -> Iterator[str]:
    """Split a migration script into statements (``executescript`` would commit for us)."""
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                yield buf.strip()
            buf = ""
    if buf.strip():
        raise ValueError(f"incomplete SQL statement in migration: {buf.strip()[:60]}")


def _check_columns(conn: sqlite3.Connection, path: Path) -> None:
    for problem in _schema_problems(conn):
        raise damaged(path, problem)


def _schema_problems(conn: sqlite3.Connection) -> list[str]:
    """How the tables differ from the ones this reconciler's schema makes (none: [])."""
    problems = []
    for table in (_TASKS, _RUNS, _EVENTS, _HISTORY, _SPEND):
        cols = tuple(r[1] for r in conn.execute(f"PRAGMA table_info({table.name})"))
        if cols != table.columns:
            have = ", ".join(cols) if cols else "no such table"
            problems.append(
                f"table {table.name} has columns ({have}), expected ({', '.join(table.columns)})"
            )
    return problems


def _may_write(path: Path) -> None:
    """SQLite quietly opens a database it may not write read-only, and only the first write
    fails; a writer must know at once. Its directory takes the -wal and -shm files."""
    if not os.access(path.parent, os.W_OK | os.X_OK) or (
        os.path.lexists(path) and not os.access(path, os.R_OK | os.W_OK)
    ):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))


def _exists(path: Path) -> bool:
    """Whether ``path`` exists; a permission problem on the way is an error, not a "no"."""
    try:
        os.stat(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise_named(exc, path, writing=False)
        raise
    return True


__all__: list[str] = [
    "DB_FILE",
    "MIGRATIONS",
    "NOTIFY_SINCE",
    "SCHEMA_VERSION",
    "STATE_ID",
    "EventRow",
    "HistoryRow",
    "Run",
    "SpendRow",
    "StateError",
    "Store",
    "TaskRow",
    "Transaction",
]
