"""The benchmark runs end to end at toy sizes and prints its table (no budgets checked here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bench.running import run_bench, table_rows


@pytest.mark.slow
def test_bench_prints_every_figure(tmp_path: Path) -> None:
    home = tmp_path / "home"
    proc = run_bench(
        tmp_path,
        [
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
        timeout=280,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = table_rows(proc.stdout)
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
    argv = ["--only", "huge", "--huge-tasks", "300", "--huge-files", "3"]
    proc = run_bench(tmp_path, argv, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = {line.split(" | ")[0].strip() for line in proc.stdout.splitlines() if " | " in line}
    for name in (
        "plan(300 in 3 files) warm",
        "plan(300 in 3 files) warm, peak RSS",
        "plan(300 in 3 files) cold / parse",
        "`reconciler plan -o json` subprocess, 300 warm",
    ):
        assert name in names, proc.stdout


def test_the_scale_model_takes_the_slower_of_waiting_and_the_reconcilers_own_cpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Lanes are asked OBSERVE_WORKERS at a time, but one interpreter asks and reads every one
    of them: the observation of 100 hosts takes no less than 100 times the reconciler's own CPU
    per lane (its planning counted with the plan, not twice)."""
    from bench import scale
    from bench.table import Table

    def modelled(**measured: float) -> str:
        table = Table()
        for key, value in measured.items():
            table.measure(key.replace("_", " "), value)
        scale.run(None, table, None)  # type: ignore[arg-type]  # the model reads the table only
        return table.rows[0].value

    monkeypatch.setattr(scale, "OBSERVE_WORKERS", 8)
    base = {"ssh_batch": 0.010, "plan_warm_per_task": 20e-6}
    assert modelled(**base).startswith("≈ 0.33s = observe 0.13s (13 rounds of 8 lanes at 0.010s")
    own = {"reconciler_CPU_per_ssh_lane": 0.0032, "tasks_per_fleet_lane": 10}
    slow = modelled(**base, **own)  # (3.2 ms - 10 x 20 µs) x 100 hosts = 0.30 s > 0.13 s
    assert slow.startswith("≈ 0.50s = observe 0.30s (13 rounds of 8 lanes at 0.010s a batch, ")
    assert "at least 0.30s of the reconciler's own CPU (3.20 ms a lane" in slow
    fast = modelled(**base, **{**own, "reconciler_CPU_per_ssh_lane": 0.0005})
    assert fast.startswith("≈ 0.33s = observe 0.13s")
    monkeypatch.setattr(scale, "OBSERVE_WORKERS", 32)  # 100 hosts: 4 rounds of waiting
    assert modelled(**base).startswith("≈ 0.24s = observe 0.04s (4 rounds of 32 lanes")
