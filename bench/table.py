"""The table the bench prints: one row per figure, its target and whether it was met."""

from __future__ import annotations

import statistics
import sys
from dataclasses import dataclass, field


@dataclass
class Row:
    name: str
    value: str
    target: str = "info"
    ok: bool | None = None


@dataclass
class Table:
    rows: list[Row] = field(default_factory=list)
    # per-item costs the sections measured, for the scale simulation (seconds, counts)
    measured: dict[str, float] = field(default_factory=dict)

    def measure(self, key: str, value: float) -> None:
        self.measured[key] = value

    def add(self, name: str, value: str, target: str = "info", ok: bool | None = None) -> None:
        self.rows.append(Row(name, value, target, ok))
        mark = "" if ok is None else (" ok" if ok else " MISS")
        print(f"  · {name}: {value} (target {target}){mark}", file=sys.stderr, flush=True)

    def render(self) -> str:
        head = ("name", "value", "target", "ok?")
        body = [
            (r.name, r.value, r.target, "-" if r.ok is None else ("yes" if r.ok else "NO"))
            for r in self.rows
        ]
        widths = [max(len(line[i]) for line in [head, *body]) for i in range(4)]
        lines = [" | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in body]
        sep = "-+-".join("-" * w for w in widths)
        header = " | ".join(c.ljust(w) for c, w in zip(head, widths, strict=True))
        return "\n".join([header, sep, *lines]) + "\n"

    @property
    def misses(self) -> list[Row]:
        return [r for r in self.rows if r.ok is False]


def log(message: str) -> None:
    """Progress for whoever watches the bench: on stderr, the table alone goes to stdout."""
    print(message, file=sys.stderr, flush=True)


def median(values: list[float]) -> float:
    return statistics.median(values)
