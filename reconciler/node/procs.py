"""Process identity and termination for the lane: boot id, start time, fingerprints, kill.

A pid alone is not an identity (pids are reused, ``pid_max`` is small), so a process is named
by (boot id, pid, start time) read from ``/proc``. Linux only. Must not start processes, and
never signals a process whose identity it has not just re-checked.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import time
from collections.abc import Callable

TYPE_CHECKING = False  # typing's own, without importing typing: the supervisor imports this module
if TYPE_CHECKING:  # ... and must not pay for pydantic
    from reconciler.protocol import Fingerprint

_POLL = 0.02


@functools.cache
def boot_id() -> str:
    """This boot's random id; a reboot changes it, which invalidates every recorded pid."""
    with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
        return f.read().strip()


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of ``/proc/PID/stat`` from field 3 (state) on; None when the process is gone.

    The command name (field 2) may contain spaces and parentheses, so split after the last ')'.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    _, sep, rest = raw.rpartition(b")")
    if not sep:
        return None
    return rest.decode("ascii", "replace").split()


def start_time(pid: int) -> int | None:
    """Field 22 of ``/proc/PID/stat``: start time in clock ticks since boot."""
    fields = _stat_fields(pid)
    if fields is None or len(fields) < 20:
        return None
    return int(fields[19])


def _state(fields: list[str]) -> str:
    return fields[0] if fields else "?"


def running(pid: int, started: int) -> bool:
    """Whether the process ``pid`` that started at ``started`` still runs (not a zombie)."""
    fields = _stat_fields(pid)
    return (
        fields is not None
        and len(fields) >= 20
        and int(fields[19]) == started
        and _state(fields) not in ("Z", "X", "x")
    )


def fingerprint(pid: int) -> Fingerprint | None:
    """The identity of a running process, or None when there is no such process."""
    from reconciler.protocol import Fingerprint

    st = start_time(pid)
    if st is None:
        return None
    return Fingerprint(boot_id=boot_id(), pid=pid, start_time=st)


def is_alive(fp: Fingerprint) -> bool:
    """True when the fingerprinted process still runs: same boot, same start time, not a zombie."""
    if fp.boot_id != boot_id():
        return False
    # Z (zombie) and X (dead) have exited; only their parent has not reaped them yet.
    return running(fp.pid, fp.start_time)


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``."""
    members = []
    for pid in _all_pids():
        fields = _stat_fields(pid)
        if fields is None or len(fields) < 3:
            continue
        if fields[2] == str(pgid) and _state(fields) not in ("Z", "X", "x"):
            members.append(pid)
    return members


def pids_with_env(name: str, value: str) -> list[int]:
    """Live processes (readable by us) whose environment holds ``name=value``.

    Children that called ``setsid`` escape their process group but keep the environment the
    supervisor gave them, so this finds what a group kill misses.
    """
    return pids_by_env(name).get(value, [])


def pids_by_env(name: str) -> dict[str, list[int]]:
    """Live processes (readable by us) that carry ``name`` in their environment, by its value:
    one pass over /proc for any number of values."""
    prefix = name.encode() + b"="
    found: dict[str, list[int]] = {}
    me = os.getpid()
    for pid in _all_pids():
        if pid == me:
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                entries = f.read().split(b"\0")
        except OSError:
            continue  # another user's process, or gone
        value = next((e[len(prefix) :] for e in entries if e.startswith(prefix)), None)
        if value is None:
            continue
        fields = _stat_fields(pid)
        if fields is not None and _state(fields) not in ("Z", "X", "x"):
            found.setdefault(value.decode("utf-8", "surrogateescape"), []).append(pid)
    return found


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL)


def kill_group(pgid: int, grace: float) -> bool:
    """Terminate process group ``pgid``: TERM, up to ``grace`` seconds, then KILL.

    Returns whether any member was alive. The caller must have checked that ``pgid`` still
    belongs to the run (fingerprint of its leader, or members it found itself).
    """
    if not group_members(pgid):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    if not wait_until(lambda: not group_members(pgid), grace):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        wait_until(lambda: not group_members(pgid), 5.0)
    return True


def kill_processes(fingerprints: list[Fingerprint], grace: float) -> bool:
    """TERM each still-matching process, wait up to ``grace``, KILL the survivors."""

    def alive() -> list[Fingerprint]:
        return [fp for fp in fingerprints if is_alive(fp)]

    targets = alive()
    if not targets:
        return False
    for fp in targets:
        with contextlib.suppress(ProcessLookupError):
            os.kill(fp.pid, signal.SIGTERM)
    if not wait_until(lambda: not alive(), grace):
        for fp in alive():  # re-checked just now, so a reused pid is never hit
            with contextlib.suppress(ProcessLookupError):
                os.kill(fp.pid, signal.SIGKILL)
        wait_until(lambda: not alive(), 5.0)
    return True
