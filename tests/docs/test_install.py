"""The documented install: a wheel built from the checkout, installed into a fresh virtualenv,
gives the `reconciler` command and package under the distribution name agent-reconciler.

Offline: the wheel is built with the test virtualenv's setuptools, installed without its
dependencies, and run with those of the test virtualenv on the path (the fresh environment's own
copy of the package comes first)."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def run(*argv: str | Path, env: dict[str, str] | None = None) -> str:
    # from a directory with no package in it: the checkout is not importable from there
    proc = subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, env=env, cwd="/", check=False
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_the_wheel_installs_the_reconciler_command_under_its_distribution_name(
    tmp_path: Path,
) -> None:
    dist = tmp_path / "dist"
    # what `make dist` runs
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
        "-w", dist, ROOT)  # fmt: skip
    (wheel,) = dist.glob("*.whl")
    assert wheel.name.startswith("agent_reconciler-")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"reconciler/py.typed", "reconciler/demo/__main__.py"} <= names
    assert not any(n.startswith(("tests/", "bench/")) for n in names)
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    run(venv / "bin" / "pip", "install", "-q", "--no-index", "--no-deps", wheel)
    shown = run(venv / "bin" / "pip", "show", "agent-reconciler")
    assert "Name: agent-reconciler" in shown
    env = {**os.environ, "PYTHONPATH": sysconfig.get_paths()["purelib"]}
    assert run(venv / "bin" / "reconciler", "--version", env=env).startswith("reconciler ")
    where = run(venv / "bin" / "python", "-c", "import reconciler; print(reconciler.__file__)",
                env=env)  # fmt: skip
    assert where.startswith(str(venv)), "the command must run the installed copy"
