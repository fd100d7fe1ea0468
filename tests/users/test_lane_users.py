"""Lanes as trust boundaries on one machine: each lane's work runs as its own Linux user.

Real users (created and removed here), real git repositories in their homes, real agent
processes. Needs root (to create users and switch to them) and ``setpriv``; skipped otherwise.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.engine import Context, Engine
from reconciler.lanes import LaneUnavailable, local_user
from tests.support.git import GIT_ID, commit_all, git
from tests.support.linux_users import agent_python, shared_python, shared_tempdir

if os.geteuid() != 0:
    pytest.skip("lane users need root to create users and switch to them", allow_module_level=True)
if not (shutil.which("setpriv") and shutil.which("useradd")):
    pytest.skip("lane users need setpriv and useradd (util-linux, passwd)", allow_module_level=True)

PROBE = """
import json, os, subprocess, sys, time
sys.stdin.read()
other = os.environ["OTHER_HOME"]
probe = {}
for path in (other + "/.config/reconciler/github-token", other + "/worktrees", other + "/worktrees/.runs"):
    try:
        os.listdir(path) if os.path.isdir(path) else open(path).read()
        probe[path] = "read"
    except PermissionError:
        probe[path] = "denied"
# A barrier: say "here" and wait for the other lane's agent to say so too. Both get past it
# only if both ran at the same time; alone, the agent gives up and the run fails.
barrier = os.environ["BARRIER"]
open(os.path.join(barrier, os.environ["USER"]), "w").close()
met = False
for _ in range(1200):
    if os.path.exists(os.path.join(barrier, os.environ["OTHER_USER"])):
        met = True
        break
    time.sleep(0.05)
# The lane's first run ends only once the task behind it is queued on standby (apply prepares
# it beside this run's start), so that this run's end is what starts it.
if os.environ["RECONCILER_TASK"].startswith("task-"):
    queue = os.path.join(os.environ["HOME"], "worktrees", ".runs", ".standby")
    for _ in range(1200):
        if os.path.isdir(queue) and [n for n in os.listdir(queue) if not n.startswith(".")]:
            break
        time.sleep(0.05)
with open("work.txt", "w") as f:
    f.write("done\\n")
subprocess.run(["git", *GIT_ID, "add", "-A"], check=True)
subprocess.run(["git", *GIT_ID, "commit", "-qm", "work"], check=True)
record = {"uid": os.getuid(), "env": dict(os.environ), "probe": probe, "met": met}
with open(os.path.join(os.environ["RECONCILER_RUN_DIR"], "probe.json"), "w") as f:
    json.dump(record, f)
print("DONE" if met else "the other lane's agent never came")
"""


def run_as(user: str, *argv: str, cwd: str | None = None) -> str:
    pw = pwd.getpwnam(user)
    proc = subprocess.run(
        [
            "setpriv",
            f"--reuid={pw.pw_uid}",
            f"--regid={pw.pw_gid}",
            "--init-groups",
            "--reset-env",
            "--",
            *argv,
        ],
        cwd=cwd or pw.pw_dir,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture
def users() -> Iterator[list[str]]:
    names = [f"rcl{secrets.token_hex(3)}{side}" for side in "ab"]
    for name in names:
        subprocess.run(["useradd", "-m", "-s", "/bin/bash", name], check=True)
    try:
        yield names
    finally:
        for name in names:
            subprocess.run(["pkill", "-KILL", "-u", name], check=False)
            time.sleep(0.1)
            subprocess.run(["userdel", "-r", name], check=False, capture_output=True)


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory every lane user can read: the agent scripts."""
    path = shared_tempdir("reconciler-lanes-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def lane_python(shared: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A Python every lane user can run, seeing this checkout and its dependencies.

    Lane users run ``reconciler node`` (and run supervisors) themselves, so the interpreter
    and what it imports must be theirs to read; this test's interpreter may live in root's home
    (pyenv under /root), its checkout in a private directory (``shared_python`` copes with both).
    """
    python = shared_python()
    monkeypatch.setattr(local_user, "PYTHON", python)
    return python


def lane_home(user: str) -> Path:
    """The lane user's repository (a bare origin and their clone), token and login profile."""
    home = Path(pwd.getpwnam(user).pw_dir)
    run_as(user, "git", "init", "-q", "--bare", "-b", "main", str(home / "remotes/app.git"))
    run_as(user, "git", "clone", "-q", str(home / "remotes/app.git"), str(home / "src/app"))
    run_as(user, "sh", "-c", "echo '# app' > README.md", cwd=str(home / "src/app"))
    run_as(user, "git", *GIT_ID, "add", "-A", cwd=str(home / "src/app"))
    run_as(user, "git", *GIT_ID, "commit", "-qm", "initial", cwd=str(home / "src/app"))
    run_as(user, "git", "push", "-q", "origin", "main", cwd=str(home / "src/app"))
    run_as(user, "mkdir", "-p", "-m", "700", str(home / ".config/reconciler"))
    run_as(user, "sh", "-c", f"umask 077; echo ghp_{user}_secret > .config/reconciler/github-token")
    # What people put in ~/.profile: it must reach the agent (and be the only source of PATH).
    run_as(user, "sh", "-c", f"echo 'export FROM_PROFILE=profile-of-{user}' >> .profile")
    return home


def manifests(control: Path, users: list[str], agent: Path, barrier: Path) -> None:
    docs = []
    for user, other in (users, users[::-1]):
        docs.append(
            {
                "kind": "Lane",
                "metadata": {"name": user},
                "spec": {
                    "user": user,
                    "maxConcurrency": 1,
                    "workspaceRoot": "~/worktrees",
                    "env": {
                        "OTHER_HOME": pwd.getpwnam(other).pw_dir,
                        "OTHER_USER": other,
                        "BARRIER": str(barrier),
                    },
                    "credentials": {"github": "~/.config/reconciler/github-token"},
                    "repos": [{"name": "app", "checkout": "~/src/app", "forge": {"kind": "local"}}],
                },
            }
        )
        # the lane's one slot goes to task-; next- waits on standby, started by task-'s
        # supervisor at its end, as the lane user
        for name, priority in ((f"task-{user}", 1), (f"next-{user}", 0)):
            docs.append(
                {
                    "kind": "Task",
                    "metadata": {"name": name},
                    "spec": {
                        "lane": user,
                        "repo": "app",
                        "agent": "probe",
                        "prompt": "Probe the neighbours.",
                        "success": {"markers": ["DONE"]},
                        "priority": priority,
                    },
                }
            )
    docs.append(
        {
            "kind": "Agent",
            "metadata": {"name": "probe"},
            "spec": {"kind": "command", "command": [agent_python(), str(agent)]},
        }
    )
    text = "\n---\n".join(json.dumps({"apiVersion": "reconciler/v1", **d}) for d in docs)
    (control / "manifests").mkdir(parents=True)
    (control / "manifests" / "all.yaml").write_text(text + "\n", encoding="utf-8")
    git(control, "init", "-q", "-b", "main")
    commit_all(control, "lanes")


def converge(engine: Engine, passes: int = 60) -> None:
    for _ in range(passes):
        desired = engine.load()
        with engine.locked(None) as store:
            result = engine.apply(desired, store)
        report = result.report
        assert report is not None
        assert report.ok, report.failed
        assert not result.plan.blocked, result.plan.blocked
        phases = {t.phase.value for t in result.plan.tasks}
        if result.plan.empty and not phases & {"pending", "queued", "running", "backoff"}:
            return
        time.sleep(0.2)
    raise AssertionError("the lanes did not converge")


def test_each_lane_runs_as_its_user_and_cannot_reach_the_other(
    users: list[str],
    shared: Path,
    lane_python: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent = shared / "probe.py"
    agent.write_text(f"GIT_ID = {GIT_ID!r}\n" + textwrap.dedent(PROBE), encoding="utf-8")
    agent.chmod(0o755)
    homes = {user: lane_home(user) for user in users}
    barrier = shared / "barrier"
    barrier.mkdir()
    barrier.chmod(0o1777)  # both lane users leave their marker here
    manifests(tmp_path / "control", users, agent, barrier)
    # The reconciler's own secrets must never reach an agent.
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-reconciler-own-key")
    monkeypatch.setenv("GH_TOKEN", "ghp_reconciler_own_token")
    engine = Engine(Context(control=str(tmp_path / "control"), state_dir=tmp_path / "state"))
    converge(engine)

    for user in users:
        uid = pwd.getpwnam(user).pw_uid
        home = homes[user]
        run_dir = home / "worktrees/.runs" / f"task-{user}" / "1.1"
        record = json.loads((run_dir / "probe.json").read_text())
        # the first run of each lane met the other lane's at the barrier: they ran at once
        assert record["met"], f"{user}'s agent waited alone at the barrier"
        # the agent ran as the lane user, in files owned by the lane user, private to them
        assert record["uid"] == uid
        assert (home / "worktrees").stat().st_uid == uid
        assert (home / "worktrees").stat().st_mode & 0o077 == 0
        assert run_dir.stat().st_uid == uid and run_dir.stat().st_mode & 0o077 == 0
        assert (run_dir / "prompt.md").stat().st_mode & 0o777 == 0o600
        for path in (home / "worktrees/app" / f"task-{user}").rglob("*"):
            assert path.lstat().st_uid == uid, path
        # the PR was written by the lane user into the lane's remote
        pulls = run_as(
            user,
            "git",
            "-C",
            str(home / "remotes/app.git"),
            "show",
            "refs/reconciler/pulls:pulls.json",
        )
        heads = sorted(p["head"] for p in json.loads(pulls)["pulls"])
        assert heads == [f"agent/next-{user}", f"agent/task-{user}"]
        objects = [p for p in (home / "remotes/app.git/objects").rglob("*") if p.is_file()]
        assert objects and all(p.stat().st_uid == uid for p in objects)
        # the neighbour's token, worktrees and run directories are out of reach: refused
        assert set(record["probe"].values()) == {"denied"}, record["probe"]
        # the environment: the login profile and the lane's env, nothing of the reconciler's
        env = record["env"]
        assert env["FROM_PROFILE"] == f"profile-of-{user}"
        assert env["HOME"] == str(home) and env["USER"] == user
        assert "ANTHROPIC_API_KEY" not in env and "GH_TOKEN" not in env
        assert "sk-ant-reconciler-own-key" not in json.dumps(env)
        recorded = json.loads((run_dir / "env.json").read_text())
        assert "FROM_PROFILE" in json.dumps(recorded) and "ANTHROPIC_API_KEY" not in recorded
        # the standby run: queued by the lane user's node in a queue private to them, started
        # by the ending run's supervisor as the lane user, with the same environment
        queue = home / "worktrees/.runs/.standby"
        assert queue.stat().st_uid == uid and queue.stat().st_mode & 0o077 == 0
        next_dir = home / "worktrees/.runs" / f"next-{user}" / "1.1"
        started = json.loads((next_dir / "pid.json").read_text())
        assert started["claimed_from"] == f"task-{user}/1.1"
        assert next_dir.stat().st_uid == uid and next_dir.stat().st_mode & 0o077 == 0
        record = json.loads((next_dir / "probe.json").read_text())
        assert record["uid"] == uid and set(record["probe"].values()) == {"denied"}
        assert record["env"]["FROM_PROFILE"] == f"profile-of-{user}"
        assert "sk-ant-reconciler-own-key" not in json.dumps(record["env"])


def test_an_installation_the_lane_user_cannot_reach_is_named_with_the_fix(
    users: list[str], shared: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    private = shared / "private"
    (private / "bin").mkdir(parents=True)
    python = private / "bin" / "python3"
    python.symlink_to(sys.executable)
    private.chmod(0o700)
    monkeypatch.setattr(local_user, "PYTHON", str(private / "bin" / "nothing"))
    transport = local_user.LocalUserTransport("web", users[0])
    with pytest.raises(LaneUnavailable) as info:
        transport.argv()
    assert str(private) in str(info.value) and "/opt/reconciler" in str(info.value)
    monkeypatch.setattr(local_user, "PYTHON", "/bin/sh")  # reachable by anyone
    assert transport.argv()[0] == "setpriv"
    # a user that does not exist: the fix, not a traceback
    with pytest.raises(LaneUnavailable, match="useradd -m ghost-user"):
        local_user.LocalUserTransport("web", "ghost-user").argv()
