"""Pre-flight checks: each failure names the problem and a concrete fix."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from node_support import Env

from reconciler.protocol import (
    AgentRef,
    LaneRef,
    PreflightCheck,
    PreflightRequest,
    PreflightResult,
    RepoRef,
)


def run(env: Env, req: PreflightRequest) -> dict[tuple[str, str], PreflightCheck]:
    checks = PreflightResult.model_validate(env.call(req)).checks
    for check in checks:
        assert check.detail, check
        assert check.ok or check.fix, check
    return {(c.name, c.subject): c for c in checks}


def test_a_healthy_lane_passes(env: Env) -> None:
    agent = AgentRef(kind="command", command=[sys.executable, "-c", "pass"])
    checks = run(
        env,
        PreflightRequest(
            lane=env.lane, bases={"webapp": ["main"]}, agents=[agent], min_free_bytes=1
        ),
    )
    assert all(c.ok for c in checks.values()), [c for c in checks.values() if not c.ok]
    assert {name for name, _ in checks} == {
        "git",
        "checkout",
        "base-branch",
        "remote",
        "workspace-writable",
        "disk",
        "login-env",
        "agent",
    }
    assert not env.root.exists()  # read-only: the root is only checked to be creatable


def test_missing_checkout(env: Env) -> None:
    lane = env.lane.model_copy(
        update={"repos": [RepoRef(name="gone", checkout=str(env.tmp / "nowhere"))]}
    )
    checks = run(env, PreflightRequest(lane=lane, min_free_bytes=1))
    check = checks[("checkout", "gone")]
    assert not check.ok
    assert "does not exist" in check.detail
    assert "git clone" in check.fix


def test_missing_base_branch(env: Env) -> None:
    checks = run(
        env, PreflightRequest(lane=env.lane, bases={"webapp": ["develop"]}, min_free_bytes=1)
    )
    check = checks[("base-branch", "webapp:develop")]
    assert not check.ok
    assert "develop" in check.detail
    assert "fetch" in check.fix


def test_missing_agent_binary(env: Env) -> None:
    lane = LaneRef(
        name="webapp",
        workspace_root=str(env.root),
        repos=env.lane.repos,
        env={"PATH": str(env.tmp / "empty-bin")},
    )
    agents = [AgentRef(kind="claude"), AgentRef(kind="command", command=["/no/such/agent"])]
    checks = run(env, PreflightRequest(lane=lane, agents=agents, min_free_bytes=1))
    claude = checks[("agent", "claude")]
    assert not claude.ok
    assert "not on PATH" in claude.detail
    assert "PATH" in claude.fix
    absolute = checks[("agent", "/no/such/agent")]
    assert not absolute.ok
    assert "install" in absolute.fix


def test_not_enough_disk_and_unwritable_root(env: Env) -> None:
    checks = run(env, PreflightRequest(lane=env.lane, min_free_bytes=1 << 62))
    disk = checks[("disk", "")]
    assert not disk.ok
    assert "free disk space" in disk.fix
    (env.tmp / "file").write_text("not a directory")
    lane = env.lane.model_copy(update={"workspace_root": str(env.tmp / "file")})
    checks = run(env, PreflightRequest(lane=lane, min_free_bytes=1))
    root = checks[("workspace-writable", "")]
    assert not root.ok
    assert "not a directory" in root.detail


def test_forge_without_remote(env: Env) -> None:
    from node_support import git

    git(env.checkout, "remote", "remove", "origin")
    checks = run(env, PreflightRequest(lane=env.lane, min_free_bytes=1))
    remote = checks[("remote", "webapp")]
    assert not remote.ok
    assert "remote add" in remote.fix


def test_login_env_comes_from_the_profile_and_a_hanging_profile_fails_with_the_fix(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    from reconciler.node import loginenv

    home = Path(os.path.expanduser("~"))
    (home / ".profile").write_text("export FROM_PROFILE=yes\nexport PATH=$HOME/bin:$PATH\n")
    monkeypatch.setenv("RECONCILER_OWN_SECRET", "must-not-leak")
    loginenv._CACHE.clear()
    found = loginenv.login_env()
    assert found.error is None
    assert found.env["FROM_PROFILE"] == "yes"
    assert found.env["PATH"].startswith(f"{home}/bin:")
    assert "RECONCILER_OWN_SECRET" not in found.env  # never the serving process's environment
    assert "PWD" not in found.env and "SHLVL" not in found.env
    # a profile that waits for something: the capture gives up, pre-flight says what to fix
    (home / ".profile").write_text("sleep 30\n")
    monkeypatch.setattr(loginenv, "CAPTURE_TIMEOUT", 0.5)
    loginenv._CACHE.clear()
    checks = run(env, PreflightRequest(lane=env.lane, min_free_bytes=1))
    failed = checks["login-env", ""]
    assert not failed.ok and "did not finish" in failed.detail and "profile" in failed.fix
    loginenv._CACHE.clear()
