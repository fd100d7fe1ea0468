"""The scale simulation: a pass over 100 hosts, 10,000 tasks and 10,000 open PRs, extrapolated
from the per-item costs the other sections measured in this run (nothing is run here).

The model, from how a pass works: lanes are observed ``OBSERVE_WORKERS`` at a time, each one
ssh batch on a shared connection, and no faster than the reconciler's own CPU per lane allows
(one interpreter asks every lane and reads every answer; the fleet figure measures it where
sshd runs); planning is linear in the tasks (the plan figures' linearity rows check that); an
unchanged GitHub pass costs what the ``github`` section counted per repository.
docs/scaling.md explains the figures and where one reconciler stops.
"""

from __future__ import annotations

import math

from bench.options import Options
from bench.sandbox import Sandbox
from bench.table import Table
from reconciler.observe import OBSERVE_WORKERS

HOSTS = 100
TASKS = 10_000
OPEN_PRS = 10_000
PRS_PER_REPO = 100  # so 100 repositories, each one PR list page


def run(box: Sandbox, table: Table, options: Options) -> None:
    m = table.measured
    batch = m.get("ssh batch")
    per_task = m.get("plan warm per task")
    if batch is None or per_task is None:
        missing = [k for k in ("ssh batch", "plan warm per task") if k not in m]
        table.add("scale: 100 hosts, 10k tasks", f"skipped: not measured: {', '.join(missing)}")
        return
    rounds = math.ceil(HOSTS / OBSERVE_WORKERS)
    waiting = rounds * batch
    own = m.get("reconciler CPU per ssh lane")  # with planning the lane's tasks: counted apart
    planned = per_task * m.get("tasks per fleet lane", 0.0)
    own_part = 0.0 if own is None else max(0.0, own - planned) * HOSTS
    observe = max(waiting, own_part)
    plan = per_task * TASKS
    total = observe + plan
    floor = (
        ""
        if own is None
        else f", at least {own_part:.2f}s of the reconciler's own CPU ({own * 1000:.2f} ms a "
        "lane less its planning)"
    )
    table.add(
        f"scale: pass over {HOSTS} ssh hosts, {TASKS // 1000}k tasks",
        f"≈ {total:.2f}s = observe {observe:.2f}s ({rounds} rounds of {OBSERVE_WORKERS} lanes "
        f"at {batch:.3f}s a batch{floor}) + plan {plan:.2f}s ({per_task * 1e6:.0f} µs a task); "
        f"{1 / total:.2f} passes/s",
    )
    requests = m.get("github unchanged requests per repo")
    if requests is not None:
        repos = OPEN_PRS // PRS_PER_REPO
        table.add(
            f"scale: unchanged GitHub pass, {OPEN_PRS // 1000}k open PRs",
            f"≈ {requests * repos:.0f} requests ({requests:.1f} per repository x {repos}), "
            "0 points",
        )
