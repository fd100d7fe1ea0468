"""Helpers for the node tests: a lane with one real repository, served through the node's entry
point."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from reconciler.node import git as gitops
from reconciler.node import procs
from reconciler.node.files import EXIT_JSON, PID_JSON, read_json
from reconciler.node.server import handle
from reconciler.protocol import (
    AgentRef,
    Batch,
    ExitInfo,
    Fingerprint,
    LaneRef,
    PrepareWorkspaceRequest,
    Request,
    Response,
    RunObs,
    StartRunRequest,
    TaskRef,
)
from tests.support.waiting import wait_for


@dataclass
class Env:
    """One lane with one repository: a bare origin, its clone, and a workspace root."""

    tmp: Path
    origin: Path
    checkout: Path
    root: Path
    lane: LaneRef
    scripts: int = 0

    def task(self, name: str, base: str = "main") -> TaskRef:
        return TaskRef(name=name, repo="webapp", base=base, branch=f"agent/{name}")

    def workspace(self, name: str) -> Path:
        return self.root / "webapp" / name

    def script(self, name: str, code: str) -> list[str]:
        path = self.tmp / name
        path.write_text(code)
        return [sys.executable, str(path)]

    def agent(self, code: str, *args: str, env: dict[str, str] | None = None) -> AgentRef:
        self.scripts += 1
        argv = self.script(f"agent-{self.scripts}.py", code)
        return AgentRef(kind="command", command=argv, args=list(args), env=env or {})

    def respond(self, req: Request) -> Response:
        [response] = handle(Batch(requests=[req])).responses
        return response

    def call(self, req: Request) -> dict[str, object]:
        """Serve one request through the public entry point; it must succeed."""
        response = self.respond(req)
        assert response.ok, response.failure
        assert response.result is not None
        return response.result

    def prepare(self, name: str) -> Path:
        self.call(PrepareWorkspaceRequest(lane=self.lane, task=self.task(name)))
        return self.workspace(name)

    def start_request(
        self, name: str, agent: AgentRef, prompt: str = "do it", **kw: object
    ) -> StartRunRequest:
        fields: dict[str, object] = {"attempt": 1, "iteration": 1, "generation": "g1"}
        fields.update(kw)
        return StartRunRequest.model_validate(
            {
                "lane": self.lane,
                "task": self.task(name),
                "prompt": prompt,
                "agent": agent,
                **fields,
            }
        )

    def start(self, name: str, agent: AgentRef, prompt: str = "do it", **kw: object) -> RunObs:
        self.prepare(name)
        return RunObs.model_validate(self.call(self.start_request(name, agent, prompt, **kw)))

    def wait_exit(self, run: RunObs, timeout: float = 15.0) -> ExitInfo:
        path = Path(run.run_dir) / EXIT_JSON
        wait_for(path.exists, f"{path}", timeout=timeout)
        return ExitInfo.model_validate_json(path.read_text())


def kill_leftover_runs(root: Path) -> None:
    runs = root / ".runs"
    if not runs.is_dir():
        return
    for pid_file in runs.glob(f"*/*/{PID_JSON}"):
        record = read_json(str(pid_file))
        if not record:
            continue
        fp = Fingerprint.model_validate({k: record[k] for k in ("boot_id", "pid", "start_time")})
        if procs.is_alive(fp):
            procs.kill_group(fp.pid, 0.0)


def lock_probe_hook(checkout: Path, seen: Path) -> None:
    """Install a post-checkout hook in ``checkout`` that appends to ``seen`` whether the
    repository's worktree lock was free while it ran ("free" or "held"), then where it ran."""
    lock = Path(gitops.common_dir(str(checkout))) / gitops.LOCK_NAME
    hook = checkout / ".git" / "hooks" / "post-checkout"
    hook.write_text(
        "#!/bin/sh\n"
        f"if flock -n {lock} true; then echo free; else echo held; fi >> {seen}\n"
        f'echo "$PWD" >> {seen}\n'
    )
    hook.chmod(0o755)


# ------------------------------------------- git's files as the node reads them

SETTLED_NS = 20_000_000  # the tests' racy window: short, so that their changes settle soon


def older_than_window(root: Path) -> bool:
    """Whether every file and directory under ``root`` was last changed before the racy
    window began."""
    recent = time.time_ns() - SETTLED_NS
    for where, dirs, names in os.walk(root):
        for name in [".", *dirs, *names]:
            try:
                st = os.lstat(os.path.join(where, name))
            except FileNotFoundError:
                return False  # changing right now
            if max(st.st_mtime_ns, st.st_ctime_ns) >= recent:
                return False
    return True


def settled(checkout: str) -> None:
    """Wait until nothing in the repository's git directory changed within the racy window."""
    git_dir = Path(gitops.common_dir(checkout))
    wait_for(lambda: older_than_window(git_dir), "the repository to be older than the window")


class GitCount:
    """The git processes the node starts, counted."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = gitops.run

        def counted(*args: object, **kwargs: object) -> object:
            self.calls += 1
            return real(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(gitops, "run", counted)

    def since(self, action: Callable[[], object]) -> int:
        before = self.calls
        action()
        return self.calls - before
