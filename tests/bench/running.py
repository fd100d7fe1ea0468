"""Running ``python -m bench`` from the checkout with an isolated HOME, and reading its table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[2]  # `python -m bench` runs from here


def bench_env(tmp_path: Path) -> dict[str, str]:
    """The bench's environment: HOME and TMPDIR in ``tmp_path`` (the suite's isolated HOME is
    ``tmp_path/home``)."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "TMPDIR": str(tmp_path),
        "GIT_CONFIG_NOSYSTEM": "1",
    }


def run_bench(tmp_path: Path, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench", *argv],
        env=bench_env(tmp_path),
        cwd=CHECKOUT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def table_rows(stdout: str) -> dict[str, list[str]]:
    """The printed table's rows by name: name, value, target, ok?"""
    return {
        line.split(" | ")[0].strip(): line.split(" | ")
        for line in stdout.splitlines()
        if " | " in line
    }


def printed(stdout: str, names: tuple[str, ...]) -> dict[str, list[str]]:
    """The table's rows, after checking that every one of ``names`` is among them."""
    rows = table_rows(stdout)
    for name in names:
        assert name in rows, f"missing row {name!r} in:\n{stdout}"
    return rows
