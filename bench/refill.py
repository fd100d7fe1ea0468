"""Agent killed → slot refilled: one slot and two long tasks; the first agent gets SIGKILL, then
apply passes run until the second task's run exists (target: within one pass of the killed run's
supervisor exiting)."""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from pathlib import Path

from bench.drive import drive
from bench.manifests import agent_doc, lane_doc, script, task_doc
from bench.options import Options
from bench.runs import agent_pid_of, alive, read_fingerprint, wait_for
from bench.sandbox import Sandbox
from bench.table import Table, log
from reconciler.engine import Context, Engine
from reconciler.plan import Phase

ROW = "agent killed → slot refilled"


class ExitWatch:
    """When a run's end became visible (``exit.json``) and when its supervisor was gone, seen
    from a side thread polling every 2 ms."""

    def __init__(self, run_dir: Path, supervisor: tuple[int, int], limit: float = 20.0) -> None:
        self.run_dir = run_dir
        self.supervisor = supervisor
        self.limit = limit
        self.marks: dict[str, float] = {}
        self._thread = threading.Thread(target=self._watch, name="exit-watch", daemon=True)
        self.started = 0.0

    def start(self) -> None:
        self.started = time.perf_counter()
        self._thread.start()

    def join(self) -> None:
        self._thread.join()

    def _watch(self) -> None:
        while "gone" not in self.marks and time.perf_counter() - self.started < self.limit:
            now = time.perf_counter()
            if "exit" not in self.marks and (self.run_dir / "exit.json").exists():
                self.marks["exit"] = now
            if not alive(*self.supervisor):
                self.marks["gone"] = now
            time.sleep(0.002)


def build(box: Sandbox) -> tuple[Engine, Path]:
    base = box.root / "refill"
    agent = script(base / "bin" / "long-agent", "#!/bin/sh\nexec sleep 60\n")
    checkout = box.repo(base / "src" / "repo")
    root = box.lane_root(base / "worktrees")
    files = {
        "lanes.yaml": lane_doc("one", 1, root, "repo", checkout, home=box.home),
        "agents.yaml": agent_doc("long", [str(agent)]),
        "tasks/first.yaml": task_doc("first", "one", "repo", "long", 1),
        "tasks/second.yaml": task_doc("second", "one", "repo", "long", 2),
    }
    control = box.control(base / "control", files)
    return Engine(Context(control=str(control), state_dir=base / "state")), root


def run(box: Sandbox, table: Table, options: Options) -> None:
    """One slot, two long tasks: kill the first agent, then apply passes until the second runs."""
    log("agent killed → slot refilled")
    engine, root = build(box)
    started = drive(engine, 2, 20.0, stop_when=lambda p: p[Phase.RUNNING.value] >= 1)
    run_dir = root / ".runs" / "first" / "1.1"
    agent_pid = wait_for(lambda: agent_pid_of(run_dir / "pid.json"), 10.0)
    supervisor = read_fingerprint(run_dir / "pid.json")
    if not started.passes or agent_pid is None or supervisor is None:
        table.add(ROW, "the first run did not start", "≤ 1 pass", False)
        return
    second = root / ".runs" / "second" / "1.1" / "pid.json"
    watch = ExitWatch(run_dir, supervisor)
    pass_starts: list[float] = []
    watch.start()
    killed = watch.started
    os.kill(agent_pid, signal.SIGKILL)
    with engine.locked(None) as store:
        while len(pass_starts) < 100 and not second.exists():
            pass_starts.append(time.perf_counter())
            engine.apply(engine.load(), store)
    refilled = time.perf_counter() - killed
    watch.join()
    gone = watch.marks.get("gone", math.inf)
    exited = watch.marks.get("exit", math.nan)
    # passes begun after the supervisor was gone; the refilling pass counts even if it began
    # just before (the exit then happened before that pass looked at the process)
    after_gone = max(1, sum(1 for t in pass_starts if t >= gone))
    table.add(
        ROW,
        f"{after_gone} pass(es) after the supervisor exited "
        f"({len(pass_starts)} after the kill); {refilled:.3f}s after the kill",
        "≤ 1 pass",
        second.exists() and after_gone <= 1,
    )
    table.add(
        "  supervisor lingers after exit.json",
        f"{gone - exited:.3f}s (slot still counted as used; exit.json "
        f"written {exited - killed:.3f}s after the kill)",
    )
