"""``reconciler run`` without its interval: apply passes back to back through the engine."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from reconciler.engine import Engine, PassResult
from reconciler.plan import ActionKind, Phase

STARTS = (ActionKind.START, ActionKind.RETRY, ActionKind.ITERATE)
TERMINAL = (Phase.DONE.value, Phase.FAILED.value)


@dataclass
class DriveResult:
    wall: float
    passes: list[float]
    phases: Counter[str]
    failures: list[str]
    finished: bool
    starts: int


def drive(
    engine: Engine, n: int, limit: float, stop_when: Callable[[Counter[str]], bool] | None = None
) -> DriveResult:
    """Apply passes until all ``n`` tasks ended (or ``stop_when`` holds, or ``limit`` seconds
    passed); between passes with nothing to do, a short nap, not to spin on a small machine."""
    passes: list[float] = []
    failures: list[str] = []
    phases: Counter[str] = Counter()
    starts = 0
    with engine.locked(None) as store:
        t0 = time.perf_counter()
        while True:
            p0 = time.perf_counter()
            result = engine.apply(engine.load(), store)
            passes.append(time.perf_counter() - p0)
            failures += failed(result)
            starts += sum(1 for a in result.plan.actions if a.kind in STARTS)
            phases = Counter(s.phase.value for s in result.plan.tasks)
            finished = sum(phases[p] for p in TERMINAL) == n and not unrecorded(result)
            if finished or (stop_when is not None and stop_when(phases)):
                break
            if time.perf_counter() - t0 > limit:
                break
            if result.plan.empty:
                time.sleep(0.02)
        wall = time.perf_counter() - t0
    return DriveResult(wall, passes, phases, failures, finished, starts)


def failed(result: PassResult) -> list[str]:
    """The pass's actions that failed, as ``kind task: message``."""
    report = result.report
    return [f"{a.kind.value} {a.task}: {m}" for a, m in report.failed] if report else []


def unrecorded(result: PassResult) -> bool:
    """A task planned as done is only done once its ``complete`` action went through."""
    report = result.report
    return report is not None and any(a.kind is ActionKind.COMPLETE for a, _ in report.failed)
