"""The systemd unit, the cron wrapper and the crontab line of docs/operations.md, as written
there (only paths swapped for this machine's), checked as far as this machine allows."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.world import World
from tests.support.git import git

DOC = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
INSTALLED = "/opt/reconciler/.venv/bin/reconciler"


def block(language: str, contains: str) -> str:
    for found in re.finditer(rf"```{language}\n(.*?)```", DOC.read_text(), re.S):
        if contains in found.group(1):
            return found.group(1)
    raise AssertionError(f"no ```{language} block with {contains!r} in {DOC}")


def reconciler_bin() -> str:
    here = Path(sys.executable).parent / "reconciler"
    return str(here) if here.exists() else shutil.which("reconciler") or INSTALLED


def test_the_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed here")
    unit = block("ini", "[Service]").replace(INSTALLED, reconciler_bin())
    unit = unit.replace("User=agents", "User=root").replace("Group=agents", "Group=root")
    path = tmp_path / "reconciler.service"
    path.write_text(unit)
    proc = subprocess.run(
        [analyze, "verify", str(path)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "KillMode=process" in unit and "ExecReload=/bin/kill -HUP $MAINPID" in unit


def test_the_cron_wrapper_and_crontab_line(world: World, tmp_path: Path) -> None:
    world.lane("web")
    world.task("a", "web", "succeed")
    world.commit()
    script = block("sh", "reconciler apply --yes")
    script = script.replace(INSTALLED, reconciler_bin())
    script = re.sub(r"RECONCILER_CONTROL=\S+", f"RECONCILER_CONTROL={world.control}", script)
    script = re.sub(r"RECONCILER_STATE=\S+", f"RECONCILER_STATE={world.state}", script)
    wrapper = tmp_path / "reconciler-pass"
    wrapper.write_text(script)
    wrapper.chmod(0o755)
    alerts = tmp_path / "alerts"
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "logger").write_text(f'#!/bin/sh\necho "$@" >> {alerts}\n')
    (fake / "logger").chmod(0o755)
    env = {**world.env(), "PATH": f"{fake}{os.pathsep}{os.environ.get('PATH', '')}"}

    def run() -> int:
        return subprocess.run([str(wrapper)], env=env, capture_output=True, check=False).returncode

    assert run() == 0
    assert not alerts.exists()
    # an overlapping pass: 75, and no alert
    from reconciler.state import StateLock

    with StateLock(world.state):
        assert run() == 75
    assert not alerts.exists()
    # broken manifests: 1, and an alert
    (world.control / "manifests" / "broken.yaml").write_text("kind: [\n")
    git(world.control, "add", "-A")
    git(world.control, "commit", "-qm", "broken")
    assert run() == 1
    assert "exited 1" in alerts.read_text()
    # the crontab line: five time fields and the wrapper
    line = next(ln for ln in DOC.read_text().splitlines() if "reconciler-pass >>" in ln)
    fields = line.split()
    assert fields[:5] == ["*"] * 5 and fields[5] == "/usr/local/bin/reconciler-pass"
