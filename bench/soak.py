"""The soak: ``reconciler run`` for a long while (an hour by default) over 1,000 tasks that keep
churning, its RSS, open file descriptors and CPU sampled from /proc.

The tasks sit on a few local lanes and run a short agent. Every few seconds a slice of them gets
a new prompt (a new generation, so a new run) in a commit to the control repo, and ``run`` is
poked (SIGHUP), so agents keep starting, ending, being judged and cleaned up for the whole
duration, at a few starts a second at most. At the end the churn stops; once the tasks have
converged, ``run``'s CPU over a quiet minute is its idle cost.

Every process started here is stopped on the way out, also when the bench is interrupted or sent
SIGTERM.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.manifests import CONFIG_DOC, agent_doc, lane_doc, short_agent, spread, task_doc
from bench.options import Options
from bench.sandbox import Sandbox
from bench.table import Table, log

GROWTH_TARGET = 10.0  # percent, RSS and open fds from after warm-up to the end
IDLE_TARGET = 1.0  # percent of one core
SOAK_LANES = (("soak-a", 3), ("soak-b", 3), ("soak-c", 2))
AGENT_SECONDS = 0.5
CHURN_EVERY = 10.0  # seconds between two manifest commits
CHURN_RATE = 2.0  # runs asked for per second of churn: a slice of CHURN_EVERY * CHURN_RATE tasks
SAMPLE_EVERY = 5.0
WARM_UP = 0.1  # the fraction of the soak before the baseline is taken
QUIET_SECONDS = 60.0
SETTLED_SECONDS = 20.0  # no pass with actions and no run alive for this long: converged
# (shorter for a short soak, down to LEAST_SETTLED)
LEAST_SETTLED = 3.0
INTERVAL = "30s"  # `run`'s default
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Sample:
    at: float  # monotonic seconds
    rss: int  # bytes
    fds: int
    cpu: float  # seconds of user + system time, its own and its waited-for children's


def sample(pid: int) -> Sample | None:
    """RSS, open fds and CPU time of ``pid`` from /proc, or None once it is gone. The CPU time
    counts the children it waited for (the git processes of in-process lanes, among them): what
    it does itself and what it has done for it. Run supervisors and agents are not its
    children (they are started detached) and are not counted."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            rss = int(f.read().split()[1]) * PAGE
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, IndexError, ValueError):
        return None
    # after the ")": state is field 0, utime 11, stime 12, cutime 13 and cstime 14
    cpu = sum(int(v) for v in fields[11:15]) / TICK
    return Sample(time.monotonic(), rss, fds, cpu)


class Sampler:
    """Samples a process every ``every`` seconds in a thread."""

    def __init__(self, pid: int, every: float) -> None:
        self.pid = pid
        self.every = every
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="soak-sampler", daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while True:
            found = sample(self.pid)
            if found is not None:
                self.samples.append(found)
            if self._stop.wait(self.every):
                return

    def around(self, start: float, end: float) -> Sample:
        """The median RSS and fds of the samples taken from ``start`` to ``end`` (a pass under
        way holds a few more for a moment), with the CPU time of the last of them."""
        window = [s for s in self.samples if start <= s.at <= end] or self.samples[-1:]
        return Sample(
            window[-1].at,
            int(statistics.median(s.rss for s in window)),
            int(statistics.median(s.fds for s in window)),
            window[-1].cpu,
        )


@dataclass
class RunLog:
    """What ``run``'s JSON log says so far, read on from where the last read stopped."""

    path: Path
    passes: int = 0
    starts: int = 0  # agent runs started
    errors: list[str] = field(default_factory=list)
    last_busy: float = 0.0  # monotonic time of the last pass that did something or ran runs
    _offset: int = 0
    _rest: bytes = b""

    def read(self) -> None:
        """Takes the lines written since the last call."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:
            return
        self._offset += len(chunk)
        *lines, self._rest = (self._rest + chunk).split(b"\n")
        for line in lines:
            self._take(line)

    def _take(self, line: bytes) -> None:
        try:
            record: dict[str, Any] = json.loads(line)
        except ValueError:
            self.errors.append(line.decode(errors="replace")[:200])  # a traceback, say
            return
        if record.get("level") == "error":
            self.errors.append(str(record.get("msg", record))[:200])
        msg = str(record.get("msg", ""))
        # a start by a pass, or a standby run its lane started and a pass found ("standby t:
        # run 1.1 started as run u/1.1 ended"; its queueing says "queued")
        started = msg.startswith(("start ", "standby ")) and "started" in msg
        if record.get("event") == "action" and started:
            self.starts += 1
        if record.get("event") != "pass" or "number" not in record:
            return
        self.passes = max(self.passes, int(record["number"]))
        slots: dict[str, str] = record.get("slots") or {}
        live = any(not str(v).startswith("0/") for v in slots.values())
        if record.get("actions") or live:
            self.last_busy = time.monotonic()


def build(box: Sandbox, n: int) -> tuple[Path, Path]:
    """The control repo (a working copy) with ``n`` tasks over the soak lanes, and the state
    directory."""
    base = box.root / "soak"
    agent = short_agent(base / "bin" / "bench-agent", AGENT_SECONDS)
    files = {"config.yaml": CONFIG_DOC, "agents.yaml": agent_doc("short", [str(agent)])}
    counts = spread(n, [s for _, s in SOAK_LANES])
    lanes_text, index = [], 0
    for (lane, slots), count in zip(SOAK_LANES, counts, strict=True):
        checkout = box.repo(base / "src" / lane)
        root = box.lane_root(base / "worktrees" / lane)
        lanes_text.append(lane_doc(lane, slots, root, "repo", checkout, home=box.home))
        for _ in range(count):
            files[f"tasks/{task_name(index)}.yaml"] = task_doc(
                task_name(index), lane, "repo", "short", index
            )
            index += 1
    files["lanes.yaml"] = "---\n".join(lanes_text)
    return box.control(base / "control", files), base / "state"


def task_name(index: int) -> str:
    return f"soak-{index:04d}"


def churn(box: Sandbox, control: Path, n: int, round_: int, size: int) -> None:
    """A new prompt for the next ``size`` tasks (round robin), in one commit."""
    tasks = control / "manifests" / "tasks"
    for k in range(size):
        index = (round_ * size + k) % n
        path = tasks / f"{task_name(index)}.yaml"
        text = path.read_text(encoding="utf-8")
        head, _, _ = text.partition("  prompt: |\n")
        lane = next(line.split(": ")[1] for line in head.splitlines() if "lane:" in line)
        path.write_text(
            task_doc(task_name(index), lane, "repo", "short", index).replace(
                f"change number {index} ", f"change number {index} (round {round_}) "
            ),
            encoding="utf-8",
        )
    box.git("commit", "-q", "-a", "-m", f"churn round {round_}", cwd=control)


@contextlib.contextmanager
def terminated_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt here, so every ``finally`` stops what it started."""

    def on_term(_sig: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def wait_converged(runlog: RunLog, limit: float, settled: float) -> bool:
    """Until no pass did anything and no run was alive for ``settled`` seconds (False when
    ``limit`` seconds pass first)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        runlog.read()
        if time.monotonic() - runlog.last_busy >= settled:
            return True
        time.sleep(1.0)
    return False


def growth(first: float, last: float) -> float:
    return (last - first) / first * 100 if first else 0.0


@dataclass
class Soak:
    """What a soak measured: the samples, the quiet minute's two ends and the log."""

    sampler: Sampler
    runlog: RunLog
    started: float = 0.0
    rounds: int = 0  # churn commits
    settled: bool = False
    quiet: tuple[Sample, Sample] | None = None


def soak(box: Sandbox, seconds: float, n: int) -> Soak:
    """``reconciler run`` churned for ``seconds`` over ``n`` tasks, then left to converge and
    watched for a quiet minute; stopped (and its runs killed) whatever happens."""
    control, state = build(box, n)
    env = box.cli_env(control, state)
    output = box.root / "soak" / "run.log"
    size = max(1, min(n, round(CHURN_EVERY * CHURN_RATE)))
    every = min(SAMPLE_EVERY, max(0.5, seconds / 20))
    with terminated_as_interrupt(), box.reconciler_run(env, INTERVAL, output) as daemon:
        found = Soak(Sampler(daemon.pid, every), RunLog(output))
        with found.sampler:
            found.started = time.monotonic()
            end = found.started + seconds
            while (now := time.monotonic()) < end:
                time.sleep(min(CHURN_EVERY, end - now))
                if daemon.poll() is not None:
                    raise SystemExit(f"soak: `reconciler run` exited ({daemon.returncode})")
                churn(box, control, n, found.rounds, size)
                daemon.send_signal(signal.SIGHUP)
                found.rounds += 1
                found.runlog.read()
            log(f"  churn stopped after {found.rounds} rounds; waiting for the tasks to converge")
            settled = min(SETTLED_SECONDS, max(LEAST_SETTLED, seconds / 10))
            found.settled = wait_converged(found.runlog, max(120.0, seconds / 4), settled)
            quiet_from = sample(daemon.pid)
            time.sleep(min(QUIET_SECONDS, max(5.0, seconds / 6)))
            quiet_to = sample(daemon.pid)
            if quiet_from is not None and quiet_to is not None:
                found.quiet = (quiet_from, quiet_to)
            found.runlog.read()
    return found


def run(box: Sandbox, table: Table, options: Options) -> None:
    seconds, n = options.soak_seconds, options.soak_tasks
    log(f"soak: `reconciler run` over {n} churning tasks for {seconds:.0f}s")
    found = soak(box, seconds, n)
    sampler, runlog = found.sampler, found.runlog
    if not sampler.samples or found.quiet is None:
        raise SystemExit("soak: `reconciler run` could not be sampled")
    warm, end = found.started + seconds * WARM_UP, found.started + seconds
    window = (end - warm) / 10
    base, last = sampler.around(warm, warm + window), sampler.around(end - window, end)
    rss, fds = growth(base.rss, last.rss), growth(base.fds, last.fds)
    mib = 1 << 20
    table.add(
        f"soak: `run` over {n} churning tasks, RSS after warm-up → end",
        f"{base.rss / mib:.1f} → {last.rss / mib:.1f} MiB ({rss:+.1f}%; "
        f"peak {max(s.rss for s in sampler.samples) / mib:.1f} MiB; {seconds:.0f}s)",
        f"≤ +{GROWTH_TARGET:g}%",
        rss <= GROWTH_TARGET,
    )
    tenths = [
        sampler.around(found.started + seconds * (k - 1) / 10, found.started + seconds * k / 10)
        for k in range(1, 11)
    ]
    log("  RSS by tenth of the soak (MiB): " + " ".join(f"{t.rss / mib:.1f}" for t in tenths))
    quiet_from, quiet_to = found.quiet
    table.add(
        "  open fds after warm-up → end",
        f"{base.fds} → {last.fds} ({fds:+.1f}%; peak {max(s.fds for s in sampler.samples)}, "
        f"{quiet_to.fds} once converged)",
        f"≤ +{GROWTH_TARGET:g}%",
        fds <= GROWTH_TARGET,
    )
    busy = (last.cpu - base.cpu) / max(1e-9, last.at - base.at) * 100
    idle = (quiet_to.cpu - quiet_from.cpu) / max(1e-9, quiet_to.at - quiet_from.at) * 100
    table.add(
        "  idle CPU once converged (% of one core, with the children run waited for)",
        f"{idle:.2f}% over {quiet_to.at - quiet_from.at:.0f}s (churning: {busy:.1f}%)",
        f"< {IDLE_TARGET:g}%",
        idle < IDLE_TARGET,
    )
    table.add(
        "  passes / agents started / churn commits / log errors",
        f"{runlog.passes} / {runlog.starts} / {found.rounds} / {len(runlog.errors)}"
        + ("" if found.settled else "; NOT converged at the end"),
        "errors 0",
        not runlog.errors and found.settled,
    )
    for error in runlog.errors[:5]:
        log(f"  log error: {error}")
