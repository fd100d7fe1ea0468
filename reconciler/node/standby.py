"""The lane's standby queue: runs prepared in full ahead of a free slot, taken by the supervisor
of the next run of the lane to end, so that a slot passes from one agent to the next without
waiting for a pass.

The plan grants a standby start to a full lane's next waiting runs, at most one per busy slot
(``reconciler.plan.slots``); apply has the node prepare each as it would a start (worktree,
prompt, environment, ``run.json``), but in a directory of the queue, ``<root>/.runs/.standby/
<order>~<task>~<attempt>.<iteration>~<generation>``, and starts no supervisor. A supervisor whose
agent ended on its own takes the entry lowest in order (``claim``): it locks the entry's
supervisor lock, moves the entry to its place among the runs (``<root>/.runs/<task>/<attempt>.
<iteration>``) by one ``rename``, records where its slot went (``handoff.json`` in its own run),
and forks the new run's supervisor, which starts the agent once the old one is gone. A pass
withdraws an entry it no longer wants (its task changed, was paused or removed) by another
``rename`` of the same entry, so exactly one of a withdrawal and a start takes it; a pass that
finds a free slot starts the entry itself the same way.

Standard library only (and stdlib-only modules): the supervisor imports it.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil

from reconciler.node import files

STANDBY_DIR = ".standby"  # under the lane's .runs: no task is named with a dot
_TASK = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_RUN = re.compile(r"^(\d+)\.(\d+)$")
_GENERATION = re.compile(r"^[0-9A-Za-z_-]{1,64}$")
_ORDER = re.compile(r"^[0-9.]{1,64}$")


class Entry:
    """One queue entry, read from its name."""

    __slots__ = ("attempt", "generation", "iteration", "name", "order", "task")

    def __init__(
        self, name: str, order: str, task: str, *, attempt: int, iteration: int, generation: str
    ) -> None:
        self.name = name
        self.order = order
        self.task = task
        self.attempt = attempt
        self.iteration = iteration
        self.generation = generation

    @property
    def run(self) -> str:
        return f"{self.attempt}.{self.iteration}"


def entry_name(order: str, task: str, attempt: int, iteration: int, generation: str) -> str:
    """The queue entry's name; ValueError for a part that would not read back."""
    name = f"{order}~{task}~{attempt}.{iteration}~{generation}"
    if parse(name) is None:
        raise ValueError(f"not a standby entry: {name!r}")
    return name


def parse(name: str) -> Entry | None:
    parts = name.split("~")
    if len(parts) != 4:
        return None
    order, task, run, generation = parts
    m = _RUN.match(run)
    if not (m and _ORDER.match(order) and _TASK.match(task) and _GENERATION.match(generation)):
        return None
    attempt, iteration = int(m.group(1)), int(m.group(2))
    return Entry(name, order, task, attempt=attempt, iteration=iteration, generation=generation)


def queue_dir(runs_root: str) -> str:
    return os.path.join(runs_root, STANDBY_DIR)


def entries(runs_root: str) -> list[Entry]:
    """The queue, lowest order first (what a claim takes first); entries being withdrawn and
    names that are no entry are left out."""
    try:
        names = os.listdir(queue_dir(runs_root))
    except OSError:
        return []
    found = [e for n in names if not n.startswith(".") and (e := parse(n)) is not None]
    found.sort(key=lambda e: e.name)
    return found


def claim(runs_root: str) -> tuple[str, int] | None:
    """Take the first entry of the queue that can be taken: its run directory, now in place,
    and the descriptor of its supervisor lock, held (for the new supervisor to keep); None
    when the queue is empty (or every entry is taken by someone else meanwhile)."""
    for entry in entries(runs_root):
        taken = take(runs_root, entry)
        if taken is not None:
            return taken
    return None


def take(runs_root: str, entry: Entry) -> tuple[str, int] | None:
    """Move ``entry`` to its place among the runs, its supervisor lock held first (so the run
    is never without a live supervisor in the eyes of a pass); None when it is gone, taken or
    its place is occupied."""
    source = os.path.join(queue_dir(runs_root), entry.name)
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        fd = os.open(os.path.join(source, files.SUPERVISOR_LOCK), flags, 0o600)
    except OSError:
        return None  # withdrawn or taken since it was listed
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        task_dir = os.path.join(runs_root, entry.task)
        os.makedirs(task_dir, mode=0o700, exist_ok=True)
        target = os.path.join(task_dir, entry.run)
        if os.path.lexists(target):  # a run is there already: stale, a pass withdraws it
            raise FileExistsError(target)
        os.rename(source, target)
    except OSError:  # BlockingIOError: another claim holds it; ENOENT: withdrawn meanwhile
        os.close(fd)
        return None
    return target, fd


def withdraw(runs_root: str, entry: Entry) -> bool:
    """Take ``entry`` out of the queue unstarted; False when a start took it first. What it
    held is removed."""
    queue = queue_dir(runs_root)
    gone = os.path.join(queue, f".withdrawn-{os.getpid()}-{entry.name}")
    try:
        os.rename(os.path.join(queue, entry.name), gone)
    except FileNotFoundError:
        return False
    shutil.rmtree(gone, ignore_errors=True)
    return True
