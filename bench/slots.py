"""Short tasks over the slots: 500 tasks on three lanes of 5, 4 and 2 slots, against the ideal
schedule, with the live runs per lane sampled from /proc (never more than the lane's slots)."""

from __future__ import annotations

import math
import os
import resource
import statistics
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from bench.drive import DriveResult, drive
from bench.manifests import CONFIG_DOC, agent_doc, lane_doc, short_agent, spread, task_doc
from bench.options import Options
from bench.runs import alive, busy_seconds, files_json, read_fingerprint
from bench.sandbox import Sandbox
from bench.table import Table, log, median
from reconciler.engine import Context, Engine
from reconciler.node import git as gitops
from reconciler.node import gitcache
from reconciler.plan import Phase

SCHEDULE_TARGET = 1.15  # wall time of 500 short tasks over 11 slots against the ideal schedule
SLOT_LANES = (("lane-a", 5), ("lane-b", 4), ("lane-c", 2))


class SlotSampler:
    """Samples /proc every ``interval``: live run supervisors per lane (and the maximum seen).

    A run counts from the moment its supervisor recorded itself (``pid.json``) until that process
    is gone, which is how the planner counts a slot as used. To stay cheap next to the runs, a
    sample re-reads only the runs not known to have ended and lists the task directories it has
    not seen yet; every ``rescan``-th sample lists everything (new attempts of known tasks).
    It shares the reconciler's interpreter, so it works on plain strings: what it costs is
    taken from the figure it samples.
    """

    def __init__(self, lanes: dict[str, Path], interval: float = 0.05, rescan: int = 10) -> None:
        self.lanes = lanes
        self.interval = interval
        self.rescan = rescan
        self.max_live: Counter[str] = Counter()
        self.samples = 0
        self.cpu = 0.0  # this sampler's own CPU seconds (its thread's)
        self._runs: dict[Path, dict[str, bool]] = {root: {} for root in lanes.values()}
        self._listed: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="slot-sampler", daemon=True)

    def __enter__(self) -> SlotSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _discover(self, lane_root: Path, full: bool) -> list[str]:
        runs = os.path.join(lane_root, ".runs")
        known = self._runs[lane_root]
        try:
            tasks = os.listdir(runs)
        except FileNotFoundError:
            return []
        for task in tasks:
            task_dir = f"{runs}/{task}"
            if task_dir in self._listed and not full:
                continue
            try:
                entries = os.listdir(task_dir)
            except OSError:
                continue
            self._listed.add(task_dir)
            for entry in entries:
                known.setdefault(f"{task_dir}/{entry}", False)
        return [d for d, ended in known.items() if not ended]

    def live(self, lane_root: Path, full: bool = True) -> list[tuple[int, int]]:
        """The supervisors of the lane's runs found alive, as (pid, start time)."""
        found = []
        for run_dir in self._discover(lane_root, full):
            fp = read_fingerprint(f"{run_dir}/pid.json")
            if fp is None:
                continue  # starting: the supervisor has not recorded itself yet
            if alive(*fp):
                found.append(fp)
            elif os.path.exists(f"{run_dir}/exit.json"):
                self._runs[lane_root][run_dir] = True
        return found

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            full = self.samples % self.rescan == 0
            seen = {lane: self.live(root, full) for lane, root in self.lanes.items()}
            # One instant: the supervisors seen alive that still are once every lane is read.
            # A run's supervisor that handed its slot to a standby run and went while the scan
            # read on would otherwise count beside its successor (who starts only once it is
            # gone), a moment that never was.
            for lane, fps in seen.items():
                now = sum(1 for fp in fps if alive(*fp))
                self.max_live[lane] = max(self.max_live[lane], now)
            self.samples += 1
        self.cpu = time.thread_time()


def handed_over(lanes: dict[str, Path]) -> int:
    """Runs a supervisor started from the standby queue at its own run's end (their
    ``pid.json`` names the run they followed), rather than a pass."""
    count = 0
    for root in lanes.values():
        for pid_json in root.glob(".runs/*/*/pid.json"):
            data = files_json(pid_json)
            count += bool(data and data.get("claimed_from"))
    return count


def agent_alone(box: Sandbox, agent: Path, reps: int = 3) -> tuple[float, float]:
    """The agent's own wall time and CPU seconds, run alone in a scratch repository (medians)."""
    scratch = box.repo(box.root / "agent-alone")
    times, cpu = [], []
    for _ in range(reps):
        t0, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run([str(agent)], cwd=scratch, env=box.env, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return median(times), median(cpu)


def build(box: Sandbox, n: int, agent: Path) -> tuple[Engine, dict[str, Path], list[int]]:
    """The three lanes (each its own repository), ``n`` tasks spread over them by slots."""
    base = box.root / "slots"
    counts = spread(n, [s for _, s in SLOT_LANES])
    files = {"config.yaml": CONFIG_DOC, "agents.yaml": agent_doc("short", [str(agent)])}
    lane_roots: dict[str, Path] = {}
    lanes_text = []
    index = 0
    for (lane, slots), count in zip(SLOT_LANES, counts, strict=True):
        checkout = box.repo(base / "src" / lane)
        root = lane_roots[lane] = box.lane_root(base / "worktrees" / lane)
        lanes_text.append(lane_doc(lane, slots, root, "repo", checkout, home=box.home))
        for _ in range(count):
            name = f"short-{index:04d}"
            files[f"tasks/{name}.yaml"] = task_doc(name, lane, "repo", "short", index)
            index += 1
    files["lanes.yaml"] = "---\n".join(lanes_text)
    control = box.control(base / "control", files)
    return Engine(Context(control=str(control), state_dir=base / "state")), lane_roots, counts


def run(box: Sandbox, table: Table, options: Options) -> None:
    n, limit = options.short_tasks, options.limit
    slots_label = f"{n} short tasks over {sum(s for _, s in SLOT_LANES)} slots"
    log(slots_label)
    agent = short_agent(box.root / "slots" / "bin" / "bench-agent", options.agent_seconds)
    duration, agent_cpu = agent_alone(box, agent)
    engine, lane_roots, counts = build(box, n, agent)
    ideal = max(math.ceil(c / s) for (_, s), c in zip(SLOT_LANES, counts, strict=True)) * duration
    log(f"  agent alone {duration:.3f}s; ideal schedule {ideal:.1f}s; driving apply passes")
    unstarted = pass_cost(engine)
    machine, own = busy_seconds(), resource.getrusage(resource.RUSAGE_SELF)
    with SlotSampler(lane_roots) as sampler:
        result = drive(engine, n, limit)
    cpu = Cpu(busy_seconds() - machine, _cpu_seconds(own) - sampler.cpu, agent_cpu, result.wall)
    done = result.phases[Phase.DONE.value]
    ratio = result.wall / ideal
    table.add(
        f"{slots_label} / ideal",
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
    occupancy_rows(table, sampler, counts)
    time_rows(table, result, sampler, ideal, duration, handed=handed_over(lane_roots))
    cpu_rows(table, cpu, n, ideal)
    observation_row(table, box.root / "slots" / "src" / SLOT_LANES[0][0])
    if result.finished:
        done_row(table, engine, n, unstarted)


@dataclass(frozen=True)
class Cpu:
    """CPU seconds spent while the tasks ran: the whole machine's (the reconciler, the run
    supervisors, the agents, git), and the reconciler's own (this process, less the sampler)."""

    machine: float
    reconciler: float
    agent: float  # one agent's, run alone
    wall: float


def _cpu_seconds(before: resource.struct_rusage) -> float:
    now = resource.getrusage(resource.RUSAGE_SELF)
    return (now.ru_utime - before.ru_utime) + (now.ru_stime - before.ru_stime)


def cpu_rows(table: Table, cpu: Cpu, n: int, ideal: float) -> None:
    """What bounds the schedule on this machine: the CPU a short task's whole life costs, and
    how many cores the ideal pace would need for it."""
    cores = os.cpu_count() or 1
    table.add(
        "  CPU per task: machine / reconciler / agent alone",
        f"{cpu.machine / n * 1000:.0f} ms / {cpu.reconciler / n * 1000:.0f} ms / "
        f"{cpu.agent * 1000:.0f} ms (the rest: run supervisors, git; {cpu.machine / cpu.wall:.1f} "
        f"of {cores} cores busy, the ideal schedule would need {cpu.machine / ideal:.1f}: with "
        f"every core busy and no wait, {max(1.0, cpu.machine / cores / ideal):.2f}x the ideal "
        "at best here)",
    )


def occupancy_rows(table: Table, sampler: SlotSampler, counts: list[int]) -> None:
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
    if over:
        log("  a lane ran more runs than its slots")


def time_rows(
    table: Table,
    result: DriveResult,
    sampler: SlotSampler,
    ideal: float,
    duration: float,
    *,
    handed: int,
) -> None:
    table.add(
        "  passes / mean pass / runs started by a pass / at a run's end",
        f"{len(result.passes)} / {statistics.mean(result.passes):.3f}s / {result.starts} / "
        f"{handed} ({sampler.samples} /proc samples)",
    )
    per_start = (result.wall - ideal) / max(1, result.starts + handed)
    table.add(
        "  wall beyond ideal per run started",
        f"{per_start:.3f}s = {per_start / duration:.2f}x agent",
    )
    for failure in result.failures[:5]:
        log(f"  apply error: {failure}")


def pass_cost(engine: Engine, reps: int = 15) -> tuple[float, int]:
    """An observe+plan pass over the figure's tasks as they are: the median CPU seconds of this
    process (the lanes are in-process, so their reading is counted), and the runs it read."""
    desired = engine.load()
    costs, runs = [], 0
    with engine.locked(None) as store:  # the first pass's state directory is made here
        for _ in range(reps):
            before = time.process_time()
            _plan, observed = engine.observe_and_plan(desired, store)
            costs.append(time.process_time() - before)
            runs = sum(len(views) for views in observed.runs.values())
    return median(costs), runs


def done_row(table: Table, engine: Engine, n: int, unstarted: tuple[float, int]) -> None:
    """A pass over the tasks once all are done against the same pass before any started: what
    a task's done history costs every later pass (its runs are settled, not read; its branch,
    its remote-tracking ref and its task directory stay, and are looked at)."""
    with engine.locked(None) as store:  # the pass after the last `complete` settles its runs
        engine.apply(engine.load(), store)
    done = pass_cost(engine)
    table.add(
        f"  pass over the {n} tasks done / before any started, CPU",
        f"{done[0] / unstarted[0]:.2f} ({done[0] * 1000:.1f} ms, {done[1]} runs read / "
        f"{unstarted[0] * 1000:.1f} ms, {unstarted[1]} runs read; median of 15)",
    )


def observation_row(table: Table, checkout: Path, reps: int = 50) -> None:
    """What observing one of the figure's busy checkouts costs: the worktrees and task refs
    read from the repository's files as the node reads them, against the two git processes
    that answer the same (CPU of this process and its children, the same answers checked)."""
    where, patterns = str(checkout), ["refs/heads/agent/*", "refs/remotes/origin/agent/*"]
    read = (lambda: gitcache.refs(where, patterns), lambda: gitcache.worktrees(where))
    asked = (lambda: gitops.refs(where, patterns), lambda: gitops.list_worktrees(where))
    if [f() for f in read] != [f() for f in asked]:
        table.add("  observing a checkout: files / git", "the answers differ", "equal", False)
        return
    costs = []
    for calls in (read, asked):
        before = _process_cpu()
        for _ in range(reps):
            for call in calls:
                call()
        costs.append((_process_cpu() - before) / reps)
    table.add(
        "  observing a checkout: files / git, CPU",
        f"{costs[0] / costs[1]:.2f} ({costs[0] * 1000:.1f} ms / {costs[1] * 1000:.1f} ms; "
        f"task refs: {len(read[0]())}, worktrees: {len(read[1]())})",
    )


def _process_cpu() -> float:
    """CPU seconds of this process and its reaped children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
