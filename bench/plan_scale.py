"""Plan scale: one ``reconciler plan`` pass over 1k and 10k tasks, warm and cold, against a plain
YAML parse of the same files; its linearity, the git processes it starts, and the real CLI."""

from __future__ import annotations

import gc
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ruamel.yaml import YAML

from bench.manifests import agent_doc, lane_doc, seed_task_rows, task_doc
from bench.options import Options
from bench.sandbox import RECONCILER, Sandbox
from bench.spawns import SpawnCounter
from bench.table import Table, log, median
from reconciler.control.desired import forget_memory
from reconciler.engine import Context, Engine
from reconciler.manifests.loader import gc_paused
from reconciler.observe import observe
from reconciler.plan import plan

COLD_TARGET = 1.3
LINEAR_TARGET = 12.0
WARM_10K_SECONDS = 0.5
EXPENSIVE_PASS = 8.0  # seconds: above this a size gets a single repetition
STAGES = ("load", "observe", "plan")


@dataclass
class PassTiming:
    total: float
    load: float
    observe: float
    plan: float
    git: int


@dataclass
class SizeResult:
    n: int
    control: Path
    state: Path
    parse: list[float]
    cold: list[PassTiming]
    warm: list[PassTiming]

    def med(self, which: str, stage: str = "total") -> float:
        if which == "parse":
            return median(self.parse)
        timings: list[PassTiming] = getattr(self, which)
        return median([getattr(t, stage) for t in timings])


def plan_pass(ctx: Context, git: SpawnCounter, expect: int) -> PassTiming:
    """What `reconciler plan` does, in-process, with a fresh Engine (and no in-memory cache).

    The CLI runs one-shot commands with the cyclic garbage collector off; so does this pass.
    """
    forget_memory()  # a fresh process has not unpickled the cache yet
    before = git.count
    with gc_paused():
        t0 = time.perf_counter()
        engine = Engine(ctx)
        desired = engine.load()
        t1 = time.perf_counter()
        with engine.reading() as store:
            observed = observe(desired, store, engine.lanes(desired), engine.clock)
            t2 = time.perf_counter()
            result = plan(desired, observed, engine.clock())
        t3 = time.perf_counter()
    if len(desired.tasks) != expect or len(result.tasks) != expect:
        raise SystemExit(f"plan pass saw {len(desired.tasks)} tasks, planned {len(result.tasks)}")
    unreachable = [v.error for v in observed.lanes.values() if not v.reachable]
    if unreachable:
        raise SystemExit(f"lane not observed: {unreachable}")
    return PassTiming(t3 - t0, t1 - t0, t2 - t1, t3 - t2, git.count - before)


def parse_only(paths: list[Path], expect: int | None = None) -> float:
    """Read and parse the same files with ruamel's C loader, nothing else (gc paused, as the
    reconciler's loader does, so the baseline is the fastest plain parse); ``expect``: the
    documents they hold (default one per file)."""
    yaml = YAML(typ="safe", pure=False)
    gc.disable()
    try:
        t0 = time.perf_counter()
        docs = 0
        for path in paths:
            with open(path, "rb") as f:
                docs += len(list(yaml.load_all(f.read())))
        elapsed = time.perf_counter() - t0
    finally:
        gc.enable()
    if docs != (len(paths) if expect is None else expect):
        raise SystemExit(f"parse baseline read {docs} documents from {len(paths)} files")
    return elapsed


def build(box: Sandbox, n: int, name: str = "plan") -> tuple[Context, list[Path]]:
    """``n`` one-task manifests, one lane on a real repository, a state row for every task."""
    base = box.root / f"{name}-{n}"
    checkout = box.repo(base / "src" / "app")
    lane_root = box.lane_root(base / "worktrees")
    files = {
        "lanes.yaml": lane_doc("bench", 4, lane_root, "app", checkout, home=box.home),
        "agents.yaml": agent_doc("sleeper", ["/bin/true"]),
    }
    width = len(str(n))
    for i in range(n):
        name = f"task-{i:0{width}d}"
        files[f"tasks/{name}.yaml"] = task_doc(name, "bench", "app", "sleeper", i)
    t0 = time.perf_counter()
    control = box.control(base / "control", files)
    log(f"  control repo with {n} tasks built in {time.perf_counter() - t0:.1f}s")
    ctx = Context(control=str(control), state_dir=base / "state")
    seed_task_rows(ctx)
    paths = sorted((control / "manifests" / "tasks").glob("*.yaml"))
    paths += [control / "manifests" / "lanes.yaml", control / "manifests" / "agents.yaml"]
    return ctx, paths


def measure_size(box: Sandbox, n: int, git: SpawnCounter, reps: int, warm_up: bool) -> SizeResult:
    log(f"plan over {n} tasks")
    ctx, paths = build(box, n)
    cache = ctx.state_dir / "cache"
    if warm_up:  # once per run: imports, first-use caches (the cold pass warms the next size)
        plan_pass(ctx, git, n)
    result = SizeResult(n, Path(ctx.control), ctx.state_dir, [], [], [])
    rep = 0
    while rep < reps:
        result.parse.append(parse_only(paths))
        shutil.rmtree(cache, ignore_errors=True)
        result.cold.append(plan_pass(ctx, git, n))
        if not (cache / "manifests.pickle").exists():
            raise SystemExit("the cold pass wrote no parse cache")
        result.warm.append(plan_pass(ctx, git, n))
        log(
            f"  rep {rep + 1}: parse {result.parse[-1]:.3f}s cold {result.cold[-1].total:.3f}s "
            f"warm {result.warm[-1].total:.3f}s (git processes {result.warm[-1].git})"
        )
        if rep == 0 and result.cold[0].total + result.warm[0].total > EXPENSIVE_PASS:
            reps = 1
        rep += 1
    return result


def cli_plan(box: Sandbox, size: SizeResult) -> tuple[float, int]:
    """One `reconciler plan` subprocess (warm cache): wall seconds and exit status."""
    env = {**box.cli_env(size.control, size.state), "NO_COLOR": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [*RECONCILER, "plan"], env=env, cwd=box.root, capture_output=True, text=True, check=False
    )
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        log(f"reconciler plan failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    return elapsed, proc.returncode


def size_label(n: int) -> str:
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


def size_rows(table: Table, r: SizeResult) -> None:
    label = size_label(r.n)
    parse = r.med("parse")
    warm, cold = r.med("warm"), r.med("cold")
    reps_note = f"median of {len(r.warm)}" if len(r.warm) > 1 else "1 run"
    if r.n == 10_000:  # the design states this one in seconds
        target, ok = f"≤ {WARM_10K_SECONDS}s", warm <= WARM_10K_SECONDS
    else:
        target, ok = "info", None
    table.add(
        f"plan({label}) warm", f"{warm:.3f}s = {warm / parse:.2f}x parse ({reps_note})", target, ok
    )
    table.add(
        f"plan({label}) cold / parse",
        f"{cold / parse:.2f} ({cold:.3f}s / {parse:.3f}s)",
        f"≤ {COLD_TARGET}",
        cold / parse <= COLD_TARGET,
    )
    for which in ("warm", "cold"):
        total = r.med(which)
        stages = "  ".join(
            f"{stage} {r.med(which, stage):.3f}s ({r.med(which, stage) / total:.0%})"
            for stage in STAGES
        )
        table.add(f"  plan({label}) {which} by stage", stages)
    load_cold = r.med("cold", "load")
    table.add(f"  plan({label}) cold, load stage only / parse", f"{load_cold / parse:.2f}")
    table.add(f"  plan({label}) git processes per pass", str(r.warm[-1].git))


def linearity_rows(table: Table, small: SizeResult, big: SizeResult) -> None:
    factor = big.n / small.n
    target = LINEAR_TARGET * factor / 10
    for which in ("warm", "cold"):
        ratio = big.med(which) / small.med(which)
        table.add(
            f"plan({size_label(big.n)})/plan({size_label(small.n)}) {which}",
            f"{ratio:.2f} (tasks x{factor:g})",
            f"≤ {target:g}",
            ratio <= target,
        )
    g_small, g_big = small.warm[-1].git, big.warm[-1].git
    table.add(
        f"git processes per pass {size_label(big.n)}/{size_label(small.n)}",
        f"{g_big / max(1, g_small):.2f} ({g_big} / {g_small})",
    )


def run(box: Sandbox, table: Table, options: Options) -> None:
    git = SpawnCounter("git")
    with git.counting():
        results = [
            measure_size(box, n, git, options.reps, i == 0) for i, n in enumerate(options.sizes)
        ]
    for r in results:
        size_rows(table, r)
    if len(results) >= 2:
        linearity_rows(table, results[0], results[-1])
    big = results[-1]
    table.measure("plan warm per task", big.med("warm") / big.n)
    table.measure("plan cold per task", big.med("cold") / big.n)
    log(f"one `reconciler plan` subprocess over {big.n} tasks (warm)")
    wall, code = cli_plan(box, big)
    table.add(
        f"`reconciler plan` subprocess, {size_label(big.n)} warm",
        f"{wall:.3f}s = {wall / big.med('warm'):.2f}x in-process warm"
        + ("" if code == 0 else f" (exit {code})"),
    )
