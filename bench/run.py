"""``make bench``: the table of measured figures (design §8), each a ratio or a count.

Everything is measured side by side in one run, in a throw-away directory (HOME points there for
this process and every child), and every process started here is stopped before the end. Absolute
seconds are printed for information only; the ``ok?`` column compares ratios and counts with the
targets, except ``plan(10k) warm`` whose target the design states in seconds.

Usage: ``.venv/bin/python bench/run.py [--sizes 1000,10000] [--short-tasks 500] [--keep]``
``[--only github]`` (``--help`` lists the options; bench/README.md explains each figure).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import hashlib
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ruamel.yaml import YAML

import reconciler.control.desired as desired_module
from reconciler.engine import Context, Engine
from reconciler.manifests.loader import gc_paused
from reconciler.manifests.models import ConfigSpec
from reconciler.observe import observe
from reconciler.plan import ActionKind, Phase, backoff_delay, plan
from reconciler.state import Store, TaskRow

GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@example.invalid",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@example.invalid",
}
COLD_TARGET = 1.3
LINEAR_TARGET = 12.0
WARM_10K_SECONDS = 0.5
SCHEDULE_TARGET = 1.3
EXPENSIVE_PASS = 8.0  # seconds: above this a size gets a single repetition
T = TypeVar("T")
SLOT_LANES = (("lane-a", 5), ("lane-b", 4), ("lane-c", 2))
SECTIONS = (
    "plan",
    "slots",
    "refill",
    "push",
    "reaction",
    "github",
    "transports",
    "pool",
    "meter",
)


# ------------------------------------------------------------------------------------- table


@dataclass
class Row:
    name: str
    value: str
    target: str = "info"
    ok: bool | None = None


@dataclass
class Table:
    rows: list[Row] = field(default_factory=list)

    def add(self, name: str, value: str, target: str = "info", ok: bool | None = None) -> None:
        self.rows.append(Row(name, value, target, ok))
        mark = "" if ok is None else (" ok" if ok else " MISS")
        print(f"  · {name}: {value} (target {target}){mark}", file=sys.stderr, flush=True)

    def render(self) -> str:
        head = ("name", "value", "target", "ok?")
        body = [
            (r.name, r.value, r.target, "-" if r.ok is None else ("yes" if r.ok else "NO"))
            for r in self.rows
        ]
        widths = [max(len(line[i]) for line in [head, *body]) for i in range(4)]
        lines = [" | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in body]
        sep = "-+-".join("-" * w for w in widths)
        header = " | ".join(c.ljust(w) for c, w in zip(head, widths, strict=True))
        return "\n".join([header, sep, *lines]) + "\n"

    @property
    def misses(self) -> list[Row]:
        return [r for r in self.rows if r.ok is False]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def median(values: list[float]) -> float:
    return statistics.median(values)


# ------------------------------------------------------------------------------------ sandbox


class Sandbox:
    """A temp directory with its own HOME; knows every lane root so it can stop every run."""

    def __init__(self, keep: bool) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="reconciler-bench-")).resolve()
        self.home = self.root / "home"
        self.home.mkdir()
        self.keep = keep
        self.lane_roots: list[Path] = []
        # The bench's lanes run as whoever runs the bench (root, in CI): its own policy says so,
        # as an admin's would; its keys and known hosts live in the sandbox.
        policy = self.root / "policy.yaml"
        policy.write_text(
            "apiVersion: reconciler/v1\nkind: Policy\nspec:\n  reconcilerUser: true\n"
            f'  sshKeys: ["{self.root}/*"]\n  knownHosts: ["{self.root}/*"]\n',
            encoding="utf-8",
        )
        self.env = {
            **{k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "TERM", "TMPDIR")},
            "HOME": str(self.home),
            "GIT_CONFIG_NOSYSTEM": "1",
            "RECONCILER_POLICY": str(policy),
            **GIT_IDENTITY,
        }
        # This process runs the in-process lane: its git calls and `~` see the sandbox too.
        for key in (
            "XDG_CONFIG_HOME",
            "GIT_CONFIG_GLOBAL",
            "GIT_DIR",
            "GIT_WORK_TREE",
            "GIT_INDEX_FILE",
            "RECONCILER_CONTROL",
            "RECONCILER_STATE",
        ):
            os.environ.pop(key, None)
        os.environ.update({k: v for k, v in self.env.items() if k not in ("PATH", "LANG")})

    def git(self, *args: str, cwd: Path) -> str:
        proc = subprocess.run(
            ["git", *args], cwd=cwd, env=self.env, check=True, capture_output=True, text=True
        )
        return proc.stdout

    def repo(self, path: Path) -> Path:
        """A clone on ``main`` (one commit) of its own bare ``origin``, as a lane checkout is."""
        seed = path.with_name(path.name + ".seed")
        seed.mkdir(parents=True)
        (seed / "README.md").write_text("# bench\n", encoding="utf-8")
        self.git("init", "-q", "-b", "main", cwd=seed)
        self.git("add", "-A", cwd=seed)
        self.git("commit", "-q", "-m", "Initial commit", cwd=seed)
        origin = path.with_name(path.name + ".git")
        self.git("clone", "-q", "--bare", str(seed), str(origin), cwd=seed.parent)
        self.git("clone", "-q", str(origin), str(path), cwd=seed.parent)
        shutil.rmtree(seed)
        return path

    def control(self, path: Path, files: dict[str, str]) -> Path:
        """A control repo (working copy) holding ``files`` under manifests/, committed."""
        for rel, text in files.items():
            target = path / "manifests" / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
        self.git("init", "-q", "-b", "main", cwd=path)
        self.git("add", "-A", cwd=path)
        self.git("commit", "-q", "-m", "Desired tasks", cwd=path)
        return path

    def stop_all(self) -> int:
        """Kill every run supervisor (and its group) still alive under a lane root."""
        stopped = 0
        for root in self.lane_roots:
            for pid_json in root.glob(".runs/*/*/pid.json"):
                fp = read_fingerprint(pid_json)
                if fp is not None and alive(*fp):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(fp[0], signal.SIGKILL)
                        stopped += 1
        return stopped

    def close(self) -> None:
        stopped = self.stop_all()
        if stopped:
            log(f"stopped {stopped} leftover run(s)")
        if self.keep:
            log(f"kept the sandbox: {self.root}")
        else:
            shutil.rmtree(self.root, ignore_errors=True)


def read_fingerprint(pid_json: Path) -> tuple[int, int] | None:
    import json

    try:
        data = json.loads(pid_json.read_bytes())
        return int(data["pid"]), int(data["start_time"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def alive(pid: int, start_time: int) -> bool:
    """The process with this pid started at ``start_time`` (clock ticks) and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return False
    fields = raw.rpartition(b")")[2].split()
    return len(fields) > 19 and int(fields[19]) == start_time and fields[0] not in (b"Z", b"X")


# --------------------------------------------------------------------------------- manifests


def lane_doc(name: str, slots: int, root: Path, repo: str, checkout: Path, home: Path) -> str:
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


CONFIG_DOC = """apiVersion: reconciler/v1
kind: Config
metadata:
  name: default
spec:
  branchPrefix: agent/
"""


# ------------------------------------------------------------------------------ git counting


class ProcessCounter:
    """Counts ``git`` processes started by this process (the in-process lane and the control)."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()
        self._original = subprocess.Popen.__init__

    def install(self) -> None:
        original = self._original
        counter = self

        def counting(
            self_: subprocess.Popen[bytes], args: object, *a: object, **kw: object
        ) -> None:
            first = args[0] if isinstance(args, list | tuple) and args else args
            if isinstance(first, str) and os.path.basename(first) == "git":
                with counter._lock:
                    counter.count += 1
            original(self_, args, *a, **kw)  # type: ignore[arg-type]

        subprocess.Popen.__init__ = counting  # type: ignore[assignment,method-assign]

    def uninstall(self) -> None:
        subprocess.Popen.__init__ = self._original  # type: ignore[method-assign]


# --------------------------------------------------------------------------------- plan pass


@dataclass
class PassTiming:
    total: float
    load: float
    observe: float
    plan: float
    git: int


def plan_pass(ctx: Context, counter: ProcessCounter, expect: int) -> PassTiming:
    """What `reconciler plan` does, in-process, with a fresh Engine (and no in-memory cache).

    The CLI runs one-shot commands with the cyclic garbage collector off; so does this pass.
    """
    desired_module._memo.clear()  # a fresh process has not unpickled the cache yet
    before = counter.count
    with gc_paused():
        t0 = time.perf_counter()
        engine = Engine(ctx)
        desired = engine.load()
        t1 = time.perf_counter()
        with engine.reading() as store:
            observed = observe(desired, store, engine.lanes(desired))  # as observe_and_plan
            t2 = time.perf_counter()
            result = plan(desired, observed, engine.clock())
        t3 = time.perf_counter()
    if len(desired.tasks) != expect or len(result.tasks) != expect:
        raise SystemExit(f"plan pass saw {len(desired.tasks)} tasks, planned {len(result.tasks)}")
    unreachable = [v.error for v in observed.lanes.values() if not v.reachable]
    if unreachable:
        raise SystemExit(f"lane not observed: {unreachable}")
    return PassTiming(t3 - t0, t1 - t0, t2 - t1, t3 - t2, counter.count - before)


def parse_only(paths: list[Path]) -> float:
    """Read and parse the same files with ruamel's C loader, nothing else (gc paused, as the
    reconciler's loader does, so the baseline is the fastest plain parse)."""
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
    if docs != len(paths):
        raise SystemExit(f"parse baseline read {docs} documents from {len(paths)} files")
    return elapsed


@dataclass
class SizeResult:
    n: int
    parse: list[float]
    cold: list[PassTiming]
    warm: list[PassTiming]

    def med(self, which: str, stage: str = "total") -> float:
        if which == "parse":
            return median(self.parse)
        timings: list[PassTiming] = getattr(self, which)
        return median([getattr(t, stage) for t in timings])


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


def build_plan_sandbox(box: Sandbox, n: int) -> tuple[Context, list[Path]]:
    base = box.root / f"plan-{n}"
    checkout = box.repo(base / "src" / "app")
    lane_root = base / "worktrees"
    box.lane_roots.append(lane_root)
    files = {
        "lanes.yaml": lane_doc("bench", 4, lane_root, "app", checkout, box.home),
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


def measure_size(
    box: Sandbox, n: int, counter: ProcessCounter, reps: int, warm_up: bool
) -> SizeResult:
    log(f"plan over {n} tasks")
    ctx, paths = build_plan_sandbox(box, n)
    cache = ctx.state_dir / "cache"
    if warm_up:  # once per run: imports, first-use caches (the cold pass warms the next size)
        plan_pass(ctx, counter, n)
    result = SizeResult(n, [], [], [])
    rep = 0
    while rep < reps:
        result.parse.append(parse_only(paths))
        shutil.rmtree(cache, ignore_errors=True)
        result.cold.append(plan_pass(ctx, counter, n))
        if not (cache / "manifests.pickle").exists():
            raise SystemExit("the cold pass wrote no parse cache")
        result.warm.append(plan_pass(ctx, counter, n))
        log(
            f"  rep {rep + 1}: parse {result.parse[-1]:.3f}s cold {result.cold[-1].total:.3f}s "
            f"warm {result.warm[-1].total:.3f}s (git processes {result.warm[-1].git})"
        )
        if rep == 0 and result.cold[0].total + result.warm[0].total > EXPENSIVE_PASS:
            reps = 1
        rep += 1
    return result


def cli_plan(box: Sandbox, ctx: Context) -> tuple[float, int]:
    """One `reconciler plan` subprocess (warm cache): wall seconds and exit status."""
    env = {
        **box.env,
        "RECONCILER_CONTROL": ctx.control,
        "RECONCILER_STATE": str(ctx.state_dir),
        "NO_COLOR": "1",
    }
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "reconciler", "plan"],
        env=env,
        cwd=box.root,
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        log(f"reconciler plan failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    return elapsed, proc.returncode


def size_label(n: int) -> str:
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


def plan_figures(box: Sandbox, table: Table, sizes: list[int], reps: int) -> None:
    counter = ProcessCounter()
    counter.install()
    try:
        results = [measure_size(box, n, counter, reps, i == 0) for i, n in enumerate(sizes)]
    finally:
        counter.uninstall()
    for r in results:
        label = size_label(r.n)
        parse = r.med("parse")
        warm, cold = r.med("warm"), r.med("cold")
        reps_note = f"median of {len(r.warm)}" if len(r.warm) > 1 else "1 run"
        if r.n == 10_000:  # the design states this one in seconds
            target, ok = f"≤ {WARM_10K_SECONDS}s", warm <= WARM_10K_SECONDS
        else:
            target, ok = "info", None
        table.add(
            f"plan({label}) warm",
            f"{warm:.3f}s = {warm / parse:.2f}x parse ({reps_note})",
            target,
            ok,
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
                for stage in ("load", "observe", "plan")
            )
            table.add(f"  plan({label}) {which} by stage", stages)
        load_cold = r.med("cold", "load")
        table.add(f"  plan({label}) cold, load stage only / parse", f"{load_cold / parse:.2f}")
        table.add(f"  plan({label}) git processes per pass", str(r.warm[-1].git))
    if len(results) >= 2:
        small, big = results[0], results[-1]
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
    big = results[-1]
    ctx = Context(
        control=str(box.root / f"plan-{big.n}" / "control"),
        state_dir=box.root / f"plan-{big.n}" / "state",
    )
    log(f"one `reconciler plan` subprocess over {big.n} tasks (warm)")
    wall, code = cli_plan(box, ctx)
    table.add(
        f"`reconciler plan` subprocess, {size_label(big.n)} warm",
        f"{wall:.3f}s = {wall / big.med('warm'):.2f}x in-process warm"
        + ("" if code == 0 else f" (exit {code})"),
    )


# ------------------------------------------------------------------------------ slot sampler


class SlotSampler:
    """Samples /proc every ``interval``: live run supervisors per lane (and the maximum seen).

    A run counts from the moment its supervisor recorded itself (``pid.json``) until that process
    is gone, which is how the planner counts a slot as used. To stay cheap next to the runs, a
    sample re-reads only the runs not known to have ended and lists the task directories it has
    not seen yet; every ``rescan``-th sample lists everything (new attempts of known tasks).
    """

    def __init__(self, lanes: dict[str, Path], interval: float = 0.05, rescan: int = 10) -> None:
        self.lanes = lanes
        self.interval = interval
        self.rescan = rescan
        self.max_live: Counter[str] = Counter()
        self.samples = 0
        self._runs: dict[Path, dict[Path, bool]] = {root: {} for root in lanes.values()}
        self._listed: set[Path] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="slot-sampler", daemon=True)

    def __enter__(self) -> SlotSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _discover(self, lane_root: Path, full: bool) -> list[Path]:
        runs = lane_root / ".runs"
        known = self._runs[lane_root]
        try:
            tasks = os.listdir(runs)
        except FileNotFoundError:
            return []
        for task in tasks:
            task_dir = runs / task
            if task_dir in self._listed and not full:
                continue
            try:
                entries = os.listdir(task_dir)
            except OSError:
                continue
            self._listed.add(task_dir)
            for entry in entries:
                known.setdefault(task_dir / entry, False)
        return [d for d, ended in known.items() if not ended]

    def live(self, lane_root: Path, full: bool = True) -> int:
        count = 0
        for run_dir in self._discover(lane_root, full):
            fp = read_fingerprint(run_dir / "pid.json")
            if fp is None:
                continue  # starting: the supervisor has not recorded itself yet
            if alive(*fp):
                count += 1
            elif (run_dir / "exit.json").exists():
                self._runs[lane_root][run_dir] = True
        return count

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            full = self.samples % self.rescan == 0
            for lane, root in self.lanes.items():
                self.max_live[lane] = max(self.max_live[lane], self.live(root, full))
            self.samples += 1


# ------------------------------------------------------------------------- 500 short tasks

AGENT_SCRIPT = """#!/bin/sh
# bench agent: work for a moment, leave one commit, succeed
sleep {seconds}
exec git commit --allow-empty --quiet -m "bench change"
"""


def write_agent(path: Path, seconds: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(AGENT_SCRIPT.format(seconds=seconds), encoding="utf-8")
    path.chmod(0o755)
    return path


def agent_duration(box: Sandbox, script: Path, reps: int = 3) -> float:
    """The agent's own wall time, run alone in a scratch repository (median)."""
    scratch = box.repo(box.root / "agent-alone")
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        subprocess.run([str(script)], cwd=scratch, env=box.env, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return median(times)


def spread(total: int, slots: list[int]) -> list[int]:
    """``total`` tasks over lanes in proportion to their slots (largest remainder)."""
    whole = sum(slots)
    exact = [total * s / whole for s in slots]
    counts = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(slots)), key=lambda i: exact[i] - counts[i], reverse=True)
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


@dataclass
class DriveResult:
    wall: float
    passes: list[float]
    phases: Counter[str]
    failures: list[str]
    finished: bool
    starts: int


def drive(
    engine: Engine, n: int, limit: float, stop_when: Callable[[Counter[str]], bool] | None = None
) -> DriveResult:
    """`reconciler run` without the interval: apply passes back to back until all tasks end."""
    passes: list[float] = []
    failures: list[str] = []
    phases: Counter[str] = Counter()
    starts = 0
    terminal = {Phase.DONE.value, Phase.FAILED.value}
    with engine.locked(None) as store:
        t0 = time.perf_counter()
        while True:
            p0 = time.perf_counter()
            desired = engine.load()
            result = engine.apply(desired, store)
            passes.append(time.perf_counter() - p0)
            if result.report is not None:
                failures += [f"{a.kind.value} {a.task}: {m}" for a, m in result.report.failed]
            starts += sum(
                1
                for a in result.plan.actions
                if a.kind in (ActionKind.START, ActionKind.RETRY, ActionKind.ITERATE)
            )
            phases = Counter(s.phase.value for s in result.plan.tasks)
            # a task planned as done is only done once its `complete` action went through
            unrecorded = any(
                a.kind is ActionKind.COMPLETE
                for a, _ in (result.report.failed if result.report else [])
            )
            finished = sum(phases[p] for p in terminal) == n and not unrecorded
            if finished or (stop_when is not None and stop_when(phases)):
                break
            if time.perf_counter() - t0 > limit:
                break
            if result.plan.empty:
                time.sleep(0.02)  # nothing to do until a run ends: do not spin on 2 cores
        wall = time.perf_counter() - t0
    return DriveResult(wall, passes, phases, failures, finished, starts)


def slot_figures(box: Sandbox, table: Table, n: int, seconds: float, limit: float) -> None:
    log(f"{n} short tasks over {sum(s for _, s in SLOT_LANES)} slots")
    base = box.root / "slots"
    script = write_agent(base / "bin" / "bench-agent", seconds)
    duration = agent_duration(box, script)
    counts = spread(n, [s for _, s in SLOT_LANES])
    files = {"config.yaml": CONFIG_DOC, "agents.yaml": agent_doc("short", [str(script)])}
    lane_roots: dict[str, Path] = {}
    lanes_text = []
    index = 0
    for (lane, slots), count in zip(SLOT_LANES, counts, strict=True):
        checkout = box.repo(base / "src" / lane)
        root = base / "worktrees" / lane
        lane_roots[lane] = root
        box.lane_roots.append(root)
        lanes_text.append(lane_doc(lane, slots, root, "repo", checkout, box.home))
        for _ in range(count):
            name = f"short-{index:04d}"
            files[f"tasks/{name}.yaml"] = task_doc(name, lane, "repo", "short", index)
            index += 1
    files["lanes.yaml"] = "---\n".join(lanes_text)
    control = box.control(base / "control", files)
    engine = Engine(Context(control=str(control), state_dir=base / "state"))
    ideal = max(math.ceil(c / s) for (_, s), c in zip(SLOT_LANES, counts, strict=True)) * duration
    log(f"  agent alone {duration:.3f}s; ideal schedule {ideal:.1f}s; driving apply passes")
    with SlotSampler(lane_roots) as sampler:
        result = drive(engine, n, limit)
    done = result.phases[Phase.DONE.value]
    ratio = result.wall / ideal
    table.add(
        f"{n} short tasks over {sum(s for _, s in SLOT_LANES)} slots / ideal",
        f"{ratio:.2f} ({result.wall:.1f}s / {ideal:.1f}s; agent alone {duration:.3f}s)"
        + ("" if result.finished else f"; STOPPED at {limit:.0f}s, {done}/{n} done"),
        f"≤ {SCHEDULE_TARGET}",
        result.finished and ratio <= SCHEDULE_TARGET,
    )
    table.add(
        "  tasks done / failed / apply errors",
        f"{done} / {result.phases[Phase.FAILED.value]} / {len(result.failures)}",
        f"{n} / 0 / 0",
        done == n and not result.failures,
    )
    over = False
    for (lane, slots), count in zip(SLOT_LANES, counts, strict=True):
        seen = sampler.max_live[lane]
        over = over or seen > slots
        table.add(
            f"  max live runs {lane} ({count} tasks)",
            f"{seen} of {slots} slots",
            f"≤ {slots}",
            seen <= slots,
        )
    table.add(
        "  passes / mean pass / starts",
        f"{len(result.passes)} / {statistics.mean(result.passes):.3f}s / {result.starts} "
        f"({sampler.samples} /proc samples)",
    )
    per_start = (result.wall - ideal) / max(1, result.starts)
    table.add(
        "  wall beyond ideal per run started",
        f"{per_start:.3f}s = {per_start / duration:.2f}x agent",
    )
    for failure in result.failures[:5]:
        log(f"  apply error: {failure}")
    if over:
        log("  a lane ran more runs than its slots")


# ------------------------------------------------------------------ agent killed → refilled


def refill_figures(box: Sandbox, table: Table) -> None:
    """One slot, two long tasks: kill the first agent, then apply passes until the second runs."""
    log("agent killed → slot refilled")
    base = box.root / "refill"
    script = base / "bin" / "long-agent"
    script.parent.mkdir(parents=True)
    script.write_text("#!/bin/sh\nexec sleep 60\n", encoding="utf-8")
    script.chmod(0o755)
    checkout = box.repo(base / "src" / "repo")
    root = base / "worktrees"
    box.lane_roots.append(root)
    files = {
        "lanes.yaml": lane_doc("one", 1, root, "repo", checkout, box.home),
        "agents.yaml": agent_doc("long", [str(script)]),
        "tasks/first.yaml": task_doc("first", "one", "repo", "long", 1),
        "tasks/second.yaml": task_doc("second", "one", "repo", "long", 2),
    }
    control = box.control(base / "control", files)
    engine = Engine(Context(control=str(control), state_dir=base / "state"))
    started = drive(engine, 2, 20.0, stop_when=lambda p: p[Phase.RUNNING.value] >= 1)
    run_dir = root / ".runs" / "first" / "1.1"
    agent_pid = wait_for(lambda: agent_pid_of(run_dir / "pid.json"), 10.0)
    supervisor = read_fingerprint(run_dir / "pid.json")
    if not started.passes or agent_pid is None or supervisor is None:
        table.add("agent killed → slot refilled", "the first run did not start", "≤ 1 pass", False)
        return
    second = root / ".runs" / "second" / "1.1" / "pid.json"
    marks: dict[str, float] = {}

    def watch() -> None:  # when the run's end became visible, and when its supervisor was gone
        while "gone" not in marks and time.perf_counter() - killed < 20:
            now = time.perf_counter()
            if "exit" not in marks and (run_dir / "exit.json").exists():
                marks["exit"] = now
            if not alive(*supervisor):
                marks["gone"] = now
            time.sleep(0.002)

    pass_starts: list[float] = []
    killed = time.perf_counter()
    os.kill(agent_pid, signal.SIGKILL)
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    with engine.locked(None) as store:
        while len(pass_starts) < 100 and not second.exists():
            pass_starts.append(time.perf_counter())
            engine.apply(engine.load(), store)
    refilled = time.perf_counter() - killed
    watcher.join()
    gone = marks.get("gone", math.inf)
    # passes begun after the supervisor was gone; the refilling pass counts even if it began
    # just before (the exit then happened before that pass looked at the process)
    after_gone = max(1, sum(1 for t in pass_starts if t >= gone))
    table.add(
        "agent killed → slot refilled",
        f"{after_gone} pass(es) after the supervisor exited "
        f"({len(pass_starts)} after the kill); {refilled:.3f}s after the kill",
        "≤ 1 pass",
        second.exists() and after_gone <= 1,
    )
    table.add(
        "  supervisor lingers after exit.json",
        f"{gone - marks.get('exit', math.nan):.3f}s (slot still counted as used; exit.json "
        f"written {marks.get('exit', math.nan) - killed:.3f}s after the kill)",
    )


def agent_pid_of(pid_json: Path) -> int | None:
    import json

    try:
        value = json.loads(pid_json.read_bytes()).get("agent_pid")
    except (OSError, ValueError):
        return None
    return value if isinstance(value, int) else None


def wait_for(probe: Callable[[], T | None], timeout: float) -> T | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value is not None:
            return value
        time.sleep(0.01)
    return None


# ------------------------------------------------------------------------------ GitHub forge

GITHUB_REPOS = 5
GITHUB_PRS = 120  # per repository: the PR list takes two pages of 100
GITHUB_OPEN_TASK_PRS = 40  # per repository: open PRs carrying the reconciler's task marker
GITHUB_OPEN_OTHER_PRS = 10  # per repository: open PRs people opened (no marker)
GITHUB_DONE_TASK_PRS = 30  # per repository: merged PRs of desired tasks (done)
GITHUB_TOKEN = "ghp_" + "B3nchT0k3nB3nchT0k3n" * 2
GITHUB_OWNER = "acme"
SUPPORT = Path(__file__).resolve().parents[1] / "tests" / "support"
FEEDBACK_REQUEST = re.compile(
    r"/commits/[0-9a-f]+/(check-runs|status)$|/pulls/\d+/(reviews|comments)$"
)


def github_lane_doc(
    name: str, root: Path, repos: list[tuple[str, Path, str]], token_file: Path, home: Path
) -> str:
    """One lane, one token file, several repositories each with its own GitHub repository."""
    entries = "".join(
        f"""    - name: {repo}
      checkout: {checkout}
      forge: {{kind: github, repo: {full_name}}}
"""
        for repo, checkout, full_name in repos
    )
    return f"""apiVersion: reconciler/v1
kind: Lane
metadata:
  name: {name}
spec:
  maxConcurrency: 4
  workspaceRoot: {root}
  credentials:
    github: {token_file}
  repos:
{entries}  env:
    HOME: {home}
"""


def pushed_commit(box: Sandbox, checkout: Path, branch: str, note: str) -> str:
    """A new commit on ``branch`` as the lane's push left it: the remote-tracking ref moved."""
    tree = "main^{tree}"
    sha = box.git("commit-tree", tree, "-p", "main", "-m", note, cwd=checkout).strip()
    box.git("update-ref", f"refs/remotes/origin/{branch}", sha, cwd=checkout)
    return sha


def seed_pulls(box: Sandbox, fake: Any, tasks: list[str], checkout: Path) -> int:
    """``GITHUB_PRS`` pull requests as a busy repository has them; the open task PRs' count.

    Open task PRs come first, each on its own commit that the lane pushed (its remote-tracking
    ref points there, so the feedback loop reads the commit's checks), then open PRs by people,
    merged PRs of desired tasks, and closed or merged history without marker.
    """
    from reconciler.protocol import pr_marker as marker

    stamp = "2025-01-01T00:00:00Z"
    open_tasks = GITHUB_OPEN_TASK_PRS
    open_other = open_tasks + GITHUB_OPEN_OTHER_PRS
    done = open_other + GITHUB_DONE_TASK_PRS
    for number in range(1, GITHUB_PRS + 1):
        body = "A change."
        if number <= open_tasks or open_other < number <= done:
            task = tasks[number - 1 if number <= open_tasks else number - 1 - GITHUB_OPEN_OTHER_PRS]
            head, body = f"agent/{task}", f"Task {task}.\n\n{marker(task)}"
        else:
            head = f"people/change-{number}"
        state = "open" if number <= open_other else "closed"
        # task PRs that were closed are merged; of the history, two in three were merged
        merged = stamp if open_other < number <= done or (number > done and number % 3) else None
        if number <= open_tasks:
            sha = pushed_commit(box, checkout, head, f"work #{number}")
        else:
            sha = hashlib.sha256(f"{fake.owner}/{fake.name}#{number}".encode()).hexdigest()[:40]
        fake.pulls.append(
            {
                "number": number,
                "html_url": f"https://github.com/{fake.owner}/{fake.name}/pull/{number}",
                "state": state,
                "title": f"Change {number}",
                "body": body,
                "draft": False,
                "head": {"ref": head, "sha": sha, "label": f"{fake.owner}:{head}"},
                "base": {"ref": "main"},
                "merged_at": merged,
                "closed_at": None if state == "open" else stamp,
                "updated_at": stamp,
                "labels": [],
            }
        )
    fake.version += 1
    return open_tasks


@dataclass
class ForgePass:
    requests: int
    points: int
    not_modified: int
    feedback: int  # requests about one PR: its head commit's checks and status, its reviews
    seconds: float


def github_pass(engine: Engine, fakes: list[Any], rsps: Any, expect: int) -> ForgePass:
    """What `reconciler plan` does (observe + plan, read-only), counted at the fake GitHub."""
    from fake_github import unserved

    before = [(len(f.requests), f.points, f.not_modified) for f in fakes]
    t0 = time.perf_counter()
    desired = engine.load()
    with engine.reading() as store:
        result, observed = engine.observe_and_plan(desired, store)
    seconds = time.perf_counter() - t0
    refused = unserved(rsps)
    if refused:
        raise SystemExit(f"requests the fake GitHub does not serve: {refused[:5]}")
    if len(result.tasks) != expect:
        raise SystemExit(f"the GitHub pass planned {len(result.tasks)} tasks, not {expect}")
    problems = [
        f"{lane.name}: {lane.error}" for lane in observed.lanes.values() if not lane.reachable
    ]
    for lane in observed.lanes.values():
        problems += [f"{name}: {view.error}" for name, view in lane.repos.items() if view.error]
        problems += [
            f"{c.name} {c.subject}: {c.detail}"
            for c in lane.preflight
            if not c.ok and not c.advisory  # advisory checks never hold dispatch back
        ]
    if problems:
        raise SystemExit(f"the GitHub pass did not observe cleanly: {problems[:5]}")
    new = [r for f, (n, _, _) in zip(fakes, before, strict=True) for r in f.requests[n:]]
    return ForgePass(
        requests=len(new),
        points=sum(f.points - p for f, (_, p, _) in zip(fakes, before, strict=True)),
        not_modified=sum(f.not_modified - m for f, (_, _, m) in zip(fakes, before, strict=True)),
        feedback=sum(1 for r in new if FEEDBACK_REQUEST.search(r.split("?", 1)[0])),
        seconds=seconds,
    )


def push_to_one_pull(box: Sandbox, fake: Any, checkout: Path) -> None:
    """The lane pushes a new commit to one open task PR: a new head, a new list ETag."""
    pr = next(p for p in fake.pulls if p["state"] == "open")
    pr["head"]["sha"] = pushed_commit(box, checkout, pr["head"]["ref"], "answer to review")
    pr["updated_at"] = "2025-01-02T00:00:00Z"
    fake.version += 1


def github_figures(box: Sandbox, table: Table, n: int) -> None:
    """``n`` tasks over ``GITHUB_REPOS`` repositories with GitHub forges, served by one stateful
    fake per repository through ``responses`` (nothing reaches the network): a first pass with
    empty ETag caches, then the same pass with nothing changed."""
    sys.path.insert(0, str(SUPPORT))
    try:
        import responses
        from fake_github import FakeGitHub, VirtualTime
    except ImportError as exc:
        raise SystemExit(
            f"the GitHub figures need {exc.name} (installed by `make`: pip install -e '.[test]')"
        ) from None
    from reconciler.node import forge_github

    log(f"{n} tasks over {GITHUB_REPOS} repositories on a fake GitHub")
    base = box.root / "github"
    token_file = box.home / ".config" / "reconciler" / "github-token"
    token_file.parent.mkdir(parents=True, exist_ok=True)
    token_file.write_text(GITHUB_TOKEN + "\n", encoding="utf-8")
    token_file.chmod(0o600)
    root = base / "worktrees"
    box.lane_roots.append(root)
    counts = spread(n, [1] * GITHUB_REPOS)
    repos: list[tuple[str, Path, str]] = []
    tasks: list[list[str]] = []
    files = {"config.yaml": CONFIG_DOC, "agents.yaml": agent_doc("noop", ["/bin/true"])}
    for r, count in enumerate(counts):
        repo = f"r{r}"
        repos.append((repo, box.repo(base / "src" / repo), f"{GITHUB_OWNER}/{repo}"))
        names = [f"{repo}-task-{i:03d}" for i in range(count)]
        tasks.append(names)
        for i, name in enumerate(names):
            files[f"tasks/{name}.yaml"] = task_doc(name, "gh", repo, "noop", i)
    files["lanes.yaml"] = github_lane_doc("gh", root, repos, token_file, box.home)
    control = box.control(base / "control", files)
    engine = Engine(Context(control=str(control), state_dir=base / "state"))
    clock = VirtualTime()
    saved_time = forge_github.TIME
    forge_github.TIME = forge_github.Time(clock=clock.clock, sleep=clock.sleep, wall=clock.wall)
    forge_github._PAGES.clear()
    forge_github._GATES.clear()
    try:
        with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
            fakes = [FakeGitHub(rsps, full_name, GITHUB_TOKEN) for _, _, full_name in repos]
            open_prs = sum(
                seed_pulls(box, fake, names, checkout)
                for fake, names, (_, checkout, _) in zip(fakes, tasks, repos, strict=True)
            )
            first = github_pass(engine, fakes, rsps, n)
            second = github_pass(engine, fakes, rsps, n)
            push_to_one_pull(box, fakes[0], repos[0][1])
            third = github_pass(engine, fakes, rsps, n)
            forge_github._PAGES.clear()  # a new process: only the lane's cache file remains
            fresh = github_pass(engine, fakes, rsps, n)
    finally:
        forge_github.TIME = saved_time
        forge_github._PAGES.clear()
        forge_github._GATES.clear()
    if clock.sleeps:  # a retry or a write waited: something failed or wrote
        raise SystemExit(f"the forge waited during read-only passes: {clock.sleeps[:5]}")
    if first.not_modified:
        raise SystemExit(f"the first pass got {first.not_modified} 304s with empty caches")
    label = f"{n} tasks / {GITHUB_REPOS} repos"
    setup = f"{GITHUB_PRS} PRs per repo, {open_prs} open task PRs"
    table.add(
        f"GitHub requests, first pass, {label}",
        f"{first.requests} requests, {first.points} points ({setup}; {first.seconds:.2f}s)",
    )
    table.add(
        "GitHub points, unchanged second pass",
        f"{second.points} ({second.requests} requests, {second.not_modified} of them 304; "
        f"{second.seconds:.2f}s)",
        "0",
        second.points == 0,
    )
    table.add(
        "GitHub points, unchanged pass in a new process",
        f"{fresh.points} ({fresh.requests} requests, {fresh.not_modified} of them 304: the ETags "
        "come from the lane's cache file, as for `apply` from cron)",
        "0",
        fresh.points == 0,
    )
    pages = -(-GITHUB_PRS // 100)
    table.add(
        "  GitHub points, next pass after one push to one PR",
        f"{third.points} (expected {pages + 2}: the {pages} PR list pages of its repository, "
        f"and checks and status of the new head commit; {third.requests} requests)",
    )
    per_repo = [(p.requests - p.feedback) / GITHUB_REPOS for p in (first, second)]
    table.add(
        "  GitHub requests per open task PR per pass",
        f"{first.feedback / open_prs:.2f} first, {second.feedback / open_prs:.2f} unchanged "
        f"({open_prs} open task PRs; plus {per_repo[0]:g} and {per_repo[1]:g} per repo: "
        "repository, /rate_limit, PR list pages)",
    )


# -------------------------------------------------------------------------------- transports

TRANSPORT_TASKS = 200
BATCH_REPS = 7  # each repetition sends the batch through every transport in turn
PASS_REPS = 5  # each repetition runs the in-process pass and the ssh pass in turn
ROUND_TRIPS_TARGET = 1.5  # what ssh adds to a pass, in ssh batches: one per lane and pass
SSHD = "/usr/sbin/sshd"
SSH_SUPPORT = Path(__file__).resolve().parents[1] / "tests" / "ssh"
BATCH_ROW = "node batch, in-process / local user / ssh"
BATCH_SPLIT_ROW = "  ssh batch: connection + node start-up + work"


def pass_row(n: int) -> str:
    return f"pass over {n} tasks, ssh / in-process"


def extra_row(n: int) -> str:
    return f"  pass over {n} tasks, ssh - in-process / one ssh batch"


class Recorder:
    """A transport that keeps the batches a pass sends through it, and sends them on."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.batches: list[Any] = []

    def exchange(self, batch: Any) -> Any:
        self.batches.append(batch)
        return self.inner.exchange(batch)


def transports_unavailable() -> str | None:
    """Why this machine cannot host the local-user and ssh lanes, or None."""
    if os.geteuid() != 0:
        return "needs root: it creates a login user, switches to it and runs sshd"
    if not os.access(SSHD, os.X_OK):
        return f"{SSHD} is missing: apt-get install openssh-server"
    for tool in ("ssh", "ssh-keygen", "setpriv", "useradd", "userdel", "git"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    sys.path[:0] = [str(SSH_SUPPORT), str(SUPPORT)]
    try:
        import ssh_support  # noqa: F401
    except ImportError as exc:
        return f"needs {exc.name} (installed by `make`: pip install -e '.[test]')"
    return None


@contextlib.contextmanager
def lane_host(box: Sandbox) -> Iterator[Any]:
    """A throwaway login user with ``~/src/app`` (a clone of ``~/remotes/app.git``), a
    reconciler it can run, and an sshd on 127.0.0.1 letting only that user in (the test
    support's ``Side``). The local-user transport runs the user's Python meanwhile. The user is
    removed and sshd stopped on the way out, whatever happened."""
    import linux_users
    import ssh_support as ss

    from reconciler.lanes import local_user

    base = box.root / "transports"
    saved = local_user.PYTHON
    user = ss.create_user()
    sshd: Any = None
    try:
        sshd = ss.Sshd(base / "sshd", user)
        installed = ss.install_reconciler(user)  # pytest.skip when the user cannot run it
        ss.make_remote_repo(user)
        sshd.start()
        local_user.PYTHON = installed.python
        yield ss.Side(root=base, user=user, sshd=sshd, installed=installed)
    finally:
        local_user.PYTHON = saved
        try:
            if sshd is not None:
                sshd.stop()
        finally:
            linux_users.remove_user(user)


def checked(observed: Any, lanes: int) -> None:
    """Every lane answered and every repository was observed (else the figures mean nothing)."""
    problems = [f"{v.name}: {v.error}" for v in observed.lanes.values() if not v.reachable]
    for view in observed.lanes.values():
        problems += [f"{view.name} {r}: {rv.error}" for r, rv in view.repos.items() if rv.error]
    if problems or len(observed.lanes) != lanes:
        raise SystemExit(f"the transports pass did not observe cleanly: {problems[:5]}")


def skipped_transports(table: Table, n: int, reason: str) -> None:
    log(f"transports: skipped ({reason})")
    for name in (BATCH_ROW, pass_row(n)):
        table.add(name, f"skipped: {reason}")


def transport_figures(box: Sandbox, table: Table, n: int) -> None:
    """One pass's batch (pre-flight + observe, one repository) through each transport, and an
    observe+plan pass over ``n`` tasks with the lane in-process and behind ssh."""
    reason = transports_unavailable()
    if reason is not None:
        skipped_transports(table, n, reason)
        return
    import pytest

    log(f"transports: a login user, sshd on 127.0.0.1, {n} tasks per pass")
    t0 = time.perf_counter()
    try:
        with lane_host(box) as side:
            log(f"  user {side.user.name} and sshd ready in {time.perf_counter() - t0:.1f}s")
            measure_transports(box, table, side, n)
    except pytest.skip.Exception as exc:  # install_reconciler: no Python the user can run
        skipped_transports(table, n, exc.msg or "the lane user cannot run the reconciler")
    log(f"  transports section took {time.perf_counter() - t0:.1f}s (user removed, sshd stopped)")


def measure_transports(box: Sandbox, table: Table, side: Any, n: int) -> None:
    import ssh_support as ss

    from reconciler.lanes import InProcessTransport
    from reconciler.lanes.local_user import LocalUserTransport
    from reconciler.lanes.ssh import SshTransport, authorized_keys_line, ensure_key
    from reconciler.manifests.models import LaneSpec
    from reconciler.protocol import Batch

    base = side.root
    far = ss.LANE
    home = side.user.home
    root = base / "worktrees"
    box.lane_roots.append(root)
    checkout = box.repo(base / "src" / "app")
    specs: dict[str, dict[str, Any]] = {
        "near": {  # the reconciler's own user: in-process
            "workspaceRoot": str(root),
            "repos": [{"name": "app", "checkout": str(checkout)}],
        },
        "user": {  # another user on this machine: setpriv, `reconciler node` on stdin
            "user": side.user.name,
            "workspaceRoot": f"{home}/worktrees",
            "repos": [{"name": "app", "checkout": f"{home}/src/app"}],
        },
        far: side.spec(),  # the same user's home behind sshd: a forced, pinned node
    }
    line = authorized_keys_line(
        far, LaneSpec.model_validate(specs[far]), ensure_key(str(side.identity)).public
    )
    ss.install_authorized_keys(side.user, line)
    side.trust()

    def control(name: str, lanes: list[str], tasks: int) -> Engine:
        files = {
            "config.yaml": CONFIG_DOC,
            "agents.yaml": agent_doc("noop", ["/bin/true"]),
            "lanes.yaml": "\n---\n".join(ss.lane_manifest(k, specs[k]) for k in lanes) + "\n",
        }
        for lane in lanes:
            for i in range(tasks):
                task = f"{lane}-task-{i:03d}"
                files[f"tasks/{task}.yaml"] = task_doc(task, lane, "app", "noop", i)
        repo = box.control(base / name, files)
        ctx = Context(control=str(repo), state_dir=base / f"{name}.state")
        seed_task_rows(ctx)
        return Engine(ctx)

    # 1. The batch a pass sends each lane (recorded from a real pass), then sent again and again.
    engine = control("control-batch", ["near", "user", far], 1)
    desired = engine.load()
    lanes = engine.lanes(desired)
    kinds = {"near": InProcessTransport, "user": LocalUserTransport, far: SshTransport}
    recorders: dict[str, Recorder] = {}
    for name, lane in lanes.items():
        if not isinstance(lane.transport, kinds[name]):
            raise SystemExit(f"lane {name} got {type(lane.transport).__name__}")
        recorders[name] = Recorder(lane.transport)
        lane.transport = recorders[name]
    with engine.reading() as store:
        checked(observe(desired, store, lanes), 3)
    batches = {}
    for name, rec in recorders.items():
        if len(rec.batches) != 1:
            raise SystemExit(f"a pass sent lane {name} {len(rec.batches)} batches, not 1")
        batches[name] = rec.batches[0]
    ops = "+".join(r.op for r in batches["near"].requests)
    empty = Batch(requests=[])
    full: dict[str, list[float]] = {name: [] for name in batches}
    bare: dict[str, list[float]] = {"user": [], far: []}

    def send(name: str, batch: Any, into: list[float]) -> None:
        t = time.perf_counter()
        result = recorders[name].inner.exchange(batch)
        into.append(time.perf_counter() - t)
        if len(result.responses) != len(batch.requests) or not all(r.ok for r in result.responses):
            raise SystemExit(f"lane {name} answered the bench batch with failures: {result}")

    for _ in range(BATCH_REPS):  # a real and an empty batch back to back: paired differences
        send("near", batches["near"], full["near"])
        for name in ("user", far):
            send(name, batches[name], full[name])
            send(name, empty, bare[name])
    inproc, user, ssh = (median(full[k]) for k in ("near", "user", far))
    start, ssh_empty = median(bare["user"]), median(bare[far])
    connection = median([s - u for s, u in zip(bare[far], bare["user"], strict=True)])
    work = median([f - e for f, e in zip(full[far], bare[far], strict=True)])
    table.add(
        BATCH_ROW,
        f"{inproc:.3f}s / {user:.3f}s / {ssh:.3f}s; local user/in-process {user / inproc:.1f}, "
        f"ssh/in-process {ssh / inproc:.1f} ({ops}, 1 repo; median of {BATCH_REPS})",
    )
    table.add(
        BATCH_SPLIT_ROW,
        f"{connection:.3f}s + {start:.3f}s + {work:.3f}s (an empty batch takes {ssh_empty:.3f}s "
        f"over ssh, {start:.3f}s as the local user; the work in-process {inproc:.3f}s)",
    )

    # 2. An observe+plan pass over n tasks, the lane in-process, then the lane behind ssh.
    engines = {"near": control("control-near", ["near"], n), far: control("control-far", [far], n)}
    loaded = {name: e.load() for name, e in engines.items()}
    passes: dict[str, list[float]] = {name: [] for name in engines}
    for rep in range(PASS_REPS + 1):  # the first round warms up (imports, caches)
        for name, e in engines.items():
            t = time.perf_counter()
            with e.reading() as store:
                result, observed = e.observe_and_plan(loaded[name], store)
            elapsed = time.perf_counter() - t
            checked(observed, 1)
            if len(result.tasks) != n:
                raise SystemExit(f"the {name} pass planned {len(result.tasks)} tasks, not {n}")
            if rep:
                passes[name].append(elapsed)
    near_pass, far_pass = median(passes["near"]), median(passes[far])
    ratio = far_pass / near_pass
    table.add(
        pass_row(n),
        f"{ratio:.2f} ({far_pass:.3f}s / {near_pass:.3f}s; median of {PASS_REPS})",
    )
    extra = (far_pass - near_pass) / ssh
    table.add(
        extra_row(n),
        f"{extra:.2f} (ssh adds {far_pass - near_pass:.3f}s to the pass; one ssh batch {ssh:.3f}s)",
        f"≤ {ROUND_TRIPS_TARGET:g}",
        extra <= ROUND_TRIPS_TARGET,
    )


# ---------------------------------------------------------------------------------- the pool


def pool_figures(box: Sandbox, table: Table, files: int, reps: int) -> None:
    """A start on a large repository: a fresh ``git worktree add`` against a pooled worktree
    (branch switch, clean, move), median of ``reps`` each, side by side."""
    from reconciler.node import git as gitops
    from reconciler.node import pool

    log(f"pool: a repository of {files} files")
    base = box.root / "pool"
    seed = base / "seed"
    seed.mkdir(parents=True)
    for i in range(files):
        directory = seed / f"d{i // 500:03d}"
        directory.mkdir(exist_ok=True)
        (directory / f"f{i:05d}.txt").write_text(f"file {i}\n" * 20, encoding="utf-8")
    box.git("init", "-q", "-b", "main", cwd=seed)
    box.git("add", "-A", cwd=seed)
    # no background gc: it would repack the seed's objects while it is removed below
    box.git("-c", "gc.auto=0", "-c", "maintenance.auto=false", "commit", "-qm", "big", cwd=seed)
    origin = base / "origin.git"
    box.git("clone", "-q", "--bare", str(seed), str(origin), cwd=base)
    checkout = base / "checkout"
    box.git("clone", "-q", str(origin), str(checkout), cwd=base)
    shutil.rmtree(seed)
    root = base / "worktrees"
    directory = pool.pool_dir(str(root), "big", "main")
    fresh: list[float] = []
    pooled: list[float] = []
    for rep in range(reps):
        t0 = time.perf_counter()
        gitops.prepare_workspace(
            str(checkout), str(root / "big" / f"fresh{rep}"), f"agent/fresh{rep}", "main", "origin"
        )
        fresh.append(time.perf_counter() - t0)
        pool.fill(str(checkout), directory, base="main", remote="origin", size=1, sparse=[])
        gitops.fetch_base(str(checkout), "origin", "main")  # as the node does before a take
        os.sync()  # a pool is filled after a pass's starts, long before the next take
        t0 = time.perf_counter()
        taken = pool.take(
            str(checkout),
            directory,
            str(root / "big" / f"pooled{rep}"),
            branch=f"agent/pooled{rep}",
            base="main",
            remote="origin",
        )
        pooled.append(time.perf_counter() - t0)
        if taken is None:
            raise SystemExit("the pool had no worktree to hand out")
    ratio = median(pooled) / median(fresh)
    table.add(
        f"start on a {files}-file repository, pooled / fresh worktree",
        f"{ratio:.2f} ({median(pooled):.3f}s / {median(fresh):.3f}s; median of {reps})",
        f"≤ {POOL_TARGET:g}",
        ratio <= POOL_TARGET,
    )


# -------------------------------------------------------------------------------------- main


@contextlib.contextmanager
def sandbox(keep: bool) -> Iterator[Sandbox]:
    box = Sandbox(keep)
    try:
        yield box
    finally:
        box.close()


PUSH_TARGET = 2.0
POOL_TARGET = 0.1  # design §8: dispatch on a 30,000-file repository with a warm pool


def push_figures(box: Sandbox, table: Table, pushes: int) -> None:
    """`git push` of a new task manifest to a bare control repo (post-receive hook from
    `reconciler hook install`) until the task's agent is running under `reconciler run`."""
    log("push of a new manifest → agent start")
    base = box.root / "push"
    script = write_agent(base / "bin" / "bench-agent", 30.0)
    checkout = box.repo(base / "src" / "app")
    root = base / "worktrees"
    box.lane_roots.append(root)
    files = {
        "lanes.yaml": lane_doc("push", pushes + 1, root, "app", checkout, box.home),
        "agents.yaml": agent_doc("long", [str(script)]),
        "tasks/first.yaml": task_doc("first", "push", "app", "long", 0),
    }
    seed = box.control(base / "seed", files)
    bare = base / "control.git"
    box.git("clone", "-q", "--bare", str(seed), str(bare), cwd=base)
    env = {**box.env, "RECONCILER_CONTROL": str(bare), "RECONCILER_STATE": str(base / "state")}
    reconciler = [sys.executable, "-m", "reconciler"]
    subprocess.run([*reconciler, "hook", "install"], env=env, check=True, capture_output=True)
    daemon = subprocess.Popen(
        [*reconciler, "run", "--interval", "60s", "--log-format", "json"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )

    def agent_started(task: str) -> bool:
        record = files_json(root / ".runs" / task / "1.1" / "pid.json")
        return bool(record and record.get("agent_pid"))

    def wait(predicate: Callable[[], bool], limit: float) -> bool:
        deadline = time.perf_counter() + limit
        while time.perf_counter() < deadline:
            if predicate():
                return True
            time.sleep(0.005)
        return False

    delays: list[float] = []
    try:
        if not wait(lambda: agent_started("first"), 30):
            raise SystemExit("push: `reconciler run` never started the first task")
        clone = base / "operator"
        box.git("clone", "-q", str(bare), str(clone), cwd=base)
        for n in range(1, pushes + 1):
            name = f"pushed-{n}"
            path = clone / "manifests" / "tasks" / f"{name}.yaml"
            path.write_text(task_doc(name, "push", "app", "long", n), encoding="utf-8")
            box.git("add", "-A", cwd=clone)
            box.git("commit", "-q", "-m", f"add {name}", cwd=clone)
            t0 = time.perf_counter()
            box.git("push", "-q", "origin", "HEAD", cwd=clone)
            if not wait(functools.partial(agent_started, name), 30):
                raise SystemExit(f"push: {name} did not start within 30 s of its push")
            delays.append(time.perf_counter() - t0)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(daemon.pid, signal.SIGTERM)
        daemon.wait(timeout=30)
        box.stop_all()
    worst = max(delays)
    table.add(
        "push of a new manifest → agent running",
        f"{median(delays):.2f}s median, {worst:.2f}s worst of {pushes} (`run` + post-receive hook)",
        f"≤ {PUSH_TARGET:g}s",
        worst <= PUSH_TARGET,
    )


REACTION_TARGET = 0.5  # seconds from the moment a pass is due (or a merge done) to its effect
REACTION_INTERVAL = 30.0  # `run --interval`: what either waited for before the plan said when
REACTION_BACKOFF = "1s"  # backoff base and cap: the first retry is due 0.5 to 1 s after a failure

FLAKY_AGENT = """#!/bin/sh
# bench agent: note when it started; fail the first attempt (FAIL_FIRST=1), then succeed
date +%s.%N > "$RECONCILER_RUN_DIR/agent-started.tmp"
mv "$RECONCILER_RUN_DIR/agent-started.tmp" "$RECONCILER_RUN_DIR/agent-started"
if [ "$FAIL_FIRST" = 1 ] && [ "$RECONCILER_ATTEMPT" = 1 ]; then exit 1; fi
exec git commit --allow-empty --quiet -m "bench change"
"""


def reaction_figures(box: Sandbox, table: Table, reps: int) -> None:
    """`reconciler run --interval 30s`: how soon it acts on a moment the plan knew (the end of
    a backoff) and on a merge on the local forge (`pr merge` pokes it)."""
    log("run's reaction: backoff ended → retry, pr merge → done")
    base = box.root / "reaction"
    script = base / "bin" / "flaky-agent"
    script.parent.mkdir(parents=True)
    script.write_text(FLAKY_AGENT, encoding="utf-8")
    script.chmod(0o755)
    checkout = box.repo(base / "src" / "app")
    root = base / "worktrees"
    box.lane_roots.append(root)
    lane = lane_doc("react", 2 * reps, root, "app", checkout, box.home).replace(
        f"      checkout: {checkout}\n",
        f"      checkout: {checkout}\n      forge: {{kind: local}}\n",
    )
    config = CONFIG_DOC + f"  backoff: {{base: {REACTION_BACKOFF}, max: {REACTION_BACKOFF}}}\n"
    files = {
        "config.yaml": config,
        "lanes.yaml": lane,
        "agents.yaml": agent_doc("flaky", ["/usr/bin/env", "FAIL_FIRST=1", str(script)])
        + "---\n"
        + agent_doc("steady", [str(script)]),
    }
    flaky = [f"flaky-{n}" for n in range(1, reps + 1)]
    merged = [f"merged-{n}" for n in range(1, reps + 1)]
    for n, name in enumerate(flaky + merged):
        if name in flaky:  # one run per attempt: its failure backs off at once
            doc = task_doc(name, "react", "app", "flaky", n) + "  maxIterations: 1\n"
        else:
            doc = task_doc(name, "react", "app", "steady", n)
        files[f"tasks/{name}.yaml"] = doc
    control = box.control(base / "control", files)
    state = base / "state"
    env = {**box.env, "RECONCILER_CONTROL": str(control), "RECONCILER_STATE": str(state)}
    reconciler = [sys.executable, "-m", "reconciler"]
    with open(base / "run.log", "wb") as run_log:
        daemon = subprocess.Popen(
            [*reconciler, "run", "--interval", f"{REACTION_INTERVAL:g}s", "--log-format", "json"],
            env=env,
            stdout=run_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        retries = backoff_reactions(root, flaky)
        merges = merge_reactions(reconciler, env, state, merged)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(daemon.pid, signal.SIGTERM)
        daemon.wait(timeout=30)
        box.stop_all()
    worst = max(retries)
    table.add(
        "run: backoff ended → next agent started",
        f"{median(retries):.3f}s median, {worst:.3f}s worst of {reps} "
        f"(--interval {REACTION_INTERVAL:g}s, which it used to wait for)",
        f"≤ {REACTION_TARGET:g}s",
        worst <= REACTION_TARGET,
    )
    after = [done - returned for _, returned, done in merges]
    whole = [done - began for began, _, done in merges]
    table.add(
        "run: pr merge → task done in state",
        f"{median(after):.3f}s median, {max(after):.3f}s worst of {reps} after the command "
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
        if wait_for(lambda noted=noted: noted.exists() or None, 60) is None:
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


def merge_reactions(
    reconciler: list[str], env: dict[str, str], state: Path, tasks: list[str]
) -> list[tuple[float, float, float]]:
    """Per task, once its PR is open: when `reconciler pr merge` began and returned, and when
    the task's `done` was recorded in state (the event's time)."""

    def task_row(name: str) -> TaskRow | None:
        if not (state / "state.db").exists():
            return None
        with Store.open_readonly(state) as store:
            return store.task(name)

    def done_at(name: str) -> float | None:
        with Store.open_readonly(state) as store:
            events = store.events(task=name, limit=20)
        return next((e.at for e in events if e.kind == "done"), None)

    times = []
    for task in tasks:
        row = wait_for(lambda task=task: (r := task_row(task)) and r.pr_number and r, 60)
        if row is None:
            raise SystemExit(f"reaction: {task}'s PR was not opened within 60 s")
        began = time.time()
        merge = subprocess.run(
            [*reconciler, "pr", "merge", task], env=env, capture_output=True, text=True, check=False
        )
        returned = time.time()
        if merge.returncode != 0 or "Poked reconciler run" not in merge.stdout:
            raise SystemExit(f"reaction: pr merge {task} failed: {merge.stdout}{merge.stderr}")
        done = wait_for(functools.partial(done_at, task), 60)
        if done is None:
            raise SystemExit(f"reaction: {task} was not recorded done within 60 s of its merge")
        times.append((began, returned, done))
    return times


def files_json(path: Path) -> dict[str, object] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def meter_figures(box: Sandbox, table: Table, runs: int, mib: int) -> None:
    """What a pass pays to know what running agents have spent: ``runs`` claude runs with
    ``mib`` MiB of stream-json each, metered once from nothing (a naive reader would pay this
    every pass), then again after each run wrote 64 KiB more (what a pass pays)."""
    from reconciler.node.agents.meter import spend
    from reconciler.protocol import AgentRef

    def message(n: int) -> bytes:
        usage = {"input_tokens": 1200, "output_tokens": 300, "cache_read_input_tokens": 9000}
        content = [{"type": "text", "text": "x" * 700}]
        msg = {"id": f"m{n}", "model": "claude-sonnet-4-5", "content": content, "usage": usage}
        return json.dumps({"type": "assistant", "message": msg}).encode() + b"\n"

    line = message(0)
    per_mib = (1 << 20) // len(line)
    base = box.root / "meter"
    dirs = []
    for r in range(runs):
        run_dir = base / f"{r}.1"
        run_dir.mkdir(parents=True)
        with open(run_dir / "output.log", "wb") as handle:
            handle.write(b"".join(message(n) for n in range(per_mib * mib)))
        dirs.append(run_dir)
    agent = AgentRef(kind="claude")

    def meter_all() -> float:
        started = time.perf_counter()
        for run_dir in dirs:
            spend(agent, str(run_dir))
        return time.perf_counter() - started

    first = meter_all()
    grown = []
    for step in range(3):
        for run_dir in dirs:
            with open(run_dir / "output.log", "ab") as handle:
                handle.write(
                    b"".join(message(10**6 + step * 100 + n) for n in range(64 * 1024 // len(line)))
                )
        grown.append(meter_all())
    steady = median(grown)
    table.add(
        f"meter: {runs} runs of {mib} MiB, pass after 64 KiB more / first pass",
        f"{steady / first:.3f} ({steady / runs * 1000:.2f} ms vs "
        f"{first / runs * 1000:.1f} ms per run)",
        "≤ 0.1",
        steady / first <= 0.1,
    )
    found = spend(agent, str(dirs[0]))
    expected = per_mib * mib + 3 * (64 * 1024 // len(line))
    if found.turns != expected:
        raise SystemExit(f"meter counted {found.turns} messages, expected {expected}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", default="1000,10000", help="task counts for the plan figures")
    parser.add_argument("--reps", type=int, default=3, help="repetitions where cheap")
    parser.add_argument("--short-tasks", type=int, default=500, help="tasks for the slot figure")
    parser.add_argument("--agent-seconds", type=float, default=0.5, help="the short agent's sleep")
    parser.add_argument("--limit", type=float, default=420.0, help="give up the slot figure after")
    parser.add_argument(
        "--github-tasks", type=int, default=500, help="tasks for the GitHub forge figures"
    )
    parser.add_argument(
        "--transport-tasks", type=int, default=TRANSPORT_TASKS, help="tasks per transport pass"
    )
    parser.add_argument(
        "--pool-files", type=int, default=30000, help="files in the pool figure's repository"
    )
    parser.add_argument(
        "--meter-mib", type=int, default=4, help="MiB of agent output per metered run"
    )
    parser.add_argument("--skip", default="", help=f"comma list of: {', '.join(SECTIONS)}")
    parser.add_argument("--only", default="", help="comma list of the sections to run alone")
    parser.add_argument("--keep", action="store_true", help="keep the sandbox directory")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    skip = {s for s in args.skip.split(",") if s}
    only = {s for s in args.only.split(",") if s}
    unknown = sorted((skip | only) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    if only:
        skip |= set(SECTIONS) - only
    least = GITHUB_REPOS * (GITHUB_OPEN_TASK_PRS + GITHUB_DONE_TASK_PRS)
    if "github" not in skip and args.github_tasks < least:
        parser.error(f"--github-tasks must be at least {least} (the seeded task PRs)")
    sizes = [int(s) for s in args.sizes.split(",") if s]
    table = Table()
    started = time.perf_counter()
    with sandbox(args.keep) as box:
        log(f"sandbox: {box.root} (HOME for this run and its children)")
        if "plan" not in skip:
            plan_figures(box, table, sizes, args.reps)
        if "slots" not in skip:
            slot_figures(box, table, args.short_tasks, args.agent_seconds, args.limit)
        if "refill" not in skip:
            refill_figures(box, table)
        if "push" not in skip:
            push_figures(box, table, pushes=3)
        if "reaction" not in skip:
            reaction_figures(box, table, reps=3)
        if "github" not in skip:
            github_figures(box, table, args.github_tasks)
        if "transports" not in skip:
            transport_figures(box, table, args.transport_tasks)
        if "pool" not in skip:
            pool_figures(box, table, args.pool_files, args.reps)
        if "meter" not in skip:
            meter_figures(box, table, runs=20, mib=args.meter_mib)
    elapsed = time.perf_counter() - started
    print()
    sys.stdout.write(table.render())
    misses = table.misses
    print(
        f"\n{len(table.rows)} figures, {len(misses)} missed target(s); bench took {elapsed:.0f}s."
    )
    return 1 if args.strict and misses else 0


if __name__ == "__main__":
    raise SystemExit(main())
