"""The task records observe hands the planner, and the rows the store reads them from, are
built without their dataclass constructors: the same values as the constructors give."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reconciler.manifests.models import Desired, TaskSpec, make_task
from reconciler.observe import _history, _history_of, _record, _records_of, owners_of
from reconciler.plan import FailedAction, History, TaskRecord
from reconciler.record import Run
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


def test_the_histories_of_one_state_and_one_revision_are_made_once(tmp_path: Path) -> None:
    """A pass over 100,000 done tasks makes 100,000 histories: they are kept while the state's
    rows and the manifests' tasks are the very objects they were made from."""
    with Store.open(tmp_path) as store:
        with store.transaction() as tx:
            for name in ("kept", "gone"):
                tx.upsert_task(TaskRow(name=name, lane="l", repo="r", first_seen=1.0))
                tx.upsert_run(
                    Run(name, 1, 1, "g", "l", "r", f"/w/{name}/1.1", started_at=1.0, cost_usd=0.5)
                )
                tx.settle_run(name, 1, 1)
        spec = TaskSpec.model_validate({"lane": "l", "repo": "r", "agent": "x", "prompt": "p"})
        desired = Desired(revision="r1", tasks={"kept": make_task("kept", spec)})

        def made(desired: Desired) -> tuple[dict[str, History], dict[str, Any]]:
            return _history_of(store.histories(), desired, owners_of(desired, store.tasks()))

        first = made(desired)
        assert first == (
            {
                "kept": History(1, 1, 1, 0.5, 0),
                "gone": History(1, 1, 1, 0.5, 0),  # a removed task's owner is its record's
            },
            {"l": {"kept": (1, 1), "gone": (1, 1)}},
        )
        assert made(desired) is first
        # another revision that moves the task: its history in lane l is that lane's, not its
        moved = Desired(
            revision="r2", tasks={"kept": make_task("kept", spec.model_copy(update={"lane": "m"}))}
        )
        assert made(moved)[0] == {"gone": History(1, 1, 1, 0.5, 0)}
        # the state changes under the removed task (its record moves): made anew
        with store.transaction() as tx:
            tx.update_task("gone", lane="m")
        assert made(moved)[0] == {}


def test_the_histories_are_brought_up_to_date_in_the_tasks_that_changed(tmp_path: Path) -> None:
    """After a pass that settles a run, the histories are made anew for its task alone: the
    same as made whole, the other tasks' the very objects they were."""
    spec = TaskSpec.model_validate({"lane": "l", "repo": "r", "agent": "x", "prompt": "p"})
    desired = Desired(revision="r1", tasks={n: make_task(n, spec) for n in ("a", "b")})
    with Store.open(tmp_path) as store:

        def settle(name: str, attempt: int, lane: str = "l") -> None:
            with store.transaction() as tx:
                if store.task(name) is None:
                    tx.upsert_task(TaskRow(name=name, lane=lane, repo="r", first_seen=1.0))
                run = Run(name, attempt, 1, "g", lane, "r", "/w", started_at=1.0, cost_usd=0.5)
                tx.upsert_run(run)
                tx.settle_run(name, attempt, 1)

        def made() -> tuple[dict[str, History], dict[str, Any]]:
            return _history_of(store.histories(), desired, owners_of(desired, store.tasks()))

        def whole() -> tuple[dict[str, History], dict[str, Any]]:
            rows = store.histories()
            return _history(rows.rows(), owners_of(desired, store.tasks()))

        for name in ("a", "b"):
            settle(name, 1)
        settle("gone", 1, lane="m")  # a removed task, in another lane
        first, rows = made(), store.histories()
        settle("a", 2)
        second = made()
        assert store.histories().changed_since(rows) == frozenset({"a"})
        assert second == whole()
        assert second[0]["a"] == History(2, 2, 1, 1.0, 0) and second[0]["b"] is first[0]["b"]
        assert second[1] == {"l": {"a": (2, 1), "b": (1, 1)}, "m": {"gone": (1, 1)}}
        assert first[1]["l"]["a"] == (1, 1)  # the last pass's own stays as it was
        assert second[1]["m"] is first[1]["m"]  # a lane with no change: not copied
        with store.transaction() as tx:
            tx.delete_task("gone")
        third = made()
        assert third == whole() and "m" not in third[1]
        assert made() is third


def test_the_task_records_are_made_anew_only_for_the_tasks_that_changed(tmp_path: Path) -> None:
    with Store.open(tmp_path) as store:
        with store.transaction() as tx:
            for name in ("a", "b", "c"):
                tx.upsert_task(TaskRow(name=name, lane="l", repo="r", first_seen=1.0))
        first = _records_of(store.task_rows())
        assert _records_of(store.task_rows()) is first  # the same version: the same records
        with store.transaction() as tx:
            tx.update_task("a", pr_number=7)
            tx.delete_task("c")
        assert set(store.tasks()) == {"a", "b"}  # another reader (apply) makes a version
        with store.transaction() as tx:
            tx.update_task("a", pr_number=8)
        second = _records_of(store.task_rows())
        assert second == {name: _record(row) for name, row in store.tasks().items()}
        assert second["a"].pr_number == 8 and second["b"] is first["b"] and "c" not in second
        assert first["a"].pr_number is None and "c" in first  # the last pass's stays as it was
