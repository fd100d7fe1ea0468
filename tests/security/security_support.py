"""The attacker's workbench: real Linux users as lanes, their repositories, a control repo, and
the real ``reconciler`` command line run as root, as an operator would run it.

Every attack of the threat model (docs/security.md) is performed for real against these: a lane
user's files are written by that user (``User.run``), never by root on its behalf, so the
kernel's permission checks stand between the lanes exactly as they would in production.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support import linux_users
from tests.support.daemon_log import RunLog
from tests.support.git import commit_manifests
from tests.support.linux_users import User, agent_python, shared_python


def require_root() -> None:
    """Skip the calling module unless it can create users and switch to them."""
    if os.geteuid() != 0:
        pytest.skip(
            "the security suite attacks with real Linux users: it needs root (CI runs it as root)",
            allow_module_level=True,
        )
    for tool in ("setpriv", "useradd", "userdel", "git"):
        if shutil.which(tool) is None:
            pytest.skip(
                f"{tool} is not installed; the security suite needs it", allow_module_level=True
            )


def create_user() -> User:
    """A fresh lane user with a private home (0700), as a careful admin makes one."""
    return linux_users.create_user("rcsec", private_home=True)


def doc(kind: str, name: str, spec: dict[str, Any]) -> str:
    """One manifest document (JSON is YAML: no quoting surprises)."""
    return json.dumps(
        {"apiVersion": "reconciler/v1", "kind": kind, "metadata": {"name": name}, "spec": spec}
    )


def lane_doc(user: User, name: str | None = None, **extra: Any) -> str:
    """A local lane running as ``user`` with its ``app`` repository and a local forge."""
    spec: dict[str, Any] = {
        "user": user.name,
        "maxConcurrency": 2,
        "workspaceRoot": "~/worktrees",
        "repos": [{"name": "app", "checkout": "~/src/app", "forge": {"kind": "local"}}],
    }
    spec.update(extra)
    return doc("Lane", name or user.name, spec)


@dataclass
class Control:
    """A control repo and a state directory under ``root``, and the CLI run against them as root."""

    root: Path
    # runs the CLI, whose lane users run it too (``python -m reconciler node``)
    python: str = field(default_factory=shared_python)
    policy: Path | None = None  # $RECONCILER_POLICY; None: the safe defaults (no policy file)

    @property
    def repo(self) -> Path:
        return self.root / "control"

    @property
    def state(self) -> Path:
        return self.root / "state"

    def commit(self, *docs: str, message: str = "manifests") -> str:
        """Make ``docs`` the control repo's only manifests, commit; returns the revision."""
        return commit_manifests(self.repo, docs, message)

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", str(self.root)),
            "LANG": "C.UTF-8",
            "GIT_CONFIG_NOSYSTEM": "1",
            "RECONCILER_CONTROL": str(self.repo),
            "RECONCILER_STATE": str(self.state),
        }
        # the suite's permissive test policy (tests/conftest.py) must not leak into an attack:
        # the policy is exactly what this Control says, else the defaults (no policy file)
        if self.policy is not None:
            env["RECONCILER_POLICY"] = str(self.policy)
        env.update(extra)
        return env

    def cli(
        self,
        *args: str,
        stdin: str | None = None,
        timeout: float = 180,
        cwd: Path | None = None,
        **env: str,
    ) -> subprocess.CompletedProcess[str]:
        """``reconciler ARGS`` as root, as an operator runs it (in ``cwd``; ``env`` on top of
        this Control's, where an empty value stands for "not set")."""
        return subprocess.run(
            [self.python, "-m", "reconciler", *args],
            env=self.env(**env),
            cwd=cwd,
            input=stdin,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def apply(self) -> subprocess.CompletedProcess[str]:
        return self.cli("apply", "--yes")

    def status(self) -> dict[str, Any]:
        proc = self.cli("status", "--json")
        assert proc.stdout, proc.stderr
        data: dict[str, Any] = json.loads(proc.stdout)
        return data

    def phases(self) -> dict[str, str]:
        return {t["name"]: t["phase"] for t in self.status()["tasks"]}

    def converge(self, want: dict[str, str], passes: int = 80) -> dict[str, str]:
        """Apply until the named tasks reach the wanted phases (waiting on the world, not a
        clock: each pass observes what the agents did)."""
        phases: dict[str, str] = {}
        for _ in range(passes):
            proc = self.apply()
            assert proc.returncode in (0, 1), proc.stderr
            phases = self.phases()
            if all(phases.get(t) == p for t, p in want.items()):
                return phases
            time.sleep(0.2)
        raise AssertionError(f"did not converge to {want}: {phases}")


# Agents every lane user can run: small Python scripts in a world-readable directory. They read
# the prompt on stdin, work in the worktree (the cwd) and print their last line.
AGENTS: dict[str, str] = {
    "commit": """
import os, subprocess, sys
prompt = sys.stdin.read()
task = os.environ["RECONCILER_TASK"]
with open(task + ".txt", "a") as f:
    f.write("run " + os.environ["RECONCILER_ATTEMPT"] + "." + os.environ["RECONCILER_ITERATION"] + "\\n")
with open(os.path.join(os.environ["RECONCILER_RUN_DIR"], "prompt-seen.md"), "w") as f:
    f.write(prompt)
subprocess.run(["git", "add", "-A"], check=True)
subprocess.run(["git", "commit", "-qm", "work on " + task], check=True)
print("DONE")
""",
    "sleep": """
import sys, time
sys.stdin.read()
print("working", flush=True)
time.sleep(3600)
""",
}


def agent_doc(directory: Path, kind: str) -> str:
    """An Agent manifest named ``kind`` running the script of that name (written into
    ``directory``, which must be readable by the lane users)."""
    script = directory / f"{kind}.py"
    if not script.exists():
        script.write_text(AGENTS[kind])
        script.chmod(0o755)
    return doc("Agent", kind, {"kind": "command", "command": [agent_python(), str(script)]})


def task_doc(name: str, lane: str, agent: str = "commit", **extra: Any) -> str:
    spec: dict[str, Any] = {
        "lane": lane,
        "repo": "app",
        "agent": agent,
        "prompt": f"Do {name}.",
        "success": {"markers": ["DONE"]},
    }
    spec.update(extra)
    return doc("Task", name, spec)


AGENTS["nocommit"] = """
import sys
sys.stdin.read()
print("DONE, but nothing committed")
"""


def fingerprint(pid: int) -> dict[str, Any]:
    """What a run's ``pid.json`` says of a process: boot id, pid, start time."""
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    stat = Path(f"/proc/{pid}/stat").read_text()
    start = int(stat.rsplit(")", 1)[1].split()[19])
    return {"boot_id": boot, "pid": pid, "start_time": start}


def alive(record: dict[str, Any]) -> bool:
    """Is the process a ``pid.json`` names still the one it names?"""
    try:
        return fingerprint(int(record["pid"])) == {
            k: record[k] for k in ("boot_id", "pid", "start_time")
        }
    except (OSError, ValueError, IndexError):
        return False


def spawn_as(user: User, argv: list[str]) -> subprocess.Popen[bytes]:
    """A process of ``user`` (e.g. the attacker's own ``sleep``), started detached."""
    return subprocess.Popen(
        [
            "setpriv",
            f"--reuid={user.uid}",
            f"--regid={user.gid}",
            "--init-groups",
            "--reset-env",
            "--",
            *argv,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd="/",
        start_new_session=True,
    )


def local_pulls(user: User, repo: str = "app") -> list[dict[str, Any]]:
    """The local forge's pull requests of ``user``'s ``~/remotes/<repo>.git`` (none: [])."""
    proc = user.run(
        [
            "git",
            "-C",
            str(user.home / "remotes" / f"{repo}.git"),
            "show",
            "refs/reconciler/pulls:pulls.json",
        ],
        check=False,
    )
    if proc.returncode != 0:
        return []
    pulls: list[dict[str, Any]] = json.loads(proc.stdout)["pulls"]
    return pulls


class Daemon(RunLog):
    """``reconciler run`` as root, with a JSON log."""

    def __init__(self, control: Control, *args: str) -> None:
        argv = [control.python, "-m", "reconciler", "run", "--log-format", "json", *args]
        super().__init__(argv, control.env())


def inotify_watches(pid: int) -> list[tuple[int, int]]:
    """(device, inode) of every inotify watch the process holds (from /proc/PID/fdinfo)."""
    found: list[tuple[int, int]] = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:inotify":
                continue
            info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        for line in info.splitlines():
            if line.startswith("inotify wd:"):
                fields = dict(part.split(":", 1) for part in line.split()[1:])
                dev = int(fields["sdev"], 16)
                found.append((os.makedev(dev >> 20, dev & 0xFFFFF), int(fields["ino"], 16)))
    return found
