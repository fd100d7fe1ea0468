"""The whole reconciler driving a real agent CLI: a lane user whose login environment points the
agent at the scripted model API, a task whose check fails once (its output asks the model for
``fixed.txt``), and the operator's commands in the order an operator runs them."""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.security.security_support import Control, doc, lane_doc
from tests.support.linux_users import User
from tests.support.model_api import ModelServer

# The check fails until the agent wrote fixed.txt, and says so in words the scripted model reads.
CHECK = [
    "sh",
    "-c",
    "test -f fixed.txt || { echo 'fixed.txt is missing: @write fixed.txt'; exit 1; }",
]
PROMPT = "Start the feature: @write first.txt"
# Nothing leaves the machine: no telemetry, update checks or "nonessential" traffic.
QUIET = {
    "DISABLE_TELEMETRY": "1",
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_ERROR_REPORTING": "1",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "GEMINI_TELEMETRY_ENABLED": "false",
    "NO_UPDATE_NOTIFIER": "1",
}


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip(
            "the real agent CLIs run as lane users: the suite needs root (CI runs it as root)",
            allow_module_level=True,
        )
    for tool in ("setpriv", "useradd", "userdel", "git"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed", allow_module_level=True)


@dataclass
class Scenario:
    control: Control
    user: User
    api: ModelServer

    def profile(self, exports: dict[str, str]) -> None:
        """The lane user's ``~/.profile``: where an admin puts an agent's key and endpoint."""
        lines = [f"export {k}='{v}'" for k, v in {**QUIET, **exports}.items()]
        self.user.write(self.user.home / ".profile", "\n".join(lines) + "\n", 0o600)

    def manifests(
        self, agent_kind: str, binary: Path, task: dict[str, Any] | None = None, **agent: Any
    ) -> None:
        """One lane (the user's), the Agent ``real`` of ``agent_kind`` running ``binary`` with
        ``agent``'s spec, and the task ``feature`` (``task``: more of its spec)."""
        spec: dict[str, Any] = {"kind": agent_kind, "command": [str(binary)], **agent}
        task = {
            "lane": self.user.name,
            "repo": "app",
            "agent": "real",
            "prompt": PROMPT,
            "success": {"checks": [CHECK]},
            "maxIterations": 3,
            **(task or {}),
        }
        self.control.commit(
            lane_doc(self.user, maxConcurrency=1),
            doc("Agent", "real", spec),
            doc("Task", "feature", task),
        )

    def cli(self, *args: str) -> Any:
        return self.control.cli(*args)

    def ready(self) -> None:
        """What an operator runs before the first apply: all three must pass."""
        for args in (("validate",), ("doctor",), ("plan",)):
            proc = self.control.cli(*args)
            assert proc.returncode == 0, f"reconciler {args[0]}: {proc.stdout}{proc.stderr}"
        plan = self.control.cli("plan")
        assert "feature" in plan.stdout, plan.stdout

    def two_iterations_to_pr_open(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Converge to pr-open: the check failed the first run, the second met it. The task's
        status and its runs as ``describe`` shows them."""
        task = self.converge("pr-open")
        runs: list[dict[str, Any]] = self.describe()["runs"]
        assert [(r["attempt"], r["iteration"], r["outcome"]) for r in runs] == [
            (1, 1, "failed"),  # the check asked for fixed.txt
            (1, 2, "succeeded"),
        ], f"{runs}\n{self.run_logs()}"
        return task, runs

    def branch_authors(self) -> list[str]:
        """The authors of the commits the task's branch has over main, in the lane's remote."""
        remote = self.user.home / "remotes" / "app.git"
        log = ["git", "-C", str(remote), "log", "--format=%an", "main..agent/feature"]
        return self.user.run(log).stdout.split()

    def merge_and_finish(self) -> None:
        """Merge the task's PR as a reviewer would, then converge to done."""
        merged = self.control.cli("pr", "merge", "feature")
        assert merged.returncode == 0, merged.stdout + merged.stderr
        self.converge("done")

    def task(self) -> dict[str, Any]:
        return next(t for t in self.control.status()["tasks"] if t["name"] == "feature")

    def describe(self) -> dict[str, Any]:
        proc = self.control.cli("describe", "feature", "--json")
        assert proc.returncode == 0, proc.stderr
        data: dict[str, Any] = json.loads(proc.stdout)
        return data

    def converge(self, phase: str, reason: str = "", timeout: float = 240) -> dict[str, Any]:
        """Apply until the task reaches ``phase`` with ``reason`` in its reason (each pass
        observes what the agent did); fails at once on a task failed unexpectedly."""
        deadline = time.monotonic() + timeout
        task: dict[str, Any] = {}
        while time.monotonic() < deadline:
            proc = self.control.apply()
            assert proc.returncode in (0, 1), proc.stderr
            task = self.task()
            if task["phase"] == phase and reason in task["reason"]:
                return task
            if task["phase"] == "failed" and phase != "failed":
                break
            time.sleep(0.3)
        raise AssertionError(
            f"task did not reach {phase} ({reason!r}): {task}\n{self.describe_text()}\n"
            f"{self.run_logs()}"
        )

    def start_and_finish(self, count: int, timeout: float = 120) -> None:
        """Apply until the task's ``count``-th run has started, then wait, without another
        pass, until it has ended: no pass observes it mid-run (a pass could stop it)."""
        deadline = time.monotonic() + timeout
        while len(self.runs_dirs()) < count:
            assert time.monotonic() < deadline, f"run {count} never started\n{self.run_logs()}"
            proc = self.control.apply()
            assert proc.returncode in (0, 1), proc.stderr
        ended = self.runs_dirs()[count - 1] / "exit.json"
        while self.user.run(["test", "-e", str(ended)], check=False).returncode != 0:
            assert time.monotonic() < deadline, f"run {count} never ended\n{self.run_logs()}"
            time.sleep(0.1)

    def describe_text(self) -> str:
        return str(self.control.cli("describe", "feature").stdout)

    def run_logs(self) -> str:
        """Every run's output and stderr, for a failure message."""
        out = []
        for path in sorted((self.user.home / "worktrees" / ".runs").glob("*/*/*")):
            if path.name in ("output.log", "stderr.log", "checks.log", "supervisor.log"):
                text = self.user.run(["tail", "-c", "3000", str(path)], check=False).stdout
                out.append(f"--- {path}\n{text}")
        return "\n".join(out)

    def runs_dirs(self) -> list[Path]:
        listing = self.user.run(
            [
                "find",
                str(self.user.home / "worktrees" / ".runs"),
                "-mindepth",
                "2",
                "-maxdepth",
                "2",
            ],
            check=False,
        ).stdout.split()
        return sorted(Path(p) for p in listing)

    def read(self, path: Path) -> str:
        return str(self.user.run(["cat", str(path)]).stdout)
