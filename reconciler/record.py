"""The reconciler's record of a run: the one shape the state stores, observation brings up to date
and apply writes back.

A run is ``(task, attempt, iteration)``. Its record holds what the reconciler decided and learnt
of it: where it runs, its process, its end, its verdict, its progress and its spend (with the
input and output tokens apart). What only the lane can tell right now (is it alive, its parsed
result, its worktree) is not recorded: that is the lane's report (``protocol.RunObs``), merged
with the record once per pass by ``reconciler.observe``.

Pure: a frozen dataclass, no I/O. The state maps it to its ``runs`` table field for column.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

RunId = tuple[str, int, int]  # (task, attempt, iteration)
Verdict = Literal["succeeded", "failed", "crashed", "stalled", "stopped"]
Mark = Literal["crashed", "stalled", "stopped"]


@dataclass(frozen=True)
class Run:
    """One agent run. ``pid``/``boot_id``/``start_time`` fingerprint its process; ``outcome`` is
    the verdict on it, ``mark`` set when the reconciler (not the run) decided its fate."""

    task: str
    attempt: int
    iteration: int
    generation: str
    lane: str
    repo: str
    run_dir: str  # "" until the lane has started it
    started_at: float  # the reconciler's clock
    ended_at: float | None = None
    exit_code: int | None = None
    signal: int | None = None
    outcome: Verdict | None = None
    mark: Mark | None = None
    marked_at: float | None = None
    session_id: str | None = None
    cost_usd: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    pid: int | None = None
    boot_id: str | None = None
    start_time: int | None = None
    failures: str | None = None  # why the run failed its success criteria, one per line
    progress_offset: int | None = None  # where the agent's last own event ended in its output
    progress_at: float | None = None  # when that offset last moved (the reconciler's clock)
    turns: int | None = None  # model responses (so far, while the run goes on)
    tool_calls: int | None = None  # tools, commands and edits the agent ran
    # Over for good and of an earlier generation: state keeps its row (``describe``, ``logs``),
    # but a pass reads it only as part of its task's history (``Transaction.settle_run``).
    settled: bool = False

    @property
    def key(self) -> str:
        return f"{self.task}/{self.attempt}.{self.iteration}"

    @property
    def tokens(self) -> int:
        """Input plus output tokens (0 when none were reported)."""
        return (self.input_tokens or 0) + (self.output_tokens or 0)

    @property
    def judged(self) -> bool:
        """Whether the reconciler has its verdict on the run (an outcome, or its own mark)."""
        return self.outcome is not None or self.mark is not None

    @property
    def pruned(self) -> bool:
        """Settled, and its directory removed after the retention period."""
        return self.settled and not self.run_dir

    @property
    def never_started(self) -> bool:
        """Recorded as about to start (the intent) and nothing more: no process, no run
        directory, no end, no verdict. When its reachable lane does not report it either, the
        start never happened (the reconciler died before spawning it)."""
        return self.pid is None and not self.run_dir and self.ended_at is None and not self.judged

    def changes(self, before: Run) -> dict[str, object]:
        """The fields whose values differ from ``before``'s (the same run's older record)."""
        if self == before:
            return {}
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != getattr(before, f.name)
        }
