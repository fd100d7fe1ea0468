"""The attacker's workbench: real Linux users as lanes, their repositories, a control repo, and
the real ``reconciler`` command line run as root, as an operator would run it.

Every attack of the threat model (docs/security.md) is performed for real against these: a lane
user's files are written by that user (``User.run``), never by root on its behalf, so the
kernel's permission checks stand between the lanes exactly as they would in production.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

GIT_ID = ["-c", "user.name=t", "-c", "user.email=t@example.invalid"]
# The agents run as lane users: a Python every user can run.
AGENT_PYTHON = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
WRITE_STDIN = "import sys; open(sys.argv[1], 'w').write(sys.stdin.read())"


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


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    home: Path

    def run(
        self,
        argv: list[str],
        *,
        input: str | None = None,
        check: bool = True,
        cwd: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """``argv`` as this user, with a reset environment (nothing of root's)."""
        proc = subprocess.run(
            [
                "setpriv",
                f"--reuid={self.uid}",
                f"--regid={self.gid}",
                "--init-groups",
                "--reset-env",
                "--",
                *argv,
            ],
            input=input,
            capture_output=True,
            text=True,
            cwd=cwd or str(self.home),
            timeout=120,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"{argv} as {self.name} failed: {proc.stderr}{proc.stdout}")
        return proc

    def sh(self, script: str, *, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(["/bin/sh", "-c", script], check=check)

    def write(self, path: Path | str, text: str, mode: int = 0o644) -> None:
        """Write a file as this user (creating its directories), so the kernel judges it."""
        self.run(["mkdir", "-p", str(Path(path).parent)])
        self.run(
            [AGENT_PYTHON, "-c", WRITE_STDIN, str(path)],
            input=text,
        )
        self.run(["chmod", f"{mode:o}", str(path)])


def create_user(prefix: str = "rcsec") -> User:
    """A fresh login user with a home (unlocked for ssh: ``*`` lets keys in, no password)."""
    name = f"{prefix}{secrets.token_hex(3)}"
    for attempt in range(20):  # another test process may hold the passwd lock for a moment
        proc = subprocess.run(
            ["useradd", "-m", "-s", "/bin/sh", name], capture_output=True, text=True, check=False
        )
        if proc.returncode == 0:
            break
        if attempt == 19:
            raise AssertionError(f"useradd {name} failed: {proc.stderr}")
        time.sleep(0.25)
    subprocess.run(["usermod", "-p", "*", name], check=True, capture_output=True)
    pw = pwd.getpwnam(name)
    home = Path(pw.pw_dir)
    home.chmod(0o700)  # as a careful admin sets it (doctor flags anything else)
    return User(name=name, uid=pw.pw_uid, gid=pw.pw_gid, home=home)


def remove_user(user: User) -> None:
    subprocess.run(["pkill", "-KILL", "-u", user.name], check=False)
    for attempt in range(20):
        proc = subprocess.run(
            ["userdel", "-r", "-f", user.name], capture_output=True, text=True, check=False
        )
        if proc.returncode in (0, 6, 12):  # 6: no such user; 12: the home was gone already
            return
        if attempt == 19:
            raise AssertionError(f"userdel {user.name} failed: {proc.stderr}")
        time.sleep(0.25)


def make_repo(user: User, name: str = "app") -> Path:
    """``~/remotes/<name>.git`` and its clone ``~/src/<name>`` (one commit on main), made by the
    user; returns the clone."""
    src = user.home / "src" / name
    bare = user.home / "remotes" / f"{name}.git"
    seed = user.home / "seed" / name
    user.sh(
        " && ".join(
            [
                f"mkdir -p {seed} {bare.parent} {src.parent}",
                f"git -C {seed} init -q -b main",
                f"echo '# {name}' > {seed}/README.md",
                f"git -C {seed} add -A",
                f"git {' '.join(GIT_ID)} -C {seed} commit -qm initial",
                f"git clone -q --bare {seed} {bare}",
                f"git clone -q {bare} {src}",
                f"git -C {src} config user.name {user.name}",
                f"git -C {src} config user.email {user.name}@example.invalid",
            ]
        )
    )
    return src


def lane_python() -> str:
    """A Python every lane user can run that imports this checkout (and its dependencies).

    This test's interpreter may live in root's private home (pyenv under /root): then a
    throwaway virtualenv of the system Python of the same version, owned by root and readable by
    all, with a ``.pth`` to this checkout and its site-packages."""
    real = os.path.realpath(sys.executable)
    if not real.startswith("/root/") and not sys.executable.startswith("/root/"):
        return sys.executable
    system = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
    if not os.access(system, os.X_OK):
        pytest.skip(f"no Python {sys.version_info[:2]} that lane users can run ({system})")
    shared = Path(tempfile.mkdtemp(prefix="reconciler-security-"))
    shared.chmod(0o755)
    venv = shared / "venv"
    subprocess.run([system, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    ours = [p for p in sys.path if p.endswith("site-packages") and os.path.isdir(p)]
    checkout = str(Path(__file__).resolve().parents[2])
    (site / "reconciler-tests.pth").write_text("\n".join([checkout, *ours]) + "\n")
    return str(venv / "bin" / "python")


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
    python: str = sys.executable  # runs the CLI; lane_python() when lane users must run it too
    policy: Path | None = None  # $RECONCILER_POLICY; None: the safe defaults (no policy file)

    @property
    def repo(self) -> Path:
        return self.root / "control"

    @property
    def state(self) -> Path:
        return self.root / "state"

    def commit(self, *docs: str, message: str = "manifests") -> str:
        """Make ``docs`` the control repo's only manifests, commit; returns the revision."""
        if not (self.repo / ".git").exists():
            subprocess.run(["git", "init", "-q", "-b", "main", str(self.repo)], check=True)
        (self.repo / "manifests").mkdir(parents=True, exist_ok=True)
        (self.repo / "manifests" / "all.yaml").write_text("\n---\n".join(docs) + "\n")
        subprocess.run(["git", "-C", str(self.repo), "add", "-A"], check=True)
        subprocess.run(
            ["git", *GIT_ID, "-C", str(self.repo), "commit", "-qm", message, "--allow-empty"],
            check=True,
        )
        return subprocess.run(
            ["git", "-C", str(self.repo), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

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
        self, *args: str, stdin: str | None = None, timeout: float = 180, **env: str
    ) -> subprocess.CompletedProcess[str]:
        """``reconciler ARGS`` as root, as an operator runs it."""
        return subprocess.run(
            [self.python, "-m", "reconciler", *args],
            env=self.env(**env),
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
    return doc("Agent", kind, {"kind": "command", "command": [AGENT_PYTHON, str(script)]})


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


class Daemon:
    """``reconciler run`` as root, its JSON log lines collected by a thread."""

    def __init__(self, control: Control, *args: str) -> None:
        self.proc = subprocess.Popen(
            [control.python, "-m", "reconciler", "run", "--log-format", "json", *args],
            env=control.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        self.records: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.records.append(json.loads(line))
            except ValueError:
                self.records.append({"event": "text", "msg": line})

    def passes(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("event") == "pass" and "number" in r]

    def wait_for(self, probe: Callable[[], Any], what: str, timeout: float = 60) -> Any:
        """Wait for a condition of the world (never a fixed sleep), failing with the log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = probe()
            if found:
                return found
            if self.proc.poll() is not None:
                assert self.proc.stderr is not None
                raise AssertionError(f"the daemon exited: {self.proc.stderr.read()}")
            time.sleep(0.05)
        raise AssertionError(f"{what} did not happen in {timeout}s; log: {self.records[-8:]}")

    def poke(self) -> int:
        """A pass now (SIGHUP), waited for; returns the number of passes logged."""
        self.wait_for(self.passes, "the first pass")  # a pass under way ends before the poke's
        before = len(self.passes())
        self.proc.send_signal(signal.SIGHUP)
        self.wait_for(lambda: len(self.passes()) > before, "the poked pass")
        return len(self.passes())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        finally:
            self._reader.join(timeout=5)
            for pipe in (self.proc.stdout, self.proc.stderr):
                if pipe is not None:
                    pipe.close()


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
