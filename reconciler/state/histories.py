"""What the writer keeps of the rows every pass reads: every task's record and every task's
settled runs. Kept from pass to pass and brought up to date task by task (the store's change
log says which tasks changed), never read whole again while the state changes only under this
process.

A pass over 100,000 tasks reads 100,000 task rows and, once they are done, 100,000 history rows:
read whole, that is most of a second of SQLite and object making after every pass that changed
anything at all, where a pass changes a few. ``Version.patched`` makes the next version from the
last one and the changed tasks' rows alone, and says which tasks changed (``changed``) since
which version (``base``), so that what is made of the rows can be brought up to date the same
way (``reconciler.observe``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Self, TypeVar

V = TypeVar("V")


@dataclass(frozen=True)
class HistoryRow:
    """A task's settled runs in one lane and repository: how many, the last of them, and what
    they spent (``Transaction.settle_run`` adds each run once)."""

    task: str
    lane: str
    repo: str
    runs: int
    attempt: int
    iteration: int
    cost_usd: float
    tokens: int


class Version(Mapping[str, V]):
    """Rows by task, and how this version came about: read whole (``base`` None), or patched
    from ``base``, the version before, in the tasks ``changed``. Only the last step is kept: a
    version lets go of its base once it is patched in turn, so versions never chain."""

    __slots__ = ("_items", "base", "changed")

    def __init__(
        self,
        items: dict[str, V],
        base: Version[V] | None = None,
        changed: frozenset[str] = frozenset(),
    ) -> None:
        self._items = items
        self.base = base
        self.changed = changed

    def patched(self, changed: Iterable[str], fresh: Mapping[str, V]) -> Self:
        """The next version: the ``changed`` tasks' values are ``fresh``'s (a task it lacks has
        none now). This version lets go of its own base."""
        tasks = frozenset(changed)
        items = dict(self._items)
        for task in tasks:
            value = fresh.get(task)
            if value is None:
                items.pop(task, None)
            else:
                items[task] = value
        self.base = None
        return type(self)(items, self, tasks)

    def __getitem__(self, task: str) -> V:
        return self._items[task]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


class HistoryRows(Version[tuple[HistoryRow, ...]]):
    """The history rows by task: a task's rows, one per lane and repository it ran in."""

    __slots__ = ()

    @staticmethod
    def by_task(rows: Iterable[HistoryRow]) -> dict[str, tuple[HistoryRow, ...]]:
        grouped: dict[str, tuple[HistoryRow, ...]] = {}
        for row in rows:
            grouped[row.task] = (*grouped.get(row.task, ()), row)
        return grouped

    @classmethod
    def of(cls, rows: Iterable[HistoryRow]) -> HistoryRows:
        return cls(cls.by_task(rows))

    def rows(self) -> Iterator[HistoryRow]:
        """Every row, task after task (in no particular order)."""
        for rows in self._items.values():
            yield from rows
