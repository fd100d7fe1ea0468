"""A damaged, full or locked state database is named with its file and the fix, never a bare
SQLite error: opening (writer and reader), queries and transactions."""

from __future__ import annotations

import errno
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.state import (
    Run,
    StateBusy,
    StateDamaged,
    StateError,
    StateFull,
    Store,
    TaskRow,
    state_dir_problem,
)


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """A state directory whose database holds a task and a few hundred events."""
    directory = tmp_path / "state"
    with Store.open(directory) as store, store.transaction() as tx:
        tx.upsert_task(TaskRow(name="t", lane="l", repo="r", first_seen=1.0))
        for i in range(300):
            tx.add_event("t", "note", f"event {i} " + "x" * 200)
    return directory


def assert_names_the_fix(error: StateError, db: Path) -> None:
    text = str(error)
    assert f"the state database {db} is damaged" in text, text
    assert "`reconciler state check`" in text
    assert f"mv {db} {db}.damaged" in text
    assert "`reconciler apply`" in text and "without duplicate runs or PRs" in text


def test_garbage_in_place_of_the_database_is_named_for_writer_and_reader(state: Path) -> None:
    db = state / "state.db"
    db.write_bytes(os.urandom(8192))
    for name in ("state.db-wal", "state.db-shm"):
        (state / name).unlink(missing_ok=True)
    with pytest.raises(StateDamaged) as writer:
        Store.open(state)
    assert_names_the_fix(writer.value, db)
    assert "file is not a database" in str(writer.value)
    assert isinstance(writer.value.__cause__, sqlite3.DatabaseError)
    with pytest.raises(StateDamaged) as reader:
        Store.open_readonly(state)
    assert_names_the_fix(reader.value, db)


def test_damage_found_by_a_query_is_named(state: Path) -> None:
    db = state / "state.db"
    data = bytearray(db.read_bytes())
    # keep the header (and so the schema page) readable; ruin the pages of the events
    data[4096 * 3 :] = os.urandom(len(data) - 4096 * 3)
    db.write_bytes(bytes(data))
    with Store.open_readonly(state) as store, pytest.raises(StateDamaged) as info:
        store.events(limit=1000)
    assert_names_the_fix(info.value, db)
    assert "malformed" in str(info.value)


def test_a_truncated_database_is_named_when_the_writer_opens_it(state: Path) -> None:
    db = state / "state.db"
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 3])
    with pytest.raises(StateDamaged) as info, Store.open(state) as store:
        store.events(limit=1000)
    assert_names_the_fix(info.value, db)


def test_a_directory_in_place_of_the_database(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "state.db").mkdir(parents=True)
    with pytest.raises(StateDamaged) as writer:
        Store.open(state)
    assert "a directory is in its place" in str(writer.value)
    with pytest.raises(StateDamaged):
        Store.open_readonly(state)


def test_a_foreign_table_layout_is_damage_too(tmp_path: Path) -> None:
    state = tmp_path / "state"
    Store.open(state).close()
    conn = sqlite3.connect(state / "state.db", isolation_level=None)
    conn.execute("DROP TABLE events")
    conn.close()
    with pytest.raises(StateDamaged) as info:
        Store.open(state)
    assert "table events has columns (no such table)" in str(info.value)


@pytest.fixture
def store(state: Path) -> Iterator[Store]:
    with Store.open(state) as s:
        yield s


def test_a_full_disk_fails_the_transaction_with_the_free_space_and_leaves_the_store_usable(
    store: Store, state: Path
) -> None:
    # SQLite's own "database or disk is full", at a size the test chooses: the page limit.
    pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
    store._conn.execute(f"PRAGMA max_page_count = {pages + 2}")
    serial = store.serial()
    with pytest.raises(StateFull) as info, store.transaction() as tx:
        tx.add_event("t", "big", "y" * 200_000)
    text = str(info.value)
    assert f"the state database {state / 'state.db'} cannot be written" in text, text
    assert "no space left on the device" in text
    assert " free on " in text and "free some space, then run again" in text
    assert info.value.temporary
    assert isinstance(info.value.__cause__, sqlite3.OperationalError)
    # rolled back, and the next (small) change goes through
    assert store.serial() == serial
    with store.transaction() as tx:
        tx.add_event("t", "small", "fits")
    assert store.serial() == serial + 1
    assert store.events("t", limit=1)[0].message == "fits"


def test_a_database_locked_by_another_program_is_named(store: Store, state: Path) -> None:
    other = sqlite3.connect(state / "state.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        store._conn.execute("PRAGMA busy_timeout = 20")
        with pytest.raises(StateBusy) as info, store.transaction() as tx:
            tx.add_event("t", "x", "y")
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert "is locked by another program" in str(info.value)
    assert str(state / "state.db") in str(info.value)
    with store.transaction() as tx:  # usable again once the other program let go
        tx.add_event("t", "x", "y")


def test_a_bug_stays_a_bug(store: Store) -> None:
    """Errors that are not about the file (here: a run of a task that does not exist) are not
    dressed up as damage."""
    with pytest.raises(sqlite3.IntegrityError), store.transaction() as tx:
        tx.upsert_run(
            Run(
                task="nobody",
                attempt=1,
                iteration=1,
                generation="g",
                lane="l",
                repo="r",
                run_dir="",
                started_at=1.0,
            )
        )
    with pytest.raises(sqlite3.OperationalError):
        store._query("SELECT no_such_column FROM tasks")


def test_os_errors_in_the_state_directory_are_sentences(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    full = state_dir_problem(OSError(errno.ENOSPC, "No space left on device"), state)
    assert full is not None and isinstance(full, StateFull)
    assert str(full).startswith(f"a file in the state directory {state} cannot be written")
    assert " free on " in str(full)
    named = state_dir_problem(
        OSError(errno.ENOSPC, "No space left on device", str(state / "daemon.pid")), state
    )
    assert named is not None and f"the state directory file {state / 'daemon.pid'}" in str(named)
    # elsewhere, and not about space: not the state's business
    assert state_dir_problem(OSError(errno.EACCES, "denied", "/etc/shadow"), state) is None


def test_a_file_where_the_state_directory_should_be(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("not a directory\n")
    for opening in (Store.open, Store.open_readonly):
        with pytest.raises(StateError) as info:
            opening(tmp_path / "state")
        assert f"{tmp_path / 'state'} is not a directory" in str(info.value)
        assert "give another --state" in str(info.value)
    lock = state_dir_problem(
        FileExistsError(errno.EEXIST, "File exists", str(tmp_path / "state")), tmp_path / "state"
    )
    assert lock is not None and f"{tmp_path / 'state'} is not a directory" in str(lock)
