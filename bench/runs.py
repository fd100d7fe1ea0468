"""Reading what a lane's runs leave on disk (``pid.json``, ``exit.json``) and waiting for it.

A run supervisor records itself in ``<workspaceRoot>/.runs/<task>/<attempt>.<iteration>/pid.json``
(its pid, its start time in clock ticks, and its agent's pid once started); a process is the same
one when its pid and start time in ``/proc`` match, the identity check the node uses.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def files_json(path: Path | str) -> dict[str, object] | None:
    """The JSON object in ``path``, or None while it is missing or not yet whole."""
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_fingerprint(pid_json: Path | str) -> tuple[int, int] | None:
    """The supervisor's (pid, start time) from its ``pid.json``, or None."""
    data = files_json(pid_json)
    if data is None:
        return None
    pid, start_time = data.get("pid"), data.get("start_time")
    if not isinstance(pid, int) or not isinstance(start_time, int):
        return None
    return pid, start_time


def agent_pid_of(pid_json: Path) -> int | None:
    """The agent's pid once the supervisor has started it, else None."""
    value = (files_json(pid_json) or {}).get("agent_pid")
    return value if isinstance(value, int) else None


def alive(pid: int, start_time: int) -> bool:
    """The process with this pid started at ``start_time`` (clock ticks) and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return False
    fields = raw.rpartition(b")")[2].split()
    return len(fields) > 19 and int(fields[19]) == start_time and fields[0] not in (b"Z", b"X")


def present(path: Path) -> bool | None:
    """True once ``path`` exists, else None (a probe for ``wait_for``)."""
    return path.exists() or None


def wait_for(probe: Callable[[], T | None], timeout: float, interval: float = 0.01) -> T | None:
    """The first value of ``probe`` that is not None, asking every ``interval`` seconds; None
    when ``timeout`` seconds passed without one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value is not None:
            return value
        time.sleep(interval)
    return None


def busy_seconds() -> float:
    """CPU seconds this machine has spent busy (all cores, from /proc/stat)."""
    with open("/proc/stat", encoding="ascii") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle and iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")
