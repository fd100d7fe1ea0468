"""The manifests the sections build their worlds from, and the agent scripts they run."""

from __future__ import annotations

import math
import time
from pathlib import Path

from reconciler.engine import Context, Engine
from reconciler.state import Store, TaskRow

CONFIG_DOC = """apiVersion: reconciler/v1
kind: Config
metadata:
  name: default
spec:
  branchPrefix: agent/
"""

SHORT_AGENT = """#!/bin/sh
# bench agent: work for a moment, leave one commit, succeed
sleep {seconds}
exec git commit --allow-empty --quiet -m "bench change"
"""


def lane_doc(name: str, slots: int, root: Path, repo: str, checkout: Path, *, home: Path) -> str:
    return f"""apiVersion: reconciler/v1
kind: Lane
metadata:
  name: {name}
spec:
  maxConcurrency: {slots}
  workspaceRoot: {root}
  repos:
    - name: {repo}
      checkout: {checkout}
  env:
    HOME: {home}
    GIT_CONFIG_NOSYSTEM: "1"
    GIT_AUTHOR_NAME: bench
    GIT_AUTHOR_EMAIL: bench@example.invalid
    GIT_COMMITTER_NAME: bench
    GIT_COMMITTER_EMAIL: bench@example.invalid
"""


def agent_doc(name: str, command: list[str]) -> str:
    argv = ", ".join(f'"{a}"' for a in command)
    return f"""apiVersion: reconciler/v1
kind: Agent
metadata:
  name: {name}
spec:
  kind: command
  command: [{argv}]
  timeout: 10m
  stallTimeout: 5m
"""


def task_doc(name: str, lane: str, repo: str, agent: str, index: int) -> str:
    return f"""apiVersion: reconciler/v1
kind: Task
metadata:
  name: {name}
  labels: {{suite: bench}}
spec:
  lane: {lane}
  repo: {repo}
  agent: {agent}
  prompt: |
    Make change number {index} and commit it.
  success:
    requireCommits: true
"""


def script(path: Path, text: str) -> Path:
    """An executable script at ``path`` (its directory made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    path.chmod(0o755)
    return path


def short_agent(path: Path, seconds: float) -> Path:
    """An agent that works ``seconds``, leaves one commit and succeeds."""
    return script(path, SHORT_AGENT.format(seconds=seconds))


def spread(total: int, slots: list[int]) -> list[int]:
    """``total`` tasks over lanes in proportion to their slots (largest remainder)."""
    whole = sum(slots)
    exact = [total * s / whole for s in slots]
    counts = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(slots)), key=lambda i: exact[i] - counts[i], reverse=True)
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def seed_task_rows(ctx: Context) -> None:
    """State as after a first apply: a row for every task (nothing else changes between passes)."""
    desired = Engine(ctx).load()
    now = time.time()
    with Store.open(ctx.state_dir) as store, store.transaction() as tx:
        for task in desired.tasks.values():
            tx.upsert_task(
                TaskRow(
                    name=task.name,
                    lane=task.spec.lane,
                    repo=task.spec.repo,
                    first_seen=now,
                    generation=task.generation,
                )
            )
