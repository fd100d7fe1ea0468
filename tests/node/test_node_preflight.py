"""Pre-flight checks: each failure names the problem and a concrete fix."""

from __future__ import annotations

import sys

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
