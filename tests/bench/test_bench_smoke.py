"""The benchmark runs end to end at toy sizes and prints its table (no budgets checked here)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

CHECKOUT = Path(__file__).resolve().parents[2]  # `python -m bench` runs from here


@pytest.mark.slow
def test_bench_prints_every_figure(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)  # the suite's isolated HOME is this directory
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "TMPDIR": str(tmp_path),
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--sizes",
            "20,200",
            "--reps",
            "1",
            "--short-tasks",
            "11",
            "--agent-seconds",
            "0.1",
            "--limit",
            "120",
            "--pool-files",
            "200",
            "--github-tasks",
            "500",
            "--transport-tasks",
            "20",
            "--meter-mib",
            "1",
        ],
        env=env,
        cwd=CHECKOUT,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {
        line.split(" | ")[0].strip(): line.split(" | ")
        for line in proc.stdout.splitlines()
        if " | " in line
    }
    for name in (
        "plan(20) warm",
        "plan(200) warm",
        "plan(20) cold / parse",
        "plan(200) cold / parse",
        "plan(200)/plan(20) warm",
        "plan(200)/plan(20) cold",
        "`reconciler plan` subprocess, 200 warm",
        "11 short tasks over 11 slots / ideal",
        "tasks done / failed / apply errors",
        "max live runs lane-a (5 tasks)",
        "agent killed → slot refilled",
        "push of a new manifest → agent running",
        "run: backoff ended → next agent started",
        "run: pr merge → task done in state",
        "GitHub requests, first pass, 500 tasks / 5 repos",
        "GitHub points, unchanged second pass",
        "start on a 200-file repository, pooled / fresh worktree",
        # printed as skipped (with the reason) where the bench is not root or sshd is missing
        "node batch, in-process / local user / ssh",
        "pass over 20 tasks, ssh / in-process",
        "meter: 20 runs of 1 MiB, pass after 64 KiB more / first pass",
        "web(200): /metrics scrape",
        # extrapolated from the figures above (skipped, saying which, when one is missing)
        "scale: pass over 100 ssh hosts, 10k tasks",
    ):
        assert name in rows, f"missing row {name!r} in:\n{proc.stdout}"
    assert rows["tasks done / failed / apply errors"][1].strip() == "11 / 0 / 0", proc.stdout
    assert rows["GitHub points, unchanged second pass"][1].strip().startswith("0 ("), proc.stdout
    # the warm pass reads the lane's repository: the counter sees its git processes
    assert int(rows["plan(200) git processes per pass"][1]) > 0, proc.stdout
    # every sandbox is removed and nothing leaks out of it
    assert not list(tmp_path.glob("reconciler-bench-*"))
    assert sorted(p.name for p in home.iterdir()) == []


@pytest.mark.slow
def test_the_opt_in_scale_section_prints_its_figures(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "TMPDIR": str(tmp_path),
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    argv = ["--only", "huge", "--huge-tasks", "300", "--huge-files", "3"]
    proc = subprocess.run(
        [sys.executable, "-m", "bench", *argv],
        env=env,
        cwd=CHECKOUT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = {line.split(" | ")[0].strip() for line in proc.stdout.splitlines() if " | " in line}
    for name in (
        "plan(300 in 3 files) warm",
        "plan(300 in 3 files) warm, peak RSS",
        "plan(300 in 3 files) cold / parse",
        "`reconciler plan -o json` subprocess, 300 warm",
    ):
        assert name in names, proc.stdout
