"""A small world for end-to-end tests: real git repositories, a control repo, scripted agents,
and the real ``reconciler`` command line run as a subprocess (so that crash points really kill it).

Everything lives under one temporary directory, which is also HOME for every child process.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.git import GIT_ID, commit_all, git
from tests.support.waiting import wait_for

# Scripted agents: (name → Python source). They read the prompt on stdin, act in the cwd (the
# worktree), and print a last line. RECONCILER_* markers tell them which run they are.
AGENTS: dict[str, str] = {
    "succeed": """
        import os, subprocess, sys
        prompt = sys.stdin.read()
        task = os.environ["RECONCILER_TASK"]
        with open(f"{task}.txt", "a", encoding="utf-8") as f:
            f.write(f"run {os.environ['RECONCILER_ATTEMPT']}.{os.environ['RECONCILER_ITERATION']}\\n")
        subprocess.run(["git", *GIT_ID, "add", "-A"], check=True)
        subprocess.run(["git", *GIT_ID, "commit", "-qm", f"work on {task}"], check=True)
        print("DONE")
    """,
    "needs-feedback": """
        import os, subprocess, sys
        prompt = sys.stdin.read()
        if "did not meet the success criteria" in prompt and "fixed.txt" in prompt:
            open("fixed.txt", "w").write("fixed\\n")
        else:
            open("attempted.txt", "a").write("try\\n")
        subprocess.run(["git", *GIT_ID, "add", "-A"], check=True)
        subprocess.run(["git", *GIT_ID, "commit", "-qm", "work"], check=True)
        print("DONE")
    """,
    "sigkill-first": """
        import os, signal, subprocess, sys
        sys.stdin.read()
        if os.environ["RECONCILER_ATTEMPT"] == "1":
            print("about to die", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        open("survived.txt", "w").write("ok\\n")
        subprocess.run(["git", *GIT_ID, "add", "-A"], check=True)
        subprocess.run(["git", *GIT_ID, "commit", "-qm", "work"], check=True)
        print("DONE")
    """,
    "hang": """
        import sys, time
        sys.stdin.read()
        time.sleep(3600)
    """,
    "exit-3": """
        import sys
        sys.stdin.read()
        print("something went wrong")
        sys.exit(3)
    """,
    "no-commit": """
        import sys
        sys.stdin.read()
        print("DONE but nothing committed")
    """,
    "slow": """
        import os, subprocess, sys, time
        sys.stdin.read()
        for _ in range(int(os.environ.get("SLOW_STEPS", "6"))):
            print("working", flush=True)
            time.sleep(0.25)
        task = os.environ["RECONCILER_TASK"]
        open(f"{task}.txt", "a").write("slow\\n")
        subprocess.run(["git", *GIT_ID, "add", "-A"], check=True)
        subprocess.run(["git", *GIT_ID, "commit", "-qm", "slow work"], check=True)
        print("DONE")
    """,
    "until-released": """
        import os, subprocess, sys, time
        prompt = sys.stdin.read()
        # runs until released (RELEASE_FILE, set in the lane's env) or given a new spec
        while "new spec" not in prompt and not os.path.exists(os.environ["RELEASE_FILE"]):
            print("working", flush=True)
            time.sleep(0.1)
        task = os.environ["RECONCILER_TASK"]
        open(f"{task}.txt", "a").write("released\\n")
        subprocess.run(["git", *GIT_ID, "add", "-A"], check=True)
        subprocess.run(["git", *GIT_ID, "commit", "-qm", f"work on {task}"], check=True)
        print("DONE")
    """,
    "hostile-until-released": """
        import os, subprocess, sys, time
        sys.stdin.read()
        # what a hostile or confused agent prints and writes: markup that must stay text
        print('<script>document.body.dataset.pwned = "script"</script>', flush=True)
        print('<img src=x onerror="document.body.dataset.pwned = 1">', flush=True)
        open("page.html", "w").write('<script>document.body.dataset.pwned = "diff"</script>\\n')
        while not os.path.exists(os.environ["RELEASE_FILE"]):  # set in the lane's env
            print("working", flush=True)
            time.sleep(0.2)
        subprocess.run(["git", *GIT_ID, "add", "-A"], check=True)
        subprocess.run(["git", *GIT_ID, "commit", "-qm", "a page"], check=True)
        print("DONE")
    """,
    "shared-file": """
        import os, re, subprocess, sys
        prompt = sys.stdin.read()
        task = os.environ["RECONCILER_TASK"]
        asked = re.search(r"conflicts with .*`git merge (\\S+)`", prompt, re.S)
        if asked:  # resolve as an agent would: merge the base it names, keep both sides
            subprocess.run(["git", *GIT_ID, "merge", "--no-edit", asked.group(1)], check=False)
            marker = ("<<<<<<<", "=======", ">>>>>>>")
            kept = [ln for ln in open("shared.txt").read().splitlines() if not ln.startswith(marker)]
            open("shared.txt", "w").write("\\n".join(kept) + "\\n")
            message = "resolve the conflict with the base"
        else:
            open("shared.txt", "w").write(f"{task} was here\\n")
            message = f"{task} writes shared.txt"
        subprocess.run(["git", *GIT_ID, "add", "-A"], check=True)
        subprocess.run(["git", *GIT_ID, "commit", "-qm", message], check=True)
        print("DONE")
    """,
    "echo-prompt": """
        import os, subprocess, sys
        data = sys.stdin.buffer.read()
        with open(os.path.join(os.environ["RECONCILER_RUN_DIR"], "received.bin"), "wb") as f:
            f.write(data)
        open("x.txt", "w").write("x\\n")
        subprocess.run(["git", *GIT_ID, "add", "-A"], check=True)
        subprocess.run(["git", *GIT_ID, "commit", "-qm", "echo"], check=True)
        print("DONE")
    """,
}


def yaml_doc(kind: str, name: str, spec: dict[str, Any]) -> str:
    # JSON is YAML: no quoting surprises in generated manifests.
    return json.dumps(
        {"apiVersion": "reconciler/v1", "kind": kind, "metadata": {"name": name}, "spec": spec}
    )


@dataclass
class World:
    root: Path
    lanes: dict[str, dict[str, Any]] = field(default_factory=dict)
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    config: dict[str, Any] = field(
        default_factory=lambda: {"backoff": {"base": "200ms", "max": "1s"}}
    )
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def control(self) -> Path:
        return self.root / "control"

    @property
    def state(self) -> Path:
        return self.root / "state"

    # ------------------------------------------------------------------ building

    def setup(self) -> World:
        self.home.mkdir(parents=True, exist_ok=True)
        self.home.chmod(0o700)  # as a careful admin sets a lane user's home (doctor checks it)
        (self.root / "agents").mkdir(exist_ok=True)
        for name, source in AGENTS.items():
            body = f"GIT_ID = {GIT_ID!r}\n" + textwrap.dedent(source)
            (self.root / "agents" / f"{name}.py").write_text(body, encoding="utf-8")
        self.control.mkdir()
        git(self.control, "init", "-q", "-b", "main")
        return self

    def repo(self, name: str) -> Path:
        """A bare origin and the lane's clone of it, with one commit on main."""
        seed = self.root / "seed" / name
        seed.mkdir(parents=True)
        git(seed, "init", "-q", "-b", "main")
        (seed / "README.md").write_text(f"# {name}\n", encoding="utf-8")
        git(seed, "add", "-A")
        git(seed, "commit", "-qm", "initial")
        bare = self.root / "remotes" / f"{name}.git"
        bare.parent.mkdir(exist_ok=True)
        git(self.root, "clone", "-q", "--bare", str(seed), str(bare))
        checkout = self.home / "src" / name
        git(self.root, "clone", "-q", str(bare), str(checkout))
        git(checkout, "config", "user.name", "Lane User")  # the lane user's identity
        git(checkout, "config", "user.email", "lane@example.invalid")
        return checkout

    def lane(self, name: str, slots: int = 2, forge: bool = True, repo: str | None = None) -> None:
        repo = repo or f"{name}-repo"
        self.repo(repo)
        self.lanes[name] = {
            "maxConcurrency": slots,
            "workspaceRoot": f"~/worktrees/{name}",
            "repos": [
                {
                    "name": repo,
                    "checkout": f"~/src/{repo}",
                    **({"forge": {"kind": "local"}} if forge else {}),
                }
            ],
        }

    def task(self, name: str, lane: str, agent: str, **spec: Any) -> None:
        repo = self.lanes[lane]["repos"][0]["name"]
        self.tasks[name] = {
            "lane": lane,
            "repo": repo,
            "agent": agent,
            "prompt": spec.pop("prompt", f"Please do {name}."),
            "success": spec.pop("success", {"markers": ["DONE"]}),
            **spec,
        }

    def commit(self, message: str = "manifests") -> str:
        """Write the manifests into the control repo and commit them; return the revision."""
        mdir = self.control / "manifests"
        mdir.mkdir(exist_ok=True)
        docs = [yaml_doc("Config", "default", self.config)]
        docs += [yaml_doc("Lane", n, s) for n, s in self.lanes.items()]
        for name in sorted(AGENTS):
            docs.append(
                yaml_doc(
                    "Agent",
                    name,
                    {
                        "kind": "command",
                        "command": [sys.executable, str(self.root / "agents" / f"{name}.py")],
                        "stallTimeout": "2s" if name == "hang" else "1m",
                        "timeout": "5m",
                    },
                )
            )
        (mdir / "base.yaml").write_text("\n---\n".join(docs) + "\n", encoding="utf-8")
        tdir = mdir / "tasks"
        if tdir.exists():
            for old in tdir.iterdir():
                old.unlink()
        tdir.mkdir(exist_ok=True)
        for name, spec in self.tasks.items():
            (tdir / f"{name}.yaml").write_text(yaml_doc("Task", name, spec) + "\n", "utf-8")
        return commit_all(self.control, message)

    # ------------------------------------------------------------------ driving

    def env(self, **extra: str) -> dict[str, str]:
        base = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "LANG": "C.UTF-8",
            "RECONCILER_CONTROL": str(self.control),
            "RECONCILER_STATE": str(self.state),
            "GIT_CONFIG_NOSYSTEM": "1",
            "RECONCILER_POLICY": os.environ["RECONCILER_POLICY"],  # tests/conftest.py
        }
        return {**base, **self.extra_env, **extra}

    def cli(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "reconciler", *args],
            env=self.env(**env),
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=120,
            check=False,
        )

    def status(self) -> dict[str, dict[str, Any]]:
        proc = self.cli("status", "--json")
        assert proc.returncode == 0, proc.stderr
        return {t["name"]: t for t in json.loads(proc.stdout)["tasks"]}

    def describe(self, task: str) -> dict[str, Any]:
        proc = self.cli("describe", task, "--json")
        assert proc.returncode == 0, proc.stderr
        data: dict[str, Any] = json.loads(proc.stdout)
        return data

    def plan_json(self) -> dict[str, Any]:
        proc = self.cli("plan", "--json")
        assert proc.returncode == 0, proc.stderr
        data: dict[str, Any] = json.loads(proc.stdout)
        return data

    def converge(self, timeout: float = 60.0, **env: str) -> list[subprocess.CompletedProcess[str]]:
        """``apply --yes`` until a pass plans nothing and no task is in motion."""
        moving = {"pending", "queued", "running", "backoff", "closing"}
        passes = []

        def settled() -> bool:
            proc = self.cli("apply", "--yes", **env)
            passes.append(proc)
            assert proc.returncode in (0, -signal.SIGKILL), proc.stdout + proc.stderr
            if proc.returncode != 0 or "No changes." not in proc.stdout:
                return False
            return not {t["phase"] for t in self.status().values()} & moving

        wait_for(settled, "convergence", timeout=timeout, every=0.1, details=self.status)
        return passes

    # ------------------------------------------------------------------ the world's truth

    def prs(self, repo: str) -> list[dict[str, Any]]:
        bare = self.root / "remotes" / f"{repo}.git"
        proc = subprocess.run(
            ["git", "-C", str(bare), "show", "refs/reconciler/pulls:pulls.json"],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            return []
        pulls: list[dict[str, Any]] = json.loads(proc.stdout)["pulls"]
        return pulls

    def git_head(self, repo: str, branch: str) -> str:
        """The branch's head as the remote has it."""
        bare = self.root / "remotes" / f"{repo}.git"
        return git(bare, "rev-parse", f"refs/heads/{branch}")

    def worktrees(self, repo: str) -> list[str]:
        out = git(self.home / "src" / repo, "worktree", "list", "--porcelain")
        paths = [line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("worktree ")]
        return [p for p in paths if "/worktrees/" in p]

    def live_agents(self) -> dict[str, list[int]]:
        """Agent processes alive now, by task, found in /proc by their run markers: those found
        alive that still are once the scan is over, one instant. (A standby run's agent starts
        a few milliseconds after the last agent of its slot ended: a scan that read the one
        before it ended and the other after it started would see two at once, which never were.)"""
        found: dict[str, list[int]] = {}
        for pid in _pids():
            env = _environ(pid)
            run_dir = env.get("RECONCILER_RUN_DIR", "")
            if env.get("RECONCILER_TASK") and run_dir.startswith(str(self.home) + "/"):
                if _state(pid) not in ("Z", "X"):
                    found.setdefault(env["RECONCILER_TASK"], []).append(pid)
        still = {
            task: [p for p in pids if _state(p) not in ("Z", "X")] for task, pids in found.items()
        }
        return {task: pids for task, pids in still.items() if pids}

    def kill_agents(self) -> None:
        for pids in self.live_agents().values():
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def _pids() -> Iterable[int]:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            yield int(entry)


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def _state(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "X"
    return stat.rsplit(")", 1)[1].split()[0]
