"""State: the only writer of state is the reconciler holding the state lock.

``StateLock`` (``flock`` on ``<state>/lock``) decides who that is; ``Store`` is the SQLite (WAL)
database of tasks, runs, the append-only event log and meta values, with a ``serial`` that goes up
by one on every committed change. This package must not import ``reconciler.node``, ``lanes``,
``plan``, ``apply``, ``observe`` or ``cli``.
"""

from reconciler.state.damage import (
    StateBusy,
    StateDamaged,
    StateDenied,
    StateError,
    StateFull,
    state_dir_problem,
)
from reconciler.state.health import MIN_FREE, DirCheck, Health, check, check_dir
from reconciler.state.histories import HistoryRows, Version
from reconciler.state.lock import LockHeld, LockHolder, StateLock, argv_summary, read_holder
from reconciler.state.store import (
    DB_FILE,
    LAST_REVISION,
    NOTIFY_SINCE,
    SCHEMA_VERSION,
    STATE_ID,
    EventRow,
    HistoryRow,
    Run,
    SpendRow,
    Store,
    TaskRow,
    Transaction,
)

__all__ = [
    "DB_FILE",
    "LAST_REVISION",
    "MIN_FREE",
    "NOTIFY_SINCE",
    "SCHEMA_VERSION",
    "STATE_ID",
    "DirCheck",
    "EventRow",
    "Health",
    "HistoryRow",
    "HistoryRows",
    "LockHeld",
    "LockHolder",
    "Run",
    "SpendRow",
    "StateBusy",
    "StateDamaged",
    "StateDenied",
    "StateError",
    "StateFull",
    "StateLock",
    "Store",
    "TaskRow",
    "Transaction",
    "Version",
    "argv_summary",
    "check",
    "check_dir",
    "read_holder",
    "state_dir_problem",
]
