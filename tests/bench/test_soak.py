"""The soak section: what it reads from /proc and from `run`'s log, a short soak end to end, and
an interrupted soak that leaves no process behind."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bench.soak import RunLog, Sample, Sampler, growth, sample
from tests.bench.running import CHECKOUT, bench_env, printed, run_bench
from tests.support.waiting import wait_for


def test_a_sample_reads_rss_fds_and_cpu_of_a_process() -> None:
    found = sample(os.getpid())
    assert found is not None
    assert found.rss > 1 << 20
    with open(os.devnull, "rb"):
        more = sample(os.getpid())
    assert more is not None
    assert more.fds == found.fds + 1
    assert more.cpu >= found.cpu > 0


def test_a_samples_cpu_counts_the_children_it_waited_for() -> None:
    """The git processes of in-process lanes are children of `run`: their CPU is its work."""
    burn = "import time\nwhile time.process_time() < 0.3: pass\n"
    before = sample(os.getpid())
    assert before is not None
    subprocess.run([sys.executable, "-c", burn], check=True)  # waited for
    after = sample(os.getpid())
    assert after is not None
    assert after.cpu - before.cpu >= 0.25


def test_a_gone_process_has_no_sample() -> None:
    child = subprocess.Popen(["true"])
    child.wait()
    assert sample(child.pid) is None


def test_a_window_takes_the_median_rss_and_fds_and_the_last_cpu() -> None:
    sampler = Sampler(os.getpid(), every=60)
    sampler.samples = [
        Sample(at=1, rss=100, fds=10, cpu=1.0),
        Sample(at=2, rss=900, fds=40, cpu=2.0),  # a pass under way
        Sample(at=3, rss=110, fds=10, cpu=3.0),
        Sample(at=9, rss=500, fds=90, cpu=9.0),  # outside the window
    ]
    assert sampler.around(1, 3) == Sample(at=3, rss=110, fds=10, cpu=3.0)
    assert growth(100, 110) == pytest.approx(10.0)


def record(**fields: object) -> str:
    return json.dumps({"ts": 1.0, "level": "info", **fields}) + "\n"


def test_the_run_log_counts_passes_starts_and_errors_across_partial_lines(
    tmp_path: Path,
) -> None:
    path = tmp_path / "run.log"
    runlog = RunLog(path)
    runlog.read()  # not there yet
    start = record(event="action", msg="start t1: run 1.1 started")
    busy = record(event="pass", msg="pass 3", number=3, actions=2, slots={"a": "1/2"})
    with open(path, "w", encoding="utf-8") as f:
        f.write(start + busy[:20])  # a line half written
    runlog.read()
    assert (runlog.starts, runlog.passes, runlog.last_busy) == (1, 0, 0.0)
    idle = record(event="pass", msg="pass 4", number=4, actions=0, slots={"a": "0/2"})
    error = record(event="pass", msg="pass failed: boom", level="error")
    with open(path, "a", encoding="utf-8") as f:
        f.write(busy[20:] + idle + error + "Traceback (most recent call last):\n")
    runlog.read()
    assert (runlog.starts, runlog.passes) == (1, 4)
    assert runlog.last_busy > 0
    assert runlog.errors == ["pass failed: boom", "Traceback (most recent call last):"]


def processes_under(tmp_path: Path) -> list[int]:
    """Processes (other than this one) whose environment names ``tmp_path``: the bench's
    sandbox is inside it, and every process the bench starts inherits that HOME or TMPDIR."""
    mark = str(tmp_path).encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if mark in f.read():
                    found.append(int(entry))
        except OSError:
            continue
    return found


def alive(pids: list[int]) -> list[int]:
    """Those of ``pids`` still running (a zombie is not)."""
    running = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                state = f.read().rpartition(b")")[2].split()[0]
        except OSError:
            continue
        if state not in (b"Z", b"X"):
            running.append(pid)
    return running


@pytest.mark.slow
def test_a_short_soak_prints_its_figures_and_leaves_nothing_behind(tmp_path: Path) -> None:
    argv = ["--only", "soak", "--soak-seconds", "12", "--soak-tasks", "30"]
    proc = run_bench(tmp_path, argv, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = printed(
        proc.stdout,
        (
            "soak: `run` over 30 churning tasks, RSS after warm-up → end",
            "open fds after warm-up → end",
            "idle CPU once converged (% of one core, with the children run waited for)",
            "passes / agents started / churn commits / log errors",
        ),
    )
    passes, starts, commits, errors = rows["passes / agents started / churn commits / log errors"][
        1
    ].split(" / ")
    assert int(passes) > 0, proc.stdout
    assert int(starts) > 30, proc.stdout  # every task once, and the churned ones again
    assert int(commits) > 0, proc.stdout
    assert errors.strip() == "0", proc.stdout
    assert not list(tmp_path.glob("reconciler-bench-*"))
    assert alive(processes_under(tmp_path)) == []


@pytest.mark.slow
def test_an_interrupted_soak_stops_run_and_its_agents(tmp_path: Path) -> None:
    bench = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench",
            "--only",
            "soak",
            "--soak-seconds",
            "600",
            "--soak-tasks",
            "100",
        ],
        env=bench_env(tmp_path),
        cwd=CHECKOUT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def agents_started() -> bool:
            logs = list(tmp_path.glob("reconciler-bench-*/soak/run.log"))
            return bool(logs) and "started" in logs[0].read_text(encoding="utf-8")

        wait_for(agents_started, "the soak's first agent start", timeout=120, every=0.2)
        started = alive(processes_under(tmp_path))
        assert started  # `run` at least, and the runs it started
        bench.send_signal(signal.SIGTERM)
        bench.wait(timeout=60)
        assert not list(tmp_path.glob("reconciler-bench-*")), bench.stderr
        wait_for(
            lambda: not alive(processes_under(tmp_path)),
            "every process of the soak gone",
            timeout=30,
            details=lambda: alive(processes_under(tmp_path)),
        )
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
        for pid in alive(processes_under(tmp_path)):  # what a failing bench left behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert bench.stderr is not None
        bench.stderr.close()
