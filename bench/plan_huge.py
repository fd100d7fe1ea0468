"""Plan at scale (opt-in, ``--only huge``): one ``reconciler plan`` pass over 100,000 tasks in
100 files, cold and warm, against a bare parse of the same files, each in a fresh process whose
peak resident memory is its own.

A pass over that many tasks takes seconds and a cold one most of a minute, so the section runs
only when named (``--only huge`` or ``--huge``). Each measurement is a new interpreter
(``python -m bench.plan_huge MODE …``): a fresh process is what ``reconciler plan`` is, its
imports are done before the clock starts, and its peak RSS (``ru_maxrss``) is the pass's alone.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.manifests import agent_doc, lane_doc, seed_task_rows, task_doc
from bench.options import Options
from bench.plan_scale import COLD_TARGET, STAGES, parse_only, plan_pass, size_label
from bench.sandbox import Sandbox
from bench.spawns import SpawnCounter
from bench.table import Table, log, median
from reconciler import entry
from reconciler.engine import Context, Engine
from reconciler.observe import observe
from reconciler.plan import plan

WARM_SECONDS = 2.0  # issue targets for 100,000 tasks
PEAK_MIB = 500.0
MODES = ("seed", "parse", "cold", "warm", "busy")
BUSY_REPS = 5


def build(box: Sandbox, n: int, files: int) -> tuple[Path, Path, list[Path]]:
    """``n`` tasks spread over ``files`` manifest files, one lane on a real repository."""
    base = box.root / f"huge-{n}"
    checkout = box.repo(base / "src" / "app")
    lane_root = box.lane_root(base / "worktrees")
    docs: dict[str, str] = {
        "lanes.yaml": lane_doc("bench", 4, lane_root, "app", checkout, home=box.home),
        "agents.yaml": agent_doc("sleeper", ["/bin/true"]),
    }
    width, per_file = len(str(n)), -(-n // files)
    for f in range(files):
        names = range(f * per_file, min(n, (f + 1) * per_file))
        docs[f"tasks/batch-{f:03d}.yaml"] = "---\n".join(
            task_doc(f"task-{i:0{width}d}", "bench", "app", "sleeper", i) for i in names
        )
    t0 = time.perf_counter()
    control = box.control(base / "control", docs)
    paths = sorted((control / "manifests").rglob("*.yaml"))
    size = sum(p.stat().st_size for p in paths) / 2**20
    log(
        f"  control repo with {n} tasks in {files} files ({size:.0f} MiB) built in "
        f"{time.perf_counter() - t0:.1f}s"
    )
    return control, base / "state", paths


def child(mode: str, control: str, state: str, n: int) -> dict[str, float]:
    """One measurement in this (fresh) process: its figures and its peak RSS in MiB."""
    ctx = Context(control=control, state_dir=Path(state))
    figures: dict[str, float] = {}
    if mode == "seed":  # state as after a first apply: a row for every task
        seed_task_rows(ctx)
    elif mode == "busy":
        figures.update(busy_passes(ctx, n))
    elif mode == "parse":
        manifests = Path(control) / "manifests"
        paths = sorted(manifests.rglob("*.yaml"))
        figures["total"] = parse_only(paths, n + len(paths) - len(list(manifests.glob("tasks/*"))))
    else:
        if mode == "cold":
            shutil.rmtree(Path(state) / "cache", ignore_errors=True)
        git = SpawnCounter("git")
        with git.counting():
            timing = plan_pass(ctx, git, n)
        figures.update({stage: getattr(timing, stage) for stage in ("total", *STAGES)})
    figures["peak_mib"] = peak_mib()
    return figures


def busy_passes(ctx: Context, n: int) -> dict[str, float]:
    """As ``reconciler run`` passes: one engine and one state connection for all of them; the
    observe+plan pass after a write of one task's record against the pass after none (the
    medians of ``BUSY_REPS`` each, alternately), a warm-up pass first."""
    engine = Engine(ctx)
    desired = engine.load()
    idle, busy = [], []
    with engine.locked(None) as store:
        lanes = engine.lanes(desired)

        def timed() -> float:
            t0 = time.perf_counter()
            result = plan(desired, observe(desired, store, lanes, engine.clock), engine.clock())
            if len(result.tasks) != n:
                raise SystemExit(f"busy pass planned {len(result.tasks)} tasks, not {n}")
            return time.perf_counter() - t0

        timed()
        names = sorted(desired.tasks)
        for k in range(BUSY_REPS):
            idle.append(timed())
            with store.transaction() as tx:
                tx.update_task(names[k], pr_number=k + 1)
            busy.append(timed())
    return {"idle": median(idle), "busy": median(busy)}


def peak_mib() -> float:
    """This process's peak resident memory since its exec (``VmHWM``): ``ru_maxrss`` would
    count the parent's memory too, as a child started with vfork carries it over exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def in_child(box: Sandbox, mode: str, control: Path, state: Path, n: int) -> dict[str, float]:
    argv = [sys.executable, "-m", "bench.plan_huge", mode, str(control), str(state), str(n)]
    proc = subprocess.run(argv, env=box.env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"bench.plan_huge {mode} failed: {proc.stderr.strip()[-2000:]}")
    figures: dict[str, float] = json.loads(proc.stdout.splitlines()[-1])
    return figures


def cli_plan(box: Sandbox, control: Path, state: Path) -> tuple[float, float]:
    """``reconciler plan -o json`` (warm) as a new process runs it, the command line's own
    ``main`` in a fresh interpreter: wall seconds with start-up, and its peak RSS in MiB."""
    env = {**box.cli_env(control, state), "NO_COLOR": "1"}
    argv = [sys.executable, "-m", "bench.plan_huge", "cli", str(control), str(state), "0"]
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"reconciler plan failed: {proc.stderr.strip()[-2000:]}")
    figures: dict[str, float] = json.loads(proc.stdout.splitlines()[-1])
    return wall, figures["peak_mib"]


def cli_child() -> dict[str, float]:
    """The command line's ``main`` for ``plan -o json`` (its output discarded), in this process."""
    with open(os.devnull, "w", encoding="utf-8") as sink, contextlib.redirect_stdout(sink):
        code = entry.main(["plan", "-o", "json"])
    if code != 0:
        raise SystemExit(f"reconciler plan exited {code}")
    return {"peak_mib": peak_mib()}


def run(box: Sandbox, table: Table, options: Options) -> None:
    n, files = options.huge_tasks, options.huge_files
    label = f"plan({size_label(n)} in {files} files)"
    log(f"plan over {n} tasks in {files} files (fresh process per measurement)")
    control, state, _ = build(box, n, files)
    t0 = time.perf_counter()
    in_child(box, "seed", control, state, n)
    log(f"  state seeded (first load) in {time.perf_counter() - t0:.1f}s")
    parse, cold, warm = [], [], []
    for rep in range(options.huge_reps):
        parse.append(in_child(box, "parse", control, state, n))
        cold.append(in_child(box, "cold", control, state, n))
        warm.append(in_child(box, "warm", control, state, n))
        log(
            f"  rep {rep + 1}: parse {parse[-1]['total']:.2f}s cold {cold[-1]['total']:.2f}s "
            f"warm {warm[-1]['total']:.2f}s (peak {warm[-1]['peak_mib']:.0f} MiB)"
        )

    def med(runs: list[dict[str, float]], key: str = "total") -> float:
        return median([r[key] for r in runs])

    p, c, w = med(parse), med(cold), med(warm)
    reps = f"median of {len(warm)}" if len(warm) > 1 else "1 run"
    table.add(f"{label} warm", f"{w:.3f}s ({reps})", f"≤ {WARM_SECONDS}s", w <= WARM_SECONDS)
    peak = med(warm, "peak_mib")
    table.add(
        f"{label} warm, peak RSS", f"{peak:.0f} MiB", f"≤ {PEAK_MIB:.0f} MiB", peak <= PEAK_MIB
    )
    table.add(
        f"{label} cold / parse",
        f"{c / p:.2f} ({c:.2f}s / {p:.2f}s)",
        f"≤ {COLD_TARGET}",
        c / p <= COLD_TARGET,
    )
    for which, runs in (("warm", warm), ("cold", cold)):
        total = med(runs)
        stages = "  ".join(
            f"{stage} {med(runs, stage):.3f}s ({med(runs, stage) / total:.0%})" for stage in STAGES
        )
        table.add(f"  {label} {which} by stage", stages)
    table.add(
        f"  {label} peak RSS: parse / cold / warm",
        f"{med(parse, 'peak_mib'):.0f} / {med(cold, 'peak_mib'):.0f} / {peak:.0f} MiB",
    )
    passes = in_child(box, "busy", control, state, n)
    table.add(
        f"  {label}: `run`'s pass after a write / after none",
        f"{passes['busy'] / passes['idle']:.2f} ({passes['busy']:.3f}s / {passes['idle']:.3f}s; "
        f"one task's record changed; observe+plan, median of {BUSY_REPS})",
    )
    log(f"one `reconciler plan -o json` subprocess over {n} tasks (warm)")
    wall, rss = cli_plan(box, control, state)
    table.add(
        f"  `reconciler plan -o json` subprocess, {size_label(n)} warm",
        f"{wall:.3f}s, peak {rss:.0f} MiB",
    )


if __name__ == "__main__":  # a measurement in a fresh process: `python -m bench.plan_huge MODE …`
    mode_arg, control_arg, state_arg, n_arg = sys.argv[1:5]
    if mode_arg not in (*MODES, "cli"):
        raise SystemExit(f"mode must be one of {', '.join(MODES)}, cli")
    gc.set_threshold(entry.GC_THRESHOLD, 20, 100)  # as the `reconciler` command sets it
    figures = (
        cli_child() if mode_arg == "cli" else child(mode_arg, control_arg, state_arg, int(n_arg))
    )
    print(json.dumps(figures))
