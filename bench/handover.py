"""``reconciler run``: from a run's ``exit.json`` to the next agent running in the slot it freed.

One lane with one slot and a warm pool of worktrees; a queue of tasks whose agent notes when it
started and ends at once. Each ``exit.json`` wakes ``run`` (inotify), whose pass completes the
ended task and starts the next one in the freed slot, with a pooled worktree. The figure is the
time from the ``exit.json`` being written to the next agent's own note of its start. The first
task's agent holds the chain until the pool has a worktree for each later task: a fill takes a
second or more (it settles each new index), so a chain on a pool still filling would measure
fresh worktrees, not pooled ones.
"""

from __future__ import annotations

import functools
import itertools
from pathlib import Path

from bench.manifests import CONFIG_DOC, agent_doc, lane_doc, script, task_doc
from bench.options import Options
from bench.runs import present, wait_for
from bench.sandbox import Sandbox
from bench.table import Table, log, median
from reconciler.node import pool

HANDOVER_TARGET = 0.1  # seconds from exit.json to the slot's next agent running
TASKS = 6  # the first starts the chain; each later one measures a handover
POOL = TASKS - 1

QUICK_AGENT = """#!/bin/sh
# bench agent: note when it started, then end at once with a commit (the first waits for GO)
date +%s.%N > "$RECONCILER_RUN_DIR/agent-started.tmp"
if [ "$RECONCILER_TASK" = next-1 ]; then
    while [ ! -e "$(dirname "$0")/GO" ]; do sleep 0.05; done
fi
mv "$RECONCILER_RUN_DIR/agent-started.tmp" "$RECONCILER_RUN_DIR/agent-started"
exec git commit --allow-empty --quiet -m "bench change"
"""


def build(box: Sandbox) -> tuple[Path, Path, list[str]]:
    base = box.root / "handover"
    agent = script(base / "bin" / "quick-agent", QUICK_AGENT)
    checkout = box.repo(base / "src" / "app")
    root = box.lane_root(base / "worktrees")
    lane = lane_doc("hand", 1, root, "app", checkout, home=box.home).replace(
        f"      checkout: {checkout}\n", f"      checkout: {checkout}\n      pool: {POOL}\n"
    )
    names = [f"next-{n}" for n in range(1, TASKS + 1)]
    files = {
        "config.yaml": CONFIG_DOC,
        "lanes.yaml": lane,
        "agents.yaml": agent_doc("quick", [str(agent)]),
    }
    for n, name in enumerate(names):
        # priority orders the queue: each task's start is the previous one's handover
        files[f"tasks/{name}.yaml"] = (
            task_doc(name, "hand", "app", "quick", n) + f"  priority: {TASKS - n}\n"
        )
    return box.control(base / "control", files), root, names


def run(box: Sandbox, table: Table, options: Options) -> None:
    log("run: exit.json → the slot's next agent running (pooled)")
    control, root, names = build(box)
    env = box.cli_env(control, control.parent / "state")
    gaps: list[float] = []
    pooled = root / ".pool" / "app" / "main"
    with box.reconciler_run(env, "30s", output=control.parent / "run.log"):
        if wait_for(lambda: len(pool.entries(str(pooled))) >= POOL or None, 120) is None:
            raise SystemExit(f"handover: the pool did not reach {POOL} worktrees within 120 s")
        (control.parent / "bin" / "GO").touch()
        for before, after in itertools.pairwise(names):
            noted = root / ".runs" / after / "1.1" / "agent-started"
            if wait_for(functools.partial(present, noted), 60) is None:
                raise SystemExit(f"handover: {after} did not start within 60 s")
            ended = (root / ".runs" / before / "1.1" / "exit.json").stat().st_mtime
            gaps.append(float(noted.read_text(encoding="utf-8")) - ended)
    table.add(
        "run: exit.json → the slot's next agent running (pooled)",
        f"{median(gaps):.3f}s median, {max(gaps):.3f}s worst of {len(gaps)}",
        f"≤ {HANDOVER_TARGET:g}s",
        median(gaps) <= HANDOVER_TARGET,
    )
