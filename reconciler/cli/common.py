"""What several commands share: exit codes, the desired state a read command shows."""

from __future__ import annotations

import sys

from reconciler.cli.render import (
    err,
)
from reconciler.engine import Engine, UserError
from reconciler.lanes import LaneClient
from reconciler.manifests.models import Desired

EXIT_OK, EXIT_ERROR, EXIT_CHANGES, EXIT_LOCKED = 0, 1, 2, 75
# A read command answered for the last good revision: HEAD's manifests have errors (on stderr).
EXIT_LAST_GOOD = 3


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def readable(engine: Engine) -> Desired:
    """What a read command shows: HEAD's desired state, or the last good revision's when HEAD's
    manifests are broken, saying so on stderr (the command then exits 3)."""
    desired = engine.load_for_reading()
    if engine.fallback is not None:
        for line in engine.fallback.errors.shown():
            print(line, file=sys.stderr)
        err(engine.fallback.problem + " (the revision `run` reconciles meanwhile)")
    return desired


def lane_of(engine: Engine, desired: Desired, task: str) -> LaneClient:
    spec = desired.tasks.get(task)
    lane_name = spec.spec.lane if spec else None
    if lane_name is None:
        with engine.reading() as store:
            row = store.task(task)
        if row is None:
            raise UserError(f"no task named {task}; `reconciler status` lists the tasks")
        lane_name = row.lane
    if lane_name not in desired.lanes:
        raise UserError(f"task {task} belongs to lane {lane_name}, which is not in the manifests")
    return engine.lanes(desired)[lane_name]
