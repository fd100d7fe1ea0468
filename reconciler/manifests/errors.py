"""Manifest errors as users see them: ``path:line:col: message`` plus a hint saying how to fix it.

Pure values, no I/O. A broken manifest never produces a traceback: the loader collects every
problem it finds into one :class:`ManifestErrors`, and the CLI prints ``str()`` of it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class ManifestError:
    """One problem at one position (1-based line and column) of one control-repo file."""

    path: str
    line: int
    column: int
    message: str
    hint: str = ""

    def __str__(self) -> str:
        text = f"{self.path}:{self.line}:{self.column}: {self.message}"
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text

    @property
    def position(self) -> str:
        """``path:line:col`` alone."""
        return f"{self.path}:{self.line}:{self.column}"


SHOWN = 50  # errors printed before the count of the rest


class ManifestErrors(Exception):
    """Every problem found in one load, sorted by file and position (duplicates dropped)."""

    def __init__(self, errors: Iterable[ManifestError]) -> None:
        unique = list(dict.fromkeys(errors))
        self.errors: list[ManifestError] = sorted(unique, key=lambda e: (e.path, e.line, e.column))
        super().__init__(self.summary())

    def summary(self) -> str:
        n = len(self.errors)
        files = len({e.path for e in self.errors})
        return (
            f"{n} manifest error{'s' if n != 1 else ''} in {files} file{'s' if files != 1 else ''}"
        )

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors)

    def shown(self, limit: int = SHOWN) -> list[str]:
        """The first ``limit`` errors as a person reads them, then how many more there are: a
        broken generator of 100,000 documents is one screen, not 200,000 lines."""
        lines = [str(e) for e in self.errors[:limit]]
        rest = self.errors[limit:]
        if rest:
            files = len({e.path for e in rest})
            lines.append(
                f"… and {len(rest)} more error{'s' if len(rest) != 1 else ''} in "
                f"{files} file{'s' if files != 1 else ''} (fix these first)"
            )
        return lines

    def __iter__(self) -> Iterator[ManifestError]:
        return iter(self.errors)

    def __len__(self) -> int:
        return len(self.errors)
