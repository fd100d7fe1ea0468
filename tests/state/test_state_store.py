"""Store: schema, serial, transactions, events, read-only access, totals."""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.state import (
    SCHEMA_VERSION,
    EventRow,
    Run,
    StateError,
    Store,
    TaskRow,
    Transaction,
)
from reconciler.state.store import MIGRATIONS


def task(name: str = "t", **kw: Any) -> TaskRow:
    return dataclasses.replace(TaskRow(name=name, lane="l", repo="r", first_seen=100.0), **kw)


def run(name: str = "t", attempt: int = 1, iteration: int = 1, **kw: Any) -> Run:
    base = Run(
        task=name,
        attempt=attempt,
        iteration=iteration,
        generation="g1",
        lane="l",
        repo="r",
        run_dir=f"/runs/{name}/{attempt}.{iteration}",
        started_at=200.0,
    )
    return dataclasses.replace(base, **kw)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "state")
    yield s
    s.close()


# -------------------------------------------------------------------------------- schema


def test_open_creates_private_dir_and_wal_database(tmp_path: Path) -> None:
    state = tmp_path / "a" / "state"
    Store.open(state).close()
    assert state.stat().st_mode & 0o777 == 0o700
    raw = sqlite3.connect(state / "state.db")
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"tasks", "runs", "events", "meta", "serial"} <= tables
    finally:
        raw.close()


def test_pragmas_on_the_writer_connection(store: Store) -> None:
    conn = store._conn
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_columns_follow_the_dataclasses(store: Store) -> None:
    for table, cls in (("tasks", TaskRow), ("runs", Run), ("events", EventRow)):
        cols = [r[1] for r in store._conn.execute(f"PRAGMA table_info({table})")]
        assert cols == [f.name for f in dataclasses.fields(cls)]


def test_reopen_keeps_data_and_schema(tmp_path: Path) -> None:
    with Store.open(tmp_path) as s, s.transaction() as tx:
        tx.upsert_task(task("a"))
    with Store.open(tmp_path) as s:
        assert s.task("a") == task("a")
        assert s.serial() == 1


def test_the_state_id_is_made_with_the_database_and_kept(tmp_path: Path) -> None:
    with Store.open_readonly(tmp_path) as reader:
        assert reader.state_id() is None  # no database: no identity, nothing made
    assert not (tmp_path / "state.db").exists()
    with Store.open(tmp_path) as s:
        made = s.state_id()
        assert made is not None and len(made) == 32
        assert s.serial() == 0  # a saved plan of the empty state is not made stale by it
    with Store.open(tmp_path) as s, Store.open_readonly(tmp_path) as reader:
        assert s.state_id() == reader.state_id() == made
    with Store.open(tmp_path / "other") as s:
        assert s.state_id() != made


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    Store.open(tmp_path).close()
    raw = sqlite3.connect(tmp_path / "state.db")
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.close()
    with pytest.raises(StateError, match="newer than this reconciler supports"):
        Store.open(tmp_path)
    with pytest.raises(StateError, match="newer than this reconciler supports"):
        Store.open_readonly(tmp_path)


def older_database(
    path: Path,
    version: int,
    task_row: str = "INSERT INTO tasks (name, lane, repo, first_seen) VALUES ('t', 'l', 'r', 100)",
) -> None:
    """A database as schema ``version`` left it: task ``t`` (as ``task_row`` inserts it) with
    one run."""
    raw = sqlite3.connect(path / "state.db")
    for step in MIGRATIONS[:version]:
        raw.executescript(step)
    raw.execute(f"PRAGMA user_version = {version}")
    raw.execute(task_row)
    raw.execute(
        "INSERT INTO runs (task, attempt, iteration, generation, lane, repo, run_dir, started_at,"
        " cost_usd) VALUES ('t', 1, 1, 'g1', 'l', 'r', '/runs/t/1.1', 200, 0.5)"
    )
    raw.execute("INSERT INTO events (at, task, kind, message) VALUES (1, 't', 'start', 'x')")
    raw.commit()
    raw.close()


@pytest.mark.parametrize("version", range(1, SCHEMA_VERSION))
def test_an_older_database_is_migrated_by_a_writer_and_named_to_readers(
    tmp_path: Path, version: int
) -> None:
    older_database(tmp_path, version)
    with pytest.raises(
        StateError, match=f"schema version {version}, older .* run `reconciler apply` once"
    ):
        Store.open_readonly(tmp_path)
    with Store.open(tmp_path) as migrated:  # a writer migrates, keeping every row
        assert migrated.runs() == [run(cost_usd=0.5, run_dir="/runs/t/1.1")]
        with migrated.transaction() as tx:
            tx.update_run("t", 1, 1, turns=3, tool_calls=4, progress_offset=10)
        assert migrated.runs()[0].turns == 3
        with migrated.transaction() as tx:  # the held action of a task (schema 4)
            tx.update_task("t", failed_action="open-pr", failed_message="no", failed_count=2)
        row = migrated.task("t")
        assert row is not None
        assert (row.failed_action, row.failed_count) == (
            "open-pr",
            2,
        )
    assert (
        sqlite3.connect(tmp_path / "state.db").execute("PRAGMA user_version").fetchone()[0]
        == SCHEMA_VERSION
    )


def test_schema_5_drops_the_columns_nothing_read_and_keeps_every_task_and_run(
    tmp_path: Path,
) -> None:
    older_database(
        tmp_path,
        4,
        "INSERT INTO tasks (name, lane, repo, first_seen, done, done_generation, pr_number,"
        " pr_url, pr_intent, next_attempt_at, removed_at, generation, failed_action,"
        " failed_message, failed_at, failed_count) VALUES ('t', 'l', 'r', 100, 1, 'g1', 7,"
        " 'https://forge/pr/7', 1, 150, 160, 'g1', 'update-pr', 'refused', 170, 2)",
    )
    with Store.open(tmp_path) as migrated:
        assert migrated.task("t") == task(
            done=True,
            done_generation="g1",
            pr_number=7,
            generation="g1",
            failed_action="update-pr",
            failed_message="refused",
            failed_at=170.0,
            failed_count=2,
        )
        assert migrated.runs() == [run(cost_usd=0.5, run_dir="/runs/t/1.1")]  # not cascaded
        assert [e.message for e in migrated.events()] == ["x"]
        conn = migrated._conn
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        with migrated.transaction() as tx:  # the runs still belong to their task
            tx.delete_task("t")
        assert migrated.runs() == []
    columns = [
        r[1] for r in sqlite3.connect(tmp_path / "state.db").execute("PRAGMA table_info(tasks)")
    ]
    assert not {"pr_url", "pr_intent", "next_attempt_at", "removed_at"} & set(columns)


def test_schema_7_opens_every_run_of_an_older_database_and_settles_them_once(
    tmp_path: Path,
) -> None:
    older_database(tmp_path, 6)
    with Store.open(tmp_path) as migrated:
        assert migrated.open_runs() == [run(cost_usd=0.5, run_dir="/runs/t/1.1")]
        assert len(migrated.histories()) == 0 and migrated.lane_spend(0) == []
        with migrated.transaction() as tx:
            assert tx.settle_run("t", 1, 1)
        assert migrated.open_runs() == []
        assert migrated.runs() == [run(cost_usd=0.5, run_dir="/runs/t/1.1", settled=True)]


# -------------------------------------------------------------------------------- history


def test_a_settled_run_stays_and_is_added_once_to_history_and_its_hour(store: Store) -> None:
    with store.transaction() as tx:
        tx.upsert_task(task())
        tx.upsert_run(run(attempt=1, started_at=7300.0, cost_usd=0.5, input_tokens=3))
        tx.upsert_run(run(attempt=2, iteration=1, started_at=7400.0, output_tokens=4))
        tx.upsert_run(run(attempt=2, iteration=2, started_at=11000.0, cost_usd=0.25))
        tx.upsert_run(run(attempt=3, started_at=11500.0))
    serial = store.serial()
    with store.transaction() as tx:
        assert tx.settle_run("t", 2, 1) and tx.settle_run("t", 1, 1) and tx.settle_run("t", 2, 2)
        assert not tx.settle_run("t", 1, 1)  # settling again adds nothing
        with pytest.raises(KeyError):
            tx.settle_run("t", 9, 9)
    assert store.serial() == serial + 1
    with store.transaction() as tx:  # nothing changes: the serial stays
        assert not tx.settle_run("t", 2, 2)
    assert store.serial() == serial + 1
    assert [(r.attempt, r.iteration) for r in store.open_runs()] == [(3, 1)]
    assert [(r.attempt, r.settled) for r in store.runs()] == [
        (1, True),
        (2, True),
        (2, True),
        (3, False),
    ]
    (history,) = store.histories().rows()
    assert (history.task, history.lane, history.repo) == ("t", "l", "r")
    assert (history.runs, history.attempt, history.iteration) == (3, 2, 2)
    assert (history.cost_usd, history.tokens) == (0.75, 7)
    assert [(h.lane, h.hour, h.cost_usd, h.tokens) for h in store.lane_spend(0)] == [
        ("l", 7200, 0.5, 7),
        ("l", 10800, 0.25, 0),
    ]
    assert [h.hour for h in store.lane_spend(10800)] == [10800]
    assert store.totals("t") == (0.75, 7)  # the runs' own rows still say what they spent


def test_a_run_is_settled_only_through_settle_run(store: Store) -> None:
    with store.transaction() as tx:
        tx.upsert_task(task())
        with pytest.raises(TypeError, match="settle_run"):
            tx.upsert_run(run(settled=True))
        tx.upsert_run(run())
        with pytest.raises(TypeError, match="settle_run"):
            tx.update_run("t", 1, 1, settled=True)


def test_a_task_s_history_goes_with_it(store: Store) -> None:
    with store.transaction() as tx:
        tx.upsert_task(task())
        tx.upsert_run(run(cost_usd=1.0))
        tx.settle_run("t", 1, 1)
    with store.transaction() as tx:
        tx.delete_task("t")
    assert len(store.histories()) == 0 and store.runs() == []


def test_expired_runs_are_settled_and_old_and_never_of_the_generation_done(store: Store) -> None:
    with store.transaction() as tx:
        tx.upsert_task(task("done", done=True, done_generation="g2"))
        tx.upsert_task(task("open"))
        tx.upsert_run(run("done", 1, generation="g1", started_at=100.0))
        tx.upsert_run(run("done", 2, generation="g2", started_at=110.0))
        tx.upsert_run(run("open", 1, started_at=120.0))
        tx.upsert_run(run("open", 2, started_at=130.0))
        tx.upsert_run(run("open", 3, started_at=500.0))
        for name, attempt in [("done", 1), ("done", 2), ("open", 1), ("open", 3)]:
            tx.settle_run(name, attempt, 1)

    def expired(before: float, limit: int = 10) -> list[tuple[str, int]]:
        return [(r.task, r.attempt) for r in store.expired_runs(before, limit)]

    # oldest first; not the run of the generation its task is done for, not an open run
    # (open 2), not one started since (open 3)
    assert expired(400.0) == [("done", 1), ("open", 1)]
    assert expired(400.0, limit=1) == [("done", 1)]
    assert expired(115.0) == [("done", 1)]
    with store.transaction() as tx:  # the task is done anew, for another generation
        tx.update_task("done", done_generation="g3")
    assert expired(400.0) == [("done", 1), ("done", 2), ("open", 1)]


# -------------------------------------------------------------------------------- serial


def test_serial_increments_once_per_changed_transaction(store: Store) -> None:
    assert store.serial() == 0
    with store.transaction() as tx:
        tx.upsert_task(task("a"))
        tx.upsert_task(task("b"))
        tx.upsert_run(run("a"))
        tx.set_meta("last_revision", "abc")
        tx.add_event("a", "started", "run 1.1 started", "abc", 5.0)
    assert store.serial() == 1
    with store.transaction() as tx:
        tx.update_task("a", done=True)
    assert store.serial() == 2


def test_no_op_transactions_leave_the_serial_alone(store: Store) -> None:
    with store.transaction() as tx:
        tx.upsert_task(task("a", pr_number=3))
        tx.upsert_run(run("a", cost_usd=1.5))
        tx.set_meta("last_revision", "abc")
    assert store.serial() == 1
    with store.transaction():
        pass
    with store.transaction() as tx:
        tx.upsert_task(task("a", pr_number=3))
        tx.upsert_run(run("a", cost_usd=1.5))
        tx.update_task("a", pr_number=3, done=False)
        tx.update_run("a", 1, 1, cost_usd=1.5)
        tx.update_task("a")
        tx.set_meta("last_revision", "abc")
        tx.set_meta("absent", None)
        tx.delete_task("nobody")
    assert store.serial() == 1
    with store.transaction() as tx:
        tx.update_task("a", pr_number=4)
        tx.update_task("a", pr_number=3)  # changed and changed back: still a change
    assert store.serial() == 2


def test_ten_thousand_unchanged_upserts_do_not_bump_the_serial(store: Store) -> None:
    rows = [task(f"t{i:05}", generation="g", failed_at=float(i)) for i in range(10_000)]
    with store.transaction() as tx:
        for row in rows:
            tx.upsert_task(row)
    assert store.serial() == 1
    with store.transaction() as tx:
        for row in rows:
            tx.upsert_task(row)
    assert store.serial() == 1
    start = time.perf_counter()
    tasks = store.tasks()
    elapsed = time.perf_counter() - start
    assert len(tasks) == 10_000
    assert tasks["t00042"] == rows[42]
    assert elapsed < 2.0  # generous: CI machines vary; typically ~30 ms cold, <1 ms cached


def test_rollback_on_exception(store: Store) -> None:
    with store.transaction() as tx:
        tx.upsert_task(task("a"))
    seen: list[Transaction] = []

    def fail() -> None:
        with store.transaction() as tx:
            seen.append(tx)
            tx.update_task("a", done=True)
            tx.upsert_task(task("b"))
            tx.add_event("a", "k", "m", None, 1.0)
            tx.set_meta("last_error", "x")
            assert store.task("a") == task("a", done=True)  # own writes visible inside
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail()
    assert store.serial() == 1
    assert store.tasks() == {"a": task("a")}
    assert store.events() == []
    assert store.get_meta("last_error") is None
    with pytest.raises(StateError, match="already ended"):
        seen[0].upsert_task(task("c"))


def test_transactions_do_not_nest(store: Store) -> None:
    with store.transaction(), pytest.raises(StateError, match="nest"), store.transaction():
        pass
    with store.transaction() as tx:  # still usable afterwards
        tx.upsert_task(task("a"))
    assert store.serial() == 1


# ---------------------------------------------------------------------------- tasks & runs


def test_task_round_trip_keeps_types(store: Store) -> None:
    row = task(
        "a",
        done=True,
        done_generation="g2",
        pr_number=12,
        generation="g2",
        failed_action="open-pr",
        failed_message="refused",
        failed_at=1.5,
        failed_count=2,
    )
    with store.transaction() as tx:
        tx.upsert_task(row)
    got = store.task("a")
    assert got == row
    assert got is not None
    assert got.done is True
    assert got.failed_count == 2
    assert store.task("missing") is None


def test_update_rejects_unknown_and_key_fields_and_missing_rows(store: Store) -> None:
    with store.transaction() as tx:
        tx.upsert_task(task("a"))
        tx.upsert_run(run("a"))
        with pytest.raises(TypeError, match="colour"):
            tx.update_task("a", colour="red")
        with pytest.raises(TypeError, match="cannot update key field"):
            tx.update_task("a", name="b")
        with pytest.raises(TypeError, match="cannot update key field"):
            tx.update_run("a", 1, 1, attempt=2, outcome="failed")
        with pytest.raises(KeyError):
            tx.update_task("nobody", done=True)
        with pytest.raises(KeyError):
            tx.update_run("a", 9, 9, outcome="failed")
        with pytest.raises(TypeError):
            tx.upsert_task(run("a"))  # type: ignore[arg-type]
        tx.update_run("a", 1, 1, ended_at=300.0, exit_code=0, outcome="succeeded")
    assert store.runs("a")[0] == run("a", ended_at=300.0, exit_code=0, outcome="succeeded")


def test_upsert_run_replaces_all_fields(store: Store) -> None:
    with store.transaction() as tx:
        tx.upsert_task(task("a"))
        tx.upsert_run(run("a", pid=42, session_id="s", mark="stalled", marked_at=9.0))
    with store.transaction() as tx:
        tx.upsert_run(run("a", outcome="failed"))
    assert store.runs() == [run("a", outcome="failed")]
    assert store.serial() == 2


def test_runs_sorted_and_filtered_and_cascade_on_delete(store: Store) -> None:
    with store.transaction() as tx:
        for name in ("b", "a"):
            tx.upsert_task(task(name))
        for key in (("b", 1, 1), ("a", 2, 1), ("a", 1, 2), ("a", 1, 10), ("a", 1, 1)):
            tx.upsert_run(run(*key))
        tx.add_event("a", "created", "task a created", None, 1.0)
    keys = [(r.task, r.attempt, r.iteration) for r in store.runs()]
    assert keys == [("a", 1, 1), ("a", 1, 2), ("a", 1, 10), ("a", 2, 1), ("b", 1, 1)]
    assert [r.task for r in store.runs("b")] == ["b"]
    assert store.runs("nobody") == []
    with store.transaction() as tx:
        tx.delete_task("a")
    assert set(store.tasks()) == {"b"}
    assert [r.task for r in store.runs()] == ["b"]
    assert len(store.events("a")) == 1  # history stays


def test_run_needs_its_task(store: Store) -> None:
    with pytest.raises(sqlite3.IntegrityError), store.transaction() as tx:
        tx.upsert_run(run("ghost"))
    assert store.serial() == 0


def test_run_outcome_is_checked(store: Store) -> None:
    with store.transaction() as tx:
        tx.upsert_task(task("a"))
        with pytest.raises(sqlite3.IntegrityError):
            tx.upsert_run(run("a", outcome="exploded"))
    assert store.runs() == []


# --------------------------------------------------------------------------------- events


def test_events_are_append_only_and_filtered_by_task(store: Store) -> None:
    with store.transaction() as tx:
        ids = [
            tx.add_event("a", "started", "a1", "r1", 1.0),
            tx.add_event("b", "started", "b1", "r1", 2.0),
            tx.add_event(None, "pass", "pass done", "r1", 3.0),
            tx.add_event("a", "exited", "a2", None, 4.0),
        ]
    assert ids == sorted(ids)
    assert [e.message for e in store.events()] == ["a1", "b1", "pass done", "a2"]
    assert [e.message for e in store.events("a")] == ["a1", "a2"]
    assert store.events("a")[0] == EventRow(ids[0], 1.0, "a", "started", "a1", "r1")
    assert [e.message for e in store.events(limit=2)] == ["pass done", "a2"]  # newest last
    assert [e.message for e in store.events(after_id=ids[1])] == ["pass done", "a2"]
    assert [e.message for e in store.events("a", after_id=ids[0])] == ["a2"]
    with pytest.raises(ValueError, match="limit"):
        store.events(limit=0)
    # no API to change history, and the database refuses it too
    assert not [n for n in dir(Transaction) if "event" in n and n != "add_event"]
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        store._conn.execute("UPDATE events SET message = 'x'")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        store._conn.execute("DELETE FROM events")
    assert len(store.events()) == 4


def test_event_time_defaults_to_now(store: Store) -> None:
    with store.transaction() as tx:
        tx.add_event("a", "k", "m")
    (event,) = store.events()
    assert abs(event.at - time.time()) < 60
    assert event.revision is None


# ---------------------------------------------------------------------------- meta & totals


def test_meta(store: Store) -> None:
    assert store.get_meta("last_revision") is None
    with store.transaction() as tx:
        tx.set_meta("last_revision", "abc")
        tx.set_meta("last_error", "bad manifest")
    assert store.get_meta("last_revision") == "abc"
    with store.transaction() as tx:
        tx.set_meta("last_error", None)
    assert store.get_meta("last_error") is None
    assert store.serial() == 2


def test_totals(store: Store) -> None:
    assert store.totals() == (0.0, 0)
    with store.transaction() as tx:
        tx.upsert_task(task("a"))
        tx.upsert_task(task("b"))
        tx.upsert_run(run("a", 1, 1, cost_usd=0.25, input_tokens=100, output_tokens=10))
        tx.upsert_run(run("a", 1, 2, cost_usd=0.5, input_tokens=200))
        tx.upsert_run(run("a", 2, 1))  # nothing reported
        tx.upsert_run(run("b", 1, 1, cost_usd=1.0, output_tokens=5))
    assert store.totals() == (1.75, 315)  # binary-exact sums
    assert store.totals("a") == (0.75, 310)
    assert store.totals("b") == (1.0, 5)
    assert store.totals("nobody") == (0.0, 0)


# ------------------------------------------------------------------------------ read-only


def test_readonly_while_a_writer_holds_a_transaction(tmp_path: Path) -> None:
    writer = Store.open(tmp_path)
    with writer.transaction() as tx:
        tx.upsert_task(task("a"))
    reader = Store.open_readonly(tmp_path)
    try:
        assert set(reader.tasks()) == {"a"}
        with writer.transaction() as tx:
            tx.upsert_task(task("b"))
            tx.update_task("a", done=True)
            # the writer's open transaction neither blocks nor leaks into the reader
            assert set(reader.tasks()) == {"a"}
            assert reader.task("a") == task("a")
            assert reader.serial() == 1
        assert set(reader.tasks()) == {"a", "b"}  # committed: visible (cache invalidated)
        assert reader.task("a") == task("a", done=True)
        assert reader.serial() == 2
        with pytest.raises(StateError, match="read-only"), reader.transaction():
            pass
    finally:
        reader.close()
        writer.close()


def test_readonly_snapshot_is_consistent(tmp_path: Path) -> None:
    writer = Store.open(tmp_path)
    reader = Store.open_readonly(tmp_path)
    try:
        with reader.snapshot():
            assert reader.serial() == 0
            with writer.transaction() as tx:
                tx.upsert_task(task("a"))
            assert reader.tasks() == {}
            assert reader.serial() == 0
        assert reader.serial() == 1
        assert set(reader.tasks()) == {"a"}
    finally:
        reader.close()
        writer.close()


def test_readonly_without_a_database_is_empty_and_creates_nothing(tmp_path: Path) -> None:
    state = tmp_path / "nothing-here"
    with Store.open_readonly(state) as reader:
        assert reader.serial() == 0
        assert reader.tasks() == {}
        assert reader.task("a") is None
        assert reader.runs() == []
        assert reader.events() == []
        assert reader.get_meta("last_revision") is None
        assert reader.totals() == (0.0, 0)
    assert not state.exists()


def test_readonly_after_the_writer_closed(tmp_path: Path) -> None:
    with Store.open(tmp_path) as writer, writer.transaction() as tx:
        tx.upsert_task(task("a"))
    with Store.open_readonly(tmp_path) as reader:
        assert set(reader.tasks()) == {"a"}


def test_tasks_and_histories_are_kept_and_brought_up_to_date_task_by_task(
    tmp_path: Path,
) -> None:
    """What a pass makes of the histories is kept with them (observe): the same object while
    no history changed, else the next version, naming the tasks that changed since the last;
    whole again after another connection's commit or a rollback."""
    store = Store.open(tmp_path)
    try:
        with store.transaction() as tx:
            for name in ("a", "b"):
                tx.upsert_task(task(name))
                tx.upsert_run(run(name, cost_usd=1.0))
                tx.settle_run(name, 1, 1)
        first = store.histories()
        assert {t: [h.runs for h in rows] for t, rows in first.items()} == {"a": [1], "b": [1]}
        assert store.histories() is first
        with store.transaction() as tx:  # another table changes: the histories do not
            tx.upsert_task(task("c"))
        assert store.histories() is first
        with store.transaction() as tx:  # a run of b settled: b's rows read again, a's kept
            tx.upsert_run(run("b", 2))
            tx.settle_run("b", 2, 1)
        second = store.histories()
        assert second.changed_since(first) == frozenset({"b"})
        assert second["a"] is first["a"] and [h.runs for h in second["b"]] == [2]
        rows = store.tasks()
        with store.transaction() as tx:  # a task's record moves (its owner may): named
            tx.update_task("a", lane="elsewhere")
        moved = store.tasks()
        assert moved["a"].lane == "elsewhere" and moved["b"] is rows["b"]  # read: a alone
        third = store.histories()
        assert third.changed_since(second) == frozenset({"a"}) and third == second
        assert third.changed_since(first) == frozenset({"a", "b"})  # over two patches
        assert first.changed_since(third) is None  # not a later version
        with store.transaction() as tx:  # a task removed takes its history with it
            tx.delete_task("b")
        fourth = store.histories()
        assert fourth.changed_since(third) == frozenset({"b"}) and set(fourth) == {"a"}
        with Store.open(tmp_path) as other, other.transaction() as tx:  # another connection
            tx.upsert_task(task("d"))
            tx.upsert_run(run("d"))
            tx.settle_run("d", 1, 1)
        whole = store.histories()
        assert whole.changed_since(fourth) is None and set(whole) == {"a", "d"}

        def fail() -> None:
            with store.transaction() as tx:
                tx.upsert_run(run("a", 2))
                tx.settle_run("a", 2, 1)
                assert [h.runs for h in store.histories()["a"]] == [2]
                raise RuntimeError

        with pytest.raises(RuntimeError):
            fail()
        assert [h.runs for h in store.histories()["a"]] == [1]
        # the log keeps only what has not been taken in yet
        store.histories()
        with store.transaction() as tx:
            tx.upsert_task(task("e"))
        assert store._query("SELECT kind, name FROM temp.change_log") == [("tasks", "e")]
        assert set(store.tasks()) == {"a", "c", "d", "e"}
    finally:
        store.close()


def test_tasks_cache_drops_rolled_back_rows(store: Store) -> None:
    with store.transaction() as tx:
        tx.upsert_task(task("a"))

    def fail() -> None:
        with store.transaction() as tx:
            tx.update_task("a", done=True)
            assert store.tasks()["a"].done
            raise RuntimeError

    with pytest.raises(RuntimeError):
        fail()
    assert not store.tasks()["a"].done
    mine = store.tasks()
    mine.clear()  # callers get their own dict
    assert set(store.tasks()) == {"a"}


WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from reconciler.state import StateLock, Store, TaskRow
    state = Path(sys.argv[1])
    with StateLock(state), Store.open(state) as store, store.transaction() as tx:
        tx.upsert_task(TaskRow(name="late", lane="l", repo="r", first_seen=1.0))
        print("in transaction", flush=True)
        sys.stdin.read()
    """
)


def test_readonly_while_another_process_holds_the_lock_and_a_transaction(tmp_path: Path) -> None:
    with Store.open(tmp_path) as s, s.transaction() as tx:
        tx.upsert_task(task("early"))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "in transaction"
        with Store.open_readonly(tmp_path) as reader:
            assert set(reader.tasks()) == {"early"}
            assert reader.serial() == 1
            proc.communicate("", timeout=20)
            assert proc.returncode == 0
            assert set(reader.tasks()) == {"early", "late"}
            assert reader.serial() == 2
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)


def test_free_text_is_stored_with_credentials_masked(store: Store, tmp_path: Path) -> None:
    token = "ghp_" + "K9j8H7g6F5d4S3a2P1o0" * 2
    said = f"push to https://bot:s3cr3t-Passw0rd@host/x.git failed; agent printed {token}"
    sha = "3f2a9c0e8b7d6a5f4e3d2c1b0a9f8e7d6c5b4a39"
    with store.transaction() as tx:
        tx.upsert_task(task("t"))
        tx.upsert_run(run("t", 1, 1, failures=f"{said}\nmarker DONE missing"))
        tx.upsert_run(run("t", 1, 2, session_id="0d0c5e1e-7c2b-4d1e-9a3f-5b6c7d8e9f01"))
        tx.update_run("t", 1, 2, failures=said)
        tx.add_event("t", "failed", said, revision=sha)
        tx.set_meta("control_problem", said)
        tx.set_meta("last_revision", sha)
    masked = "push to https://***@host/x.git failed; agent printed ***"
    assert [r.failures for r in store.runs("t")] == [f"{masked}\nmarker DONE missing", masked]
    assert store.runs("t")[1].session_id == "0d0c5e1e-7c2b-4d1e-9a3f-5b6c7d8e9f01"
    [event] = store.events("t")
    assert (event.message, event.revision) == (masked, sha)
    assert store.get_meta("control_problem") == masked
    assert store.get_meta("last_revision") == sha
    dump = "\n".join(sqlite3.connect(tmp_path / "state" / "state.db").iterdump())
    assert "s3cr3t" not in dump and token not in dump
