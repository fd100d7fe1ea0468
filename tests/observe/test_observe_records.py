"""The task records observe hands the planner, and the rows the store reads them from, are
built without their dataclass constructors: the same values as the constructors give."""

from __future__ import annotations

from pathlib import Path

from reconciler.observe import _record
from reconciler.plan import FailedAction, TaskRecord
from reconciler.state import Store, TaskRow

FAILED = TaskRow(
    name="b",
    lane="l",
    repo="r",
    first_seen=2.0,
    done=True,
    done_generation="g",
    pr_number=4,
    failed_action="open-pr",
    failed_message="refused",
    failed_at=3.0,
    failed_count=2,
)


def test_rows_read_back_are_the_rows_written_with_their_booleans(tmp_path: Path) -> None:
    rows = [
        TaskRow(name="a", lane="l", repo="r", first_seen=1.0),
        FAILED,
    ]
    with Store.open(tmp_path) as store, store.transaction() as tx:
        for row in rows:
            tx.upsert_task(row)
    with Store.open_readonly(tmp_path) as reader:
        read = reader.tasks()
    assert read == {row.name: row for row in rows}
    assert read["b"].done is True and read["a"].done is False
    assert repr(read["b"]) == repr(FAILED)


def test_a_record_is_the_record_its_constructor_makes() -> None:
    plain = TaskRow(name="a", lane="l", repo="r", first_seen=1.0, pr_number=3)
    assert _record(plain) == TaskRecord("a", "l", "r", 1.0, pr_number=3)
    made = TaskRecord(
        "b", "l", "r", 2.0, True, "g", 4, failed=FailedAction("open-pr", "refused", 3.0, 2)
    )
    assert _record(FAILED) == made and repr(_record(FAILED)) == repr(made)
