"""`check` tells a healthy database from a damaged one (and says how to go on); `Store.backup`
writes one consistent moment of the database while a writer works, never through a symlink; the
state directory's own check finds what would hurt it."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from reconciler.state import (
    SCHEMA_VERSION,
    StateError,
    Store,
    TaskRow,
    check,
    check_dir,
)


def filled(directory: Path, events: int = 200) -> Path:
    with Store.open(directory) as store, store.transaction() as tx:
        tx.upsert_task(TaskRow(name="t", lane="l", repo="r", first_seen=1.0))
        for i in range(events):
            tx.add_event("t", "note", f"event {i} " + "x" * 300)
    return directory / "state.db"


def test_a_healthy_database_is_described(tmp_path: Path) -> None:
    filled(tmp_path)
    health = check(tmp_path)
    assert health.ok and health.verdict == "healthy", health
    assert health.schema_version == SCHEMA_VERSION and health.serial == 1
    assert health.counts == {"tasks": 1, "runs": 0, "events": 200}
    assert health.size > 0 and not health.problems and not health.fix
    with Store.open_readonly(tmp_path) as store:
        assert health.state_id is not None and health.state_id == store.state_id()


def test_no_database_is_healthy_and_says_so(tmp_path: Path) -> None:
    health = check(tmp_path / "nothing-yet")
    assert health.ok and health.verdict == "missing"
    assert not (tmp_path / "nothing-yet").exists()  # read-only: nothing created


def test_ruined_pages_are_found_by_the_integrity_check(tmp_path: Path) -> None:
    db = filled(tmp_path)
    data = bytearray(db.read_bytes())
    for offset in range(4096 * 3 + 100, len(data), 4096):  # inside each page after the schema
        data[offset : offset + 64] = b"\xff" * 64
    db.write_bytes(bytes(data))
    health = check(tmp_path)
    assert not health.ok and health.verdict == "damaged", health
    assert health.problems
    assert f"mv {db} {db}.damaged" in health.fix and "`reconciler apply`" in health.fix


def test_garbage_and_a_foreign_layout_are_damage(tmp_path: Path) -> None:
    db = filled(tmp_path)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("ALTER TABLE runs DROP COLUMN turns")
    conn.close()
    health = check(tmp_path)
    assert health.verdict == "damaged" and "table runs has columns" in health.problems[0]
    db.write_bytes(os.urandom(4096))
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    health = check(tmp_path)
    assert health.verdict == "damaged" and health.problems == ("file is not a database",)


def test_a_newer_schema_is_unusable_not_damaged(tmp_path: Path) -> None:
    db = filled(tmp_path)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    health = check(tmp_path)
    assert health.verdict == "unusable" and "upgrade reconciler" in health.fix


WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from reconciler.state import Store
    with Store.open(Path(sys.argv[1])) as store:
        n = 0
        while True:
            n += 1
            with store.transaction() as tx:  # one event and one meta value per transaction
                tx.add_event(None, "tick", f"tick {n} " + "y" * 500)
                tx.set_meta("ticks", str(n))
    """
)


def test_a_backup_is_one_consistent_moment_while_a_writer_works(tmp_path: Path) -> None:
    state = tmp_path / "state"
    Store.open(state).close()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(state)], env=env)
    try:
        with Store.open_readonly(state) as reader:
            while reader.serial() < 300:  # wait for the writer to be well under way
                assert writer.poll() is None, "the writer died"
            for i in range(5):
                copy = tmp_path / f"backup-{i}.db"
                size = reader.backup(copy)
                assert copy.stat().st_size == size
                assert copy.stat().st_mode & 0o777 == 0o600
                conn = sqlite3.connect(f"{copy.as_uri()}?mode=ro", uri=True)
                events = conn.execute("SELECT count(*) FROM events").fetchone()[0]
                serial = conn.execute("SELECT value FROM serial").fetchone()[0]
                ticks = conn.execute("SELECT value FROM meta WHERE key = 'ticks'").fetchone()[0]
                assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
                conn.close()
                assert events == serial == int(ticks) >= 300, (events, serial, ticks)
        assert writer.poll() is None  # it was writing all along
    finally:
        writer.kill()
        writer.wait(timeout=10)
    # a backup is a state database the reconciler opens as it is
    restored = tmp_path / "restored"
    restored.mkdir()
    (tmp_path / "backup-4.db").rename(restored / "state.db")
    with Store.open(restored) as store:
        assert store.serial() == len(store.events(limit=100_000))


def test_a_backup_replaces_a_symlink_planted_at_its_path(tmp_path: Path) -> None:
    filled(tmp_path / "state")
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    target = tmp_path / "out" / "backup.db"
    target.parent.mkdir()
    target.symlink_to(victim)
    with Store.open_readonly(tmp_path / "state") as store:
        store.backup(target)
    assert victim.read_text() == "precious\n"
    assert not target.is_symlink() and target.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in target.parent.iterdir()) == ["backup.db"]  # no temp left


def test_a_backup_of_nothing_or_to_nowhere_is_a_sentence(tmp_path: Path) -> None:
    with Store.open_readonly(tmp_path / "empty") as store, pytest.raises(StateError) as info:
        store.backup(tmp_path / "b.db")
    assert "there is no state database at" in str(info.value)
    filled(tmp_path / "state")
    with Store.open_readonly(tmp_path / "state") as store, pytest.raises(StateError) as info:
        store.backup(tmp_path / "no" / "such" / "dir" / "b.db")
    assert "cannot be written" in str(info.value) and "directory that exists" in str(info.value)


def test_the_state_directory_check(tmp_path: Path) -> None:
    state = tmp_path / "state"
    found = check_dir(state)
    assert found.ok and "not created yet" in found.detail
    state.mkdir(mode=0o700)
    found = check_dir(state)
    assert found.ok and "mode 700" in found.detail and " free on " in found.detail
    state.chmod(0o777)
    found = check_dir(state)
    assert not found.ok and "mode 777" in found.detail and f"chmod 700 {state}" in found.fix
    state.chmod(0o700)
    found = check_dir(state, min_free=1 << 60)
    assert not found.ok and "room to grow" in found.detail and "free some space" in found.fix
    (tmp_path / "file").write_text("")
    assert not check_dir(tmp_path / "file").ok
