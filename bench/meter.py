"""The meter: what a pass pays to know what running agents have spent so far. N claude runs with
M MiB of ``stream-json`` each are metered once from nothing (what a reader without the meter's
kept position would pay every pass), then again after each run wrote 64 KiB more."""

from __future__ import annotations

import json
import time
from pathlib import Path

from bench.options import Options
from bench.sandbox import Sandbox
from bench.table import Table, median
from reconciler.node.agents.meter import spend
from reconciler.protocol import AgentRef

METER_TARGET = 0.1
RUNS = 20
GROWTH = 64 * 1024  # bytes each run writes between two passes
STEPS = 3


def message(n: int) -> bytes:
    """One assistant message with usage, as ``claude -p --output-format stream-json`` writes."""
    usage = {"input_tokens": 1200, "output_tokens": 300, "cache_read_input_tokens": 9000}
    content = [{"type": "text", "text": "x" * 700}]
    msg = {"id": f"m{n}", "model": "claude-sonnet-4-5", "content": content, "usage": usage}
    return json.dumps({"type": "assistant", "message": msg}).encode() + b"\n"


def meter_all(agent: AgentRef, dirs: list[Path]) -> float:
    started = time.perf_counter()
    for run_dir in dirs:
        spend(agent, str(run_dir))
    return time.perf_counter() - started


def run(box: Sandbox, table: Table, options: Options) -> None:
    mib = options.meter_mib
    per_mib = (1 << 20) // len(message(0))
    per_step = GROWTH // len(message(0))
    dirs = []
    for r in range(RUNS):
        run_dir = box.root / "meter" / f"{r}.1"
        run_dir.mkdir(parents=True)
        with open(run_dir / "output.log", "wb") as handle:
            handle.write(b"".join(message(n) for n in range(per_mib * mib)))
        dirs.append(run_dir)
    agent = AgentRef(kind="claude")
    first = meter_all(agent, dirs)
    grown = []
    for step in range(STEPS):
        for run_dir in dirs:
            with open(run_dir / "output.log", "ab") as handle:
                handle.write(b"".join(message(10**6 + step * 100 + n) for n in range(per_step)))
        grown.append(meter_all(agent, dirs))
    steady = median(grown)
    table.add(
        f"meter: {RUNS} runs of {mib} MiB, pass after 64 KiB more / first pass",
        f"{steady / first:.3f} ({steady / RUNS * 1000:.2f} ms vs "
        f"{first / RUNS * 1000:.1f} ms per run)",
        f"≤ {METER_TARGET:g}",
        steady / first <= METER_TARGET,
    )
    found = spend(agent, str(dirs[0]))
    expected = per_mib * mib + STEPS * per_step
    if found.turns != expected:
        raise SystemExit(f"meter counted {found.turns} messages, expected {expected}")
