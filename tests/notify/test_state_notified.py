"""The state's record of what was notified: schema 6 adds it to a database of schema 5 without
touching the rest, and rewriting the same occurrence changes nothing."""

from __future__ import annotations

import sqlite3

from reconciler.state import NOTIFY_SINCE, SCHEMA_VERSION, Store
from reconciler.state.store import MIGRATIONS


def test_schema_6_adds_the_record_of_notifications_to_a_schema_5_database(tmp_path):
    raw = sqlite3.connect(tmp_path / "state.db")
    for step in MIGRATIONS[:5]:
        raw.executescript(step)
    raw.execute("PRAGMA user_version = 5")
    raw.execute("INSERT INTO tasks (name, lane, repo, first_seen) VALUES ('t', 'l', 'r', 100)")
    raw.execute("INSERT INTO events (at, task, kind, message) VALUES (1, 't', 'start', 'x')")
    raw.commit()
    raw.close()
    assert SCHEMA_VERSION >= 6
    with Store.open(tmp_path) as store:
        assert store.notified() == {} and list(store.tasks()) == ["t"]
        assert [e.message for e in store.events()] == ["x"]
        with store.transaction() as tx:
            tx.set_notified("t", "failed", "g1/3", 200.0)
            tx.set_notified(":control", "control-broken", "ok", 200.0)
            tx.set_meta(NOTIFY_SINCE, "2026-01-01T00:00:00Z")
        serial = store.serial()
        with store.transaction() as tx:  # the same occurrence again: no change
            tx.set_notified("t", "failed", "g1/3", 300.0)
        assert store.serial() == serial
        with store.transaction() as tx:
            tx.set_notified("t", "failed", "g2/1", 300.0)
        assert store.serial() == serial + 1
    with Store.open_readonly(tmp_path) as reader:
        assert reader.notified() == {("t", "failed"): "g2/1", (":control", "control-broken"): "ok"}
    with Store.open(tmp_path) as store:
        with store.transaction() as tx:
            tx.clear_notified()
        assert store.notified() == {}
