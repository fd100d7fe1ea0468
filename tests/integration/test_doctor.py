"""Every pre-flight failure, produced on purpose, in `reconciler doctor` and in the plan.

One world holds a lane per failure; the doctor table must name each failed check with its fix,
and the plan must block the failing lanes' tasks (or leave an unreachable lane's `unknown`)
instead of dispatching anything.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from tests.integration.world import World
from tests.support.git import git

OLD_GIT = """#!/bin/sh
# git, except that it says it is older than the reconciler supports
if [ "$1" = "--version" ] || [ "$1" = "version" ]; then echo "git version 2.20.1"; exit 0; fi
exec {git} "$@"
"""


def lane_of(world: World, name: str, **spec: object) -> None:
    world.lane(name)
    world.lanes[name].update(spec)


def doctor_rows(stdout: str) -> dict[tuple[str, str], str]:
    """(lane, check) → the whole row, for failed checks."""
    rows: dict[tuple[str, str], str] = {}
    for line in stdout.splitlines()[1:]:
        cells = line.split()
        if len(cells) >= 3 and "FAIL" in cells:
            rows[(cells[0], cells[1])] = line
    return rows


def test_each_preflight_failure_is_in_doctor_with_its_fix(world: World, tmp_path: Path) -> None:
    lane_of(world, "ok")
    lane_of(world, "nocheckout")
    lane_of(world, "nobase")
    lane_of(world, "rootfile", workspaceRoot="~/not-a-dir")
    lane_of(world, "fulldisk", minFreeDisk="1000000TiB")
    lane_of(world, "noagent")
    lane_of(world, "notoken")
    world.lanes["notoken"]["repos"][0]["forge"] = {"kind": "github", "repo": "acme/app"}
    lane_of(world, "ghost", user="ghost-of-a-user")
    lane_of(world, "far", host="ssh://agent@127.0.0.1:1")
    world.lanes["far"]["ssh"] = {"identityFile": str(tmp_path / "no-such-key")}
    for lane in world.lanes:
        world.task(
            f"t-{lane}", lane, "succeed", **({"base": "release-9"} if lane == "nobase" else {})
        )
    world.tasks["t-noagent"]["agent"] = "missing"
    world.commit()
    shutil.rmtree(world.home / "src" / "nocheckout-repo")
    (world.home / "not-a-dir").write_text("a file where the workspace root should be\n")
    extra = world.control / "manifests" / "missing-agent.yaml"
    extra.write_text(
        json.dumps(
            {
                "apiVersion": "reconciler/v1",
                "kind": "Agent",
                "metadata": {"name": "missing"},
                "spec": {"kind": "command", "command": ["no-such-agent-binary"]},
            }
        )
        + "\n"
    )
    git(world.control, "add", "-A")
    git(world.control, "commit", "-qm", "an agent nobody installed")

    proc = world.cli("doctor", GH_TOKEN="", GITHUB_TOKEN="")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    failed = doctor_rows(proc.stdout)
    expected = {
        ("nocheckout", "checkout"): "clone the repository there",
        ("nobase", "base-branch"): "release-9",
        ("rootfile", "workspace-writable"): "not a directory",
        ("fulldisk", "disk"): "free",
        ("noagent", "agent"): "no-such-agent-binary",
        ("notoken", "forge-token"): "GH_TOKEN",
        ("ghost", "user"): "ghost-of-a-user",
    }
    for key, words in expected.items():
        assert key in failed, f"{key} not failed in:\n{proc.stdout}"
        assert words in failed[key], failed[key]
    assert any(lane == "far" for lane, _ in failed), proc.stdout
    assert not [key for key in failed if key[0] == "ok"], proc.stdout  # the healthy lane passes
    assert "FAIL" in proc.stdout and "checks failed." in proc.stdout

    # The plan dispatches nothing to a failing lane: blocked with the reason, or unknown.
    plan = world.plan_json()
    started = {a["task"] for a in plan["actions"] if a["action"] == "start"}
    assert started == {"t-ok"}, plan["actions"]
    blocked = {b["task"]: b["reason"] for b in plan["blocked"]}
    for lane in ("nocheckout", "nobase", "rootfile", "fulldisk", "noagent", "notoken"):
        assert f"t-{lane}" in blocked, (lane, blocked)
    status = world.status()
    assert (
        status["t-ghost"]["phase"] == "unknown" and "ghost-of-a-user" in status["t-ghost"]["reason"]
    )
    assert status["t-far"]["phase"] == "unknown"


def test_old_git_and_a_broken_login_profile_are_reported(world: World, tmp_path: Path) -> None:
    world.lane("web")
    world.task("a", "web", "succeed")
    world.commit()
    real = shutil.which("git")
    assert real is not None
    fake = tmp_path / "oldgit"
    fake.mkdir()
    (fake / "git").write_text(OLD_GIT.format(git=real))
    (fake / "git").chmod(0o755)
    (world.home / ".profile").write_text("echo 'profile broke' >&2\nexit 7\n")
    proc = world.cli("doctor", PATH=f"{fake}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}")
    assert proc.returncode == 1
    failed = doctor_rows(proc.stdout)
    assert "2.20" in failed[("web", "git")] and "2.30" in failed[("web", "git")]
    row = failed[("web", "login-env")]
    assert "exited 7" in row and "profile broke" in row and "profile" in row
    # once the profile is fixed, its exports reach the check's PATH report
    (world.home / ".profile").write_text("export PATH=/opt/tools/bin:$PATH\n")
    proc = world.cli("doctor")
    assert ("web", "login-env") not in doctor_rows(proc.stdout)
    assert "PATH=/opt/tools/bin:" in proc.stdout


def test_doctor_checks_the_state_and_the_home_without_blocking_dispatch(world: World) -> None:
    lane_of(world, "web")
    world.task("a", "web", "succeed")
    world.commit()
    assert world.cli("doctor").returncode == 0
    # a state directory others can write is refused by every command, doctor included
    world.state.chmod(0o777)
    refused = world.cli("doctor")
    assert refused.returncode == 1 and "cannot be trusted" in refused.stderr
    assert f"chmod go-w {world.state}" in refused.stderr
    world.state.chmod(0o755)  # readable by others: doctor's row says so, nothing refuses
    world.home.chmod(0o755)
    (world.state / "state.db").write_bytes(b"not a database, and never was one\n" * 200)
    proc = world.cli("doctor")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    failed = doctor_rows(proc.stdout)
    assert f"chmod 700 {world.state}" in failed[("(control)", "state-dir")]
    db = world.state / "state.db"
    assert f"mv {db} {db}.damaged" in failed[("(control)", "state-db")]
    home = failed[("web", "home")]
    assert "mode 755" in home and f"chmod 700 {world.home}" in home
    assert "tasks are still dispatched" in home
    assert "3 checks failed." in proc.stdout
    # the home is advisory: the plan still starts the task (the state aside, as doctor says)
    db.rename(world.state / "state.db.damaged")
    world.state.chmod(0o700)
    plan = world.plan_json()
    assert [(a["action"], a["task"]) for a in plan["actions"]] == [("start", "a")], plan
    assert plan["blocked"] == []
