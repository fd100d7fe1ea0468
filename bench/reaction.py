"""``reconciler run --interval 30s``: how soon it acts on a moment the plan knew (the end of a
backoff) and on a merge on the local forge (``pr merge`` pokes it)."""

from __future__ import annotations

import functools
import subprocess
import time
from pathlib import Path

from bench.manifests import CONFIG_DOC, agent_doc, lane_doc, script, task_doc
from bench.options import Options
from bench.runs import files_json, present, wait_for
from bench.sandbox import RECONCILER, Sandbox
from bench.table import Table, log, median
from reconciler.manifests.models import ConfigSpec
from reconciler.plan import backoff_delay
from reconciler.state import Store, TaskRow

REACTION_TARGET = 0.5  # seconds from the moment a pass is due (or a merge done) to its effect
REACTION_INTERVAL = 30.0  # `run --interval`: what either waited for before the plan said when
REACTION_BACKOFF = "1s"  # backoff base and cap: the first retry is due 0.5 to 1 s after a failure
REPS = 3

FLAKY_AGENT = """#!/bin/sh
# bench agent: note when it started; fail the first attempt (FAIL_FIRST=1), then succeed
date +%s.%N > "$RECONCILER_RUN_DIR/agent-started.tmp"
mv "$RECONCILER_RUN_DIR/agent-started.tmp" "$RECONCILER_RUN_DIR/agent-started"
if [ "$FAIL_FIRST" = 1 ] && [ "$RECONCILER_ATTEMPT" = 1 ]; then exit 1; fi
exec git commit --allow-empty --quiet -m "bench change"
"""


def build(box: Sandbox, flaky: list[str], merged: list[str]) -> tuple[Path, Path]:
    """One lane with a local forge; ``flaky`` tasks fail their first attempt, ``merged`` ones
    succeed at once. Returns the control repo and the lane's workspace root."""
    base = box.root / "reaction"
    agent = script(base / "bin" / "flaky-agent", FLAKY_AGENT)
    checkout = box.repo(base / "src" / "app")
    root = box.lane_root(base / "worktrees")
    lane = lane_doc(
        "react", len(flaky) + len(merged), root, "app", checkout, home=box.home
    ).replace(
        f"      checkout: {checkout}\n",
        f"      checkout: {checkout}\n      forge: {{kind: local}}\n",
    )
    config = CONFIG_DOC + f"  backoff: {{base: {REACTION_BACKOFF}, max: {REACTION_BACKOFF}}}\n"
    files = {
        "config.yaml": config,
        "lanes.yaml": lane,
        "agents.yaml": agent_doc("flaky", ["/usr/bin/env", "FAIL_FIRST=1", str(agent)])
        + "---\n"
        + agent_doc("steady", [str(agent)]),
    }
    for n, name in enumerate(flaky + merged):
        if name in flaky:  # one run per attempt: its failure backs off at once
            doc = task_doc(name, "react", "app", "flaky", n) + "  maxIterations: 1\n"
        else:
            doc = task_doc(name, "react", "app", "steady", n)
        files[f"tasks/{name}.yaml"] = doc
    return box.control(base / "control", files), root


def run(box: Sandbox, table: Table, options: Options) -> None:
    log("run's reaction: backoff ended → retry, pr merge → done")
    flaky = [f"flaky-{n}" for n in range(1, REPS + 1)]
    merged = [f"merged-{n}" for n in range(1, REPS + 1)]
    control, root = build(box, flaky, merged)
    state = control.parent / "state"
    env = box.cli_env(control, state)
    with box.reconciler_run(env, f"{REACTION_INTERVAL:g}s", output=control.parent / "run.log"):
        retries = backoff_reactions(root, flaky)
        merges = merge_reactions(env, state, merged)
    worst = max(retries)
    table.add(
        "run: backoff ended → next agent started",
        f"{median(retries):.3f}s median, {worst:.3f}s worst of {REPS} "
        f"(--interval {REACTION_INTERVAL:g}s, which it used to wait for)",
        f"≤ {REACTION_TARGET:g}s",
        worst <= REACTION_TARGET,
    )
    after = [done - returned for _, returned, done in merges]
    whole = [done - began for began, _, done in merges]
    table.add(
        "run: pr merge → task done in state",
        f"{median(after):.3f}s median, {max(after):.3f}s worst of {REPS} after the command "
        f"returned ({median(whole):.2f}s from its start; --interval {REACTION_INTERVAL:g}s)",
        f"≤ {REACTION_TARGET:g}s",
        max(after) <= REACTION_TARGET,
    )


def backoff_reactions(root: Path, tasks: list[str]) -> list[float]:
    """Per task: from the end of its first attempt's backoff (the run's recorded end plus the
    planner's delay) to the start of its retry's agent (as the agent itself noted it)."""
    config = ConfigSpec.model_validate(
        {"backoff": {"base": REACTION_BACKOFF, "max": REACTION_BACKOFF}}
    )
    delays = []
    for task in tasks:
        noted = root / ".runs" / task / "2.1" / "agent-started"
        if wait_for(functools.partial(present, noted), 60) is None:
            raise SystemExit(f"reaction: {task} was not retried within 60 s")
        exit_info = files_json(root / ".runs" / task / "1.1" / "exit.json") or {}
        ended = exit_info.get("ended_at")
        if not isinstance(ended, float):
            raise SystemExit(f"reaction: {task}'s first run has no end in its exit.json")
        expiry = ended + backoff_delay(config, task, 1)
        started = float(noted.read_text(encoding="utf-8"))
        if started < expiry:
            raise SystemExit(f"reaction: {task} was retried {expiry - started:.3f}s early")
        delays.append(started - expiry)
    return delays


def task_row(state: Path, name: str) -> TaskRow | None:
    if not (state / "state.db").exists():
        return None
    with Store.open_readonly(state) as store:
        return store.task(name)


def with_pr(state: Path, name: str) -> TaskRow | None:
    """The task's state row once it records an open PR."""
    row = task_row(state, name)
    return row if row is not None and row.pr_number else None


def done_at(state: Path, name: str) -> float | None:
    """When the task's ``done`` event was recorded, if it was."""
    with Store.open_readonly(state) as store:
        events = store.events(task=name, limit=20)
    return next((e.at for e in events if e.kind == "done"), None)


def merge_reactions(
    env: dict[str, str], state: Path, tasks: list[str]
) -> list[tuple[float, float, float]]:
    """Per task, once its PR is open: when `reconciler pr merge` began and returned, and when
    the task's `done` was recorded in state (the event's time)."""
    times = []
    for task in tasks:
        if wait_for(functools.partial(with_pr, state, task), 60) is None:
            raise SystemExit(f"reaction: {task}'s PR was not opened within 60 s")
        began = time.time()
        merge = subprocess.run(
            [*RECONCILER, "pr", "merge", task], env=env, capture_output=True, text=True, check=False
        )
        returned = time.time()
        if merge.returncode != 0 or "Poked reconciler run" not in merge.stdout:
            raise SystemExit(f"reaction: pr merge {task} failed: {merge.stdout}{merge.stderr}")
        done = wait_for(functools.partial(done_at, state, task), 60)
        if done is None:
            raise SystemExit(f"reaction: {task} was not recorded done within 60 s of its merge")
        times.append((began, returned, done))
    return times
