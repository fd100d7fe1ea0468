"""Workspace hooks: a repository's commands run in a task's worktree at fixed moments.

``afterCreate`` (a new worktree, before it is handed out; failing fails the start), ``beforeRun``
(before each agent run; failing fails that run), ``afterRun`` (after each run, before the checks;
recorded), ``beforeRemove`` (before a worktree is removed; recorded). Each is an argv list run as
the lane user in the worktree, from the lane user's login environment plus the lane's ``env`` and
the task markers, in its own session, killed with everything it started at its timeout. Output
goes to ``<workspaceRoot>/.runs/<task>/hooks.log``.
"""

from __future__ import annotations

import os
import time

from reconciler.node.lane import Lane
from reconciler.node.runs import base_env
from reconciler.node.supervisor import run_check
from reconciler.protocol import RepoRef


def hook_env(lane: Lane, task: str, workspace: str, hook: str) -> dict[str, str]:
    env = base_env()
    env.update(lane.ref.env)
    env.update(
        {"RECONCILER_TASK": task, "RECONCILER_WORKSPACE": workspace, "RECONCILER_HOOK": hook}
    )
    return env


def run_hook(lane: Lane, repo: RepoRef, hook: str, task: str, workspace: str) -> tuple[bool, str]:
    """Run ``hook`` (``after_create``…) if the repository has it: (ok, a sentence)."""
    argv = getattr(repo.hooks, hook)
    if not argv:
        return True, ""
    task_dir = os.path.join(lane.runs_root(), task)
    os.makedirs(task_dir, mode=0o700, exist_ok=True)
    log_path = os.path.join(task_dir, "hooks.log")
    name = "".join(p.capitalize() if i else p for i, p in enumerate(hook.split("_")))
    with open(log_path, "ab") as log:
        log.write(f"\n# {name} at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n".encode())
    result = run_check(
        list(argv), workspace, hook_env(lane, task, workspace, name), repo.hooks.timeout, log_path
    )
    if result["exit_code"] == 0:
        return True, f"{name} passed"
    how = (
        f"timed out after {repo.hooks.timeout:g}s"
        if result["timed_out"]
        else f"exited {result['exit_code']}"
        if result["exit_code"] is not None
        else "could not start"
    )
    tail = str(result["output_tail"]).strip().splitlines()
    return False, f"hook {name} {how}" + (f": {tail[-1][:300]}" if tail else "") + (
        f" (see {log_path})"
    )
