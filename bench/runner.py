"""The runner: parses the options, runs the sections in order in one sandbox, prints the table.

Everything is measured side by side in one run, in a throw-away directory (HOME points there for
this process and every child), and every process started here is stopped before the end. Absolute
seconds are printed for information only; the ``ok?`` column compares ratios and counts with the
targets, except ``plan(10k) warm`` whose target the design states in seconds.

Usage: ``.venv/bin/python -m bench [--sizes 1000,10000] [--short-tasks 500] [--keep]``
``[--only github]`` (``--help`` lists the options; bench/README.md explains each figure).
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Callable

from bench import (
    github,
    handover,
    meter,
    plan_huge,
    plan_scale,
    pool,
    push,
    reaction,
    refill,
    scale,
    slots,
    soak,
    transports,
    web,
)
from bench.options import Options
from bench.sandbox import Sandbox, sandbox
from bench.table import Table, log
from reconciler.entry import GC_THRESHOLD

Section = Callable[[Sandbox, Table, Options], None]

# In the order they run and print.
SECTIONS: dict[str, Section] = {
    "plan": plan_scale.run,
    "slots": slots.run,
    "refill": refill.run,
    "push": push.run,
    "reaction": reaction.run,
    "handover": handover.run,
    "github": github.run,
    "transports": transports.run,
    "pool": pool.run,
    "meter": meter.run,
    "web": web.run,
    "scale": scale.run,  # last: it extrapolates from what the others measured
    "huge": plan_huge.run,  # opt-in: minutes of 100,000 tasks
    "soak": soak.run,  # opt-in: an hour of `reconciler run` over churning tasks
}
# Sections that run only when named (``--only``) or asked for (``--huge``, ``--soak``).
OPT_IN = {"huge", "soak"}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=(__doc__ or "").splitlines()[0])
    p.add_argument("--sizes", default="1000,10000", help="task counts for the plan figures")
    p.add_argument("--reps", type=int, default=3, help="repetitions where cheap")
    p.add_argument("--short-tasks", type=int, default=500, help="tasks for the slot figure")
    p.add_argument("--agent-seconds", type=float, default=0.5, help="the short agent's sleep")
    p.add_argument("--limit", type=float, default=420.0, help="give up the slot figure after")
    p.add_argument(
        "--github-tasks", type=int, default=500, help="tasks for the GitHub forge figures"
    )
    p.add_argument(
        "--transport-tasks",
        type=int,
        default=transports.TRANSPORT_TASKS,
        help="tasks per transport pass",
    )
    p.add_argument(
        "--pool-files", type=int, default=30000, help="files in the pool figure's repository"
    )
    p.add_argument("--meter-mib", type=int, default=4, help="MiB of agent output per metered run")
    p.add_argument(
        "--huge", action="store_true", help="also run the opt-in 100k-task plan section (minutes)"
    )
    p.add_argument("--huge-tasks", type=int, default=100_000, help="tasks of the huge section")
    p.add_argument("--huge-files", type=int, default=100, help="files they are spread over")
    p.add_argument("--huge-reps", type=int, default=1, help="repetitions of the huge section")
    p.add_argument(
        "--soak", action="store_true", help="also run the opt-in soak of `reconciler run` (an hour)"
    )
    p.add_argument("--soak-seconds", type=float, default=3600.0, help="how long the soak churns")
    p.add_argument("--soak-tasks", type=int, default=1000, help="tasks of the soak")
    p.add_argument("--skip", default="", help=f"comma list of: {', '.join(SECTIONS)}")
    p.add_argument("--only", default="", help="comma list of the sections to run alone")
    p.add_argument("--keep", action="store_true", help="keep the sandbox directory")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    return p


def chosen(p: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """The sections to run, in order (``--only``, less ``--skip``)."""
    skip = {s for s in args.skip.split(",") if s}
    only = {s for s in args.only.split(",") if s}
    unknown = sorted((skip | only) - set(SECTIONS))
    if unknown:
        p.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    if only:
        skip |= set(SECTIONS) - only
    else:
        skip |= {name for name in OPT_IN if not getattr(args, name)}
    if "github" not in skip and args.github_tasks < github.LEAST_TASKS:
        p.error(f"--github-tasks must be at least {github.LEAST_TASKS} (the seeded task PRs)")
    return [name for name in SECTIONS if name not in skip]


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    sections = chosen(p, args)
    options = Options(
        sizes=[int(s) for s in args.sizes.split(",") if s],
        reps=args.reps,
        short_tasks=args.short_tasks,
        agent_seconds=args.agent_seconds,
        limit=args.limit,
        github_tasks=args.github_tasks,
        transport_tasks=args.transport_tasks,
        pool_files=args.pool_files,
        meter_mib=args.meter_mib,
        huge_tasks=args.huge_tasks,
        huge_files=args.huge_files,
        huge_reps=args.huge_reps,
        soak_seconds=args.soak_seconds,
        soak_tasks=args.soak_tasks,
    )
    table = Table()
    # the collector as the `reconciler` command sets it: the in-process figures stand for it
    gc.set_threshold(GC_THRESHOLD, 20, 100)
    started = time.perf_counter()
    with sandbox(args.keep) as box:
        log(f"sandbox: {box.root} (HOME for this run and its children)")
        for name in sections:
            SECTIONS[name](box, table, options)
    elapsed = time.perf_counter() - started
    print()
    sys.stdout.write(table.render())
    misses = table.misses
    print(
        f"\n{len(table.rows)} figures, {len(misses)} missed target(s); bench took {elapsed:.0f}s."
    )
    return 1 if args.strict and misses else 0
