"""``reconciler run``: from a run's ``exit.json`` to the next agent running in the slot it freed.

One lane with one slot and a warm pool of worktrees; a queue of tasks whose agent notes when it
started. The figure is the time from the ``exit.json`` being written to the next agent's own note
of its start, two ways:

- **from standby**: each agent works a moment (``STEADY`` seconds), so that a pass queues the
  next task on standby meanwhile; at the agent's end its supervisor starts that one itself;
- **by a pass**: the repository has a ``beforeRun`` hook, which runs just before the agent from
  the node, so no run of it is queued: each ``exit.json`` wakes ``run`` (inotify), whose pass
  completes the ended task and starts the next one in the freed slot, with a pooled worktree.

The first task's agent holds the chain until the pool has a worktree for each later task: a fill
takes a second or more (it settles each new index), so a chain on a pool still filling would
measure fresh worktrees, not pooled ones.
"""

from __future__ import annotations

import functools
import itertools
from pathlib import Path

from bench.manifests import CONFIG_DOC, agent_doc, lane_doc, script, task_doc
from bench.options import Options
from bench.runs import files_json, present, wait_for
from bench.sandbox import Sandbox
from bench.table import Table, log, median
from reconciler.node import pool

HANDOVER_TARGET = 0.1  # seconds from exit.json to the slot's next agent running
TASKS = 6  # the first starts the chain; each later one measures a handover
POOL = TASKS - 1

STEADY = 0.3  # seconds the agent works in the standby chain: a pass queues the next meanwhile
QUICK_AGENT = """#!/bin/sh
# bench agent: note when it started, work a moment, end with a commit (the first waits for GO)
date +%s.%N > "$RECONCILER_RUN_DIR/agent-started.tmp"
if [ "$RECONCILER_TASK" = next-1 ]; then
    while [ ! -e "$(dirname "$0")/GO" ]; do sleep 0.05; done
fi
mv "$RECONCILER_RUN_DIR/agent-started.tmp" "$RECONCILER_RUN_DIR/agent-started"
sleep {seconds}
exec git commit --allow-empty --quiet -m "bench change"
"""


def build(box: Sandbox, way: str) -> tuple[Path, Path, list[str]]:
    base = box.root / "handover" / way
    standby = way == "standby"
    agent = script(base / "bin" / "quick-agent", QUICK_AGENT.format(seconds=STEADY * standby))
    checkout = box.repo(base / "src" / "app")
    root = box.lane_root(base / "worktrees")
    extra = f"      pool: {POOL}\n" + ("" if standby else '      hooks: {beforeRun: ["true"]}\n')
    lane = lane_doc("hand", 1, root, "app", checkout, home=box.home).replace(
        f"      checkout: {checkout}\n", f"      checkout: {checkout}\n{extra}"
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
    for way in ("standby", "pass"):
        gaps, handed = chain(box, way)
        how = "from standby" if way == "standby" else "by a pass (a beforeRun hook: none queued)"
        table.add(
            f"run: exit.json → the slot's next agent running (pooled), {how}",
            f"{median(gaps):.3f}s median, {max(gaps):.3f}s worst of {len(gaps)}; "
            f"{handed} started by the ending run's supervisor",
            f"≤ {HANDOVER_TARGET:g}s",
            median(gaps) <= HANDOVER_TARGET,
        )


def chain(box: Sandbox, way: str) -> tuple[list[float], int]:
    """The handover gaps of one chain, and how many of its runs a supervisor started."""
    log(f"run: exit.json → the slot's next agent running (pooled), {way}")
    control, root, names = build(box, way)
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
    handed = sum(
        bool((files_json(root / ".runs" / name / "1.1" / "pid.json") or {}).get("claimed_from"))
        for name in names[1:]
    )
    return gaps, handed
