"""What the writer keeps of the rows every pass reads: every task's record and every task's
settled runs. Kept from pass to pass and brought up to date task by task (the store's change
log says which tasks changed), never read whole again while the state changes only under this
process.

A pass over 100,000 tasks reads 100,000 task rows and, once they are done, 100,000 history rows:
read whole, that is most of a second of SQLite and object making after every pass that changed
anything at all, where a pass changes a few. ``Version.patched`` makes the next version from the
last one and the changed tasks' rows alone, and a journal shared by the versions of one reading
says which tasks changed between any two of the last ones (``Version.changed_since``), so that
what is made of the rows can be brought up to date the same way (``reconciler.observe``).
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


JOURNAL = 64  # patches a journal remembers: a reader more versions behind reads whole


class Journal:
    """The names each patch of one kind of rows changed, the last ``JOURNAL`` of them, shared
    by the versions of one reading (a read of every row starts another journal)."""

    __slots__ = ("entries",)

    def __init__(self) -> None:
        self.entries: list[tuple[int, frozenset[str]]] = []  # (the version's seq, its names)


class Version(Mapping[str, V]):
    """Rows by task, one version of them: read whole (``seq`` 0 of a new journal), or patched
    from the one before in the tasks its journal names. ``changed_since`` tells a reader that
    kept what it made of an earlier version which tasks to make anew; the versions keep no
    reference to each other, so an old one is freed once no reader holds it."""

    __slots__ = ("_items", "journal", "seq")

    def __init__(self, items: dict[str, V], journal: Journal | None = None, seq: int = 0) -> None:
        self._items = items
        self.journal = journal if journal is not None else Journal()
        self.seq = seq

    def patched(self, changed: Iterable[str], fresh: Mapping[str, V]) -> Self:
        """The next version: the ``changed`` tasks' values are ``fresh``'s (a task it lacks has
        none now)."""
        tasks = frozenset(changed)
        items = dict(self._items)
        for task in tasks:
            value = fresh.get(task)
            if value is None:
                items.pop(task, None)
            else:
                items[task] = value
        seq = self.seq + 1
        entries = self.journal.entries
        entries.append((seq, tasks))
        del entries[:-JOURNAL]
        return type(self)(items, self.journal, seq)

    def changed_since(self, older: Version[V]) -> frozenset[str] | None:
        """The tasks whose values differ between ``older`` and this version, when both are of
        one reading and the journal still holds every patch between them; else None (make
        everything anew)."""
        if older.journal is not self.journal or older.seq > self.seq:
            return None
        wanted = [names for seq, names in self.journal.entries if older.seq < seq <= self.seq]
        if len(wanted) != self.seq - older.seq:
            return None  # patches the journal no longer holds
        return frozenset().union(*wanted)

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
