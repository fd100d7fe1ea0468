"""Pre-flight checks: each failure names the problem and a concrete fix."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from reconciler.protocol import (
    AgentRef,
    LaneRef,
    PreflightCheck,
    PreflightRequest,
    PreflightResult,
    RepoRef,
)
from tests.node.node_support import Env
from tests.support.git import git


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
        "git-identity",
        "base-branch",
        "remote",
        "workspace-writable",
        "disk",
        "home",
        "lane-owner",
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
    from tests.support.git import git

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


@pytest.mark.parametrize(
    ("kind", "variable", "login"),
    [
        ("claude", "ANTHROPIC_API_KEY", ".claude/.credentials.json"),
        ("codex", "CODEX_API_KEY", ".codex/auth.json"),
        ("gemini", "GEMINI_API_KEY", ".gemini/oauth_creds.json"),
        ("aider", "OPENAI_API_KEY", ".aider/oauth-keys.env"),
    ],
)
def test_agent_credentials_are_checked_by_presence_only(
    env: Env, monkeypatch: pytest.MonkeyPatch, kind: str, variable: str, login: str
) -> None:
    from reconciler.node import loginenv

    loginenv._CACHE.clear()
    home = Path(os.path.expanduser("~"))
    agent = AgentRef(kind=kind, command=[sys.executable])

    def auth() -> PreflightCheck:
        return run(env, PreflightRequest(lane=env.lane, agents=[agent], min_free_bytes=1))[
            "agent-auth", sys.executable
        ]

    missing = auth()
    assert not missing.ok and variable in missing.detail and missing.fix
    # the reconciler's own environment does not count: agents never see it
    monkeypatch.setenv(variable, "sk-reconciler-own")
    assert not auth().ok
    # a key in the lane's env (or the login profile) does; its value never leaves the lane
    keyed = agent.model_copy(update={"env": {variable: "sk-secret-value"}})
    check = run(env, PreflightRequest(lane=env.lane, agents=[keyed], min_free_bytes=1))[
        "agent-auth", sys.executable
    ]
    assert check.ok and variable in check.detail and "sk-secret-value" not in check.detail
    # a login left in the lane user's home does too
    (home / login).parent.mkdir(parents=True, exist_ok=True)
    (home / login).write_text("{}")
    assert auth().ok
    loginenv._CACHE.clear()


@pytest.mark.parametrize(
    ("kind", "variable", "login"),
    [("codex", "CODEX_HOME", "auth.json"), ("claude", "CLAUDE_CONFIG_DIR", ".credentials.json")],
)
def test_a_login_is_looked_for_where_the_agents_environment_puts_it(
    env: Env, tmp_path: Path, kind: str, variable: str, login: str
) -> None:
    from reconciler.node import loginenv

    loginenv._CACHE.clear()
    home = Path(os.path.expanduser("~"))
    default = home / {"codex": ".codex", "claude": ".claude"}[kind] / login
    default.parent.mkdir(parents=True, exist_ok=True)
    default.write_text("{}")  # a login where the agent will not look, once the variable is set
    config = tmp_path / f"{kind}-config"
    config.mkdir()
    agent = AgentRef(kind=kind, command=[sys.executable], env={variable: str(config)})

    def auth() -> PreflightCheck:
        return run(env, PreflightRequest(lane=env.lane, agents=[agent], min_free_bytes=1))[
            "agent-auth", sys.executable
        ]

    missing = auth()
    assert not missing.ok and str(config / login) in missing.detail, missing
    (config / login).write_text("{}")
    assert auth().ok and str(config / login) in auth().detail
    loginenv._CACHE.clear()


def test_an_agent_without_command_is_looked_up_by_its_kind(env: Env) -> None:
    checks = run(
        env,
        PreflightRequest(
            lane=env.lane,
            agents=[AgentRef(kind="codex"), AgentRef(kind="command")],
            min_free_bytes=1,
        ),
    )
    assert (
        not checks["agent", "codex"].ok
        and "codex is not on PATH" in checks["agent", "codex"].detail
    )
    assert not checks["agent", "command"].ok and "no command" in checks["agent", "command"].detail


def test_a_home_others_can_enter_is_reported_but_advisory(env: Env, isolated_home: Path) -> None:
    req = PreflightRequest(lane=env.lane, min_free_bytes=1)
    assert run(env, req)[("home", "")].ok
    isolated_home.chmod(0o755)  # what `useradd -m` makes on Debian
    home_check = run(env, req)[("home", "")]
    assert not home_check.ok and home_check.advisory
    assert f"The home {isolated_home} is mode 755: every user on this host can read" in (
        home_check.detail
    )
    assert home_check.fix == f"chmod 700 {isolated_home}"
    # the lane's own files under the home are named the way the manifest names them
    inside = env.lane.model_copy(
        update={
            "workspace_root": "~/worktrees",
            "repos": [env.lane.repos[0].model_copy(update={"checkout": "~/src/webapp"})],
        }
    )
    detail = run(env, PreflightRequest(lane=inside, min_free_bytes=1))[("home", "")].detail
    assert "the lane's checkout ~/src/webapp, worktrees ~/worktrees." in detail, detail
    isolated_home.chmod(0o750)  # its group may enter; other users may not
    assert run(env, req)[("home", "")].ok
    # no other check is advisory: they block dispatch when they fail
    assert not any(c.advisory for c in run(env, req).values())


def test_a_checkout_without_a_git_identity_is_reported_not_blocking(env: Env) -> None:
    git(env.checkout, "config", "--unset", "user.email")
    checks = run(env, PreflightRequest(lane=env.lane, bases={}, agents=[], min_free_bytes=1))
    found = checks["git-identity", "webapp"]
    assert not found.ok
    assert found.advisory  # commits: reconciler still works; doctor says it
    assert "no user.email" in found.detail
    assert "Author identity unknown" in found.detail
    assert "git config --global user.email" in (found.fix or "")


def test_codex_at_its_own_endpoint_needs_a_key_not_a_login(env: Env, tmp_path: Path) -> None:
    codex_home = tmp_path / "codex-home"
    codex_home.mkdir()
    (codex_home / "auth.json").write_text("{}")
    agent = AgentRef(
        kind="codex",
        command=[sys.executable],
        env={"CODEX_HOME": str(codex_home), "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"},
    )
    lane = env.lane.model_copy(update={"env": {"OPENAI_API_KEY": "", "CODEX_API_KEY": ""}})
    req = PreflightRequest(lane=lane, bases={}, agents=[agent], min_free_bytes=1)
    found = run(env, req)["agent-auth", sys.executable]
    assert not found.ok
    assert "talks to http://127.0.0.1:9/v1 (OPENAI_BASE_URL)" in found.detail
    assert "auth.json is a login for the vendor's own service" in found.detail
    keyed = agent.model_copy(update={"env": {**agent.env, "CODEX_API_KEY": "sk-x"}})
    req = PreflightRequest(lane=lane, bases={}, agents=[keyed], min_free_bytes=1)
    found = run(env, req)["agent-auth", sys.executable]
    assert found.ok
    assert "it talks to http://127.0.0.1:9/v1 (OPENAI_BASE_URL)" in found.detail


def test_agent_config_names_what_the_real_cli_will_refuse(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    def config(agent: AgentRef) -> PreflightCheck:
        req = PreflightRequest(lane=env.lane, bases={}, agents=[agent], min_free_bytes=1)
        return run(env, req)["agent-config", sys.executable]

    codex = AgentRef(kind="codex", command=[sys.executable], commits="agent")
    assert "workspace-write sandbox cannot write" in config(codex).detail
    assert config(codex.model_copy(update={"commits": "reconciler"})).ok
    untrusted = AgentRef(
        kind="gemini", command=[sys.executable], env={"GEMINI_CLI_TRUST_WORKSPACE": "false"}
    )
    assert "exit 55" in config(untrusted).detail
    assert config(untrusted.model_copy(update={"env": {}})).ok  # the adapter trusts by default
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    claude = AgentRef(kind="claude", command=[sys.executable])
    assert "refuses --permission-mode bypassPermissions" in config(claude).detail
    allowed = claude.model_copy(update={"args": ["--allowedTools", "Edit"]})
    assert config(allowed).ok
