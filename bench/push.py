"""Push of a new manifest → agent running: ``git push`` of a new Task to a bare control repo
whose post-receive hook (``reconciler hook install``) pokes ``reconciler run``, until the new
task's agent is running."""

from __future__ import annotations

import functools
import subprocess
import time
from pathlib import Path

from bench.manifests import agent_doc, lane_doc, short_agent, task_doc
from bench.options import Options
from bench.runs import agent_pid_of, wait_for
from bench.sandbox import RECONCILER, Sandbox
from bench.table import Table, log, median

PUSH_TARGET = 2.0
PUSHES = 3


def build(box: Sandbox, pushes: int) -> tuple[Path, Path, Path]:
    """A bare control repo with one long task; its state directory; the lane's workspace root."""
    base = box.root / "push"
    agent = short_agent(base / "bin" / "bench-agent", 30.0)
    checkout = box.repo(base / "src" / "app")
    root = box.lane_root(base / "worktrees")
    files = {
        "lanes.yaml": lane_doc("push", pushes + 1, root, "app", checkout, home=box.home),
        "agents.yaml": agent_doc("long", [str(agent)]),
        "tasks/first.yaml": task_doc("first", "push", "app", "long", 0),
    }
    seed = box.control(base / "seed", files)
    bare = base / "control.git"
    box.git("clone", "-q", "--bare", str(seed), str(bare), cwd=base)
    return bare, base / "state", root


def run(box: Sandbox, table: Table, options: Options) -> None:
    """`git push` of a new task manifest to a bare control repo (post-receive hook from
    `reconciler hook install`) until the task's agent is running under `reconciler run`."""
    log("push of a new manifest → agent start")
    bare, state, root = build(box, PUSHES)
    env = box.cli_env(bare, state)
    subprocess.run([*RECONCILER, "hook", "install"], env=env, check=True, capture_output=True)

    def agent_started(task: str) -> bool | None:
        return agent_pid_of(root / ".runs" / task / "1.1" / "pid.json") is not None or None

    delays: list[float] = []
    with box.reconciler_run(env, "60s"):
        if not wait_for(lambda: agent_started("first"), 30, interval=0.005):
            raise SystemExit("push: `reconciler run` never started the first task")
        clone = bare.parent / "operator"
        box.git("clone", "-q", str(bare), str(clone), cwd=bare.parent)
        for n in range(1, PUSHES + 1):
            name = f"pushed-{n}"
            path = clone / "manifests" / "tasks" / f"{name}.yaml"
            path.write_text(task_doc(name, "push", "app", "long", n), encoding="utf-8")
            box.git("add", "-A", cwd=clone)
            box.git("commit", "-q", "-m", f"add {name}", cwd=clone)
            t0 = time.perf_counter()
            box.git("push", "-q", "origin", "HEAD", cwd=clone)
            if not wait_for(functools.partial(agent_started, name), 30, interval=0.005):
                raise SystemExit(f"push: {name} did not start within 30 s of its push")
            delays.append(time.perf_counter() - t0)
    worst = max(delays)
    table.add(
        "push of a new manifest → agent running",
        f"{median(delays):.2f}s median, {worst:.2f}s worst of {PUSHES} (`run` + post-receive hook)",
        f"≤ {PUSH_TARGET:g}s",
        worst <= PUSH_TARGET,
    )
