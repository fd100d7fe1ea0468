"""The task records observe hands the planner, and the rows the store reads them from, are
built without their dataclass constructors: the same values as the constructors give."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reconciler.manifests.models import Desired, TaskSpec, make_task
from reconciler.observe import _history_of, _record, owners_of
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
