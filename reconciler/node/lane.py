"""Validation of what a request names, and the lane's paths derived from it.

Every name in a request is checked against a strict pattern before it becomes part of a path or
an argv, and every path the node touches is derived here and must stay under the lane's
workspace root (or be a configured checkout). Must not create, change or delete anything.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass

from reconciler.node.errors import NodeError
from reconciler.protocol import LaneRef, RepoRef, StateRef, TaskRef

NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
# Conservative subset of git's ref-name rules: enough for agent/<task>, main, release/1.2.
_REF_CHARS = re.compile(r"^[A-Za-z0-9._/+-]+$")
RUN_KEY = re.compile(r"^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)/(\d+)\.(\d+)$")
RUNS_DIR = ".runs"


def check_name(value: str, what: str) -> str:
    if not NAME.match(value):
        raise NodeError(
            f"{what} {value!r} is not a valid name; use lowercase letters, digits and '-' "
            "(at most 63 characters, starting and ending with a letter or digit)"
        )
    return value


def check_ref_name(value: str, what: str, *, allow_empty: bool = False) -> str:
    """A branch, base, prefix or remote name that is safe as a git argument and a ref part."""
    if value == "" and allow_empty:
        return value
    bad = (
        not _REF_CHARS.match(value)
        or value.startswith(("-", "/", "."))
        or ".." in value
        or "//" in value
        or value.endswith((".lock", "."))
        or "/." in value
    )
    if bad:
        raise NodeError(
            f"{what} {value!r} is not a usable git name; use letters, digits, '.', '_', '-' "
            "and '/', not starting with '-' or '.', without '..'"
        )
    return value


def check_branch(value: str, what: str = "branch") -> str:
    check_ref_name(value, what)
    if value.endswith("/"):
        raise NodeError(f"{what} {value!r} must not end with '/'; drop the trailing slash")
    return value


def check_counter(value: int, what: str) -> int:
    if value < 0:
        raise NodeError(f"{what} {value} is negative; attempts and iterations count from 0")
    return value


def expand(path: str) -> str:
    """``~`` is the lane user's home; the result is absolute and normalized."""
    full = os.path.expanduser(path)
    if not os.path.isabs(full):
        raise NodeError(f"path {path!r} must be absolute or start with ~; fix the lane manifest")
    return os.path.normpath(full)


def is_under(root: str, path: str) -> bool:
    """``path`` (symlinks resolved) is ``root`` itself or inside it."""
    real = os.path.realpath(path)
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


@dataclass(frozen=True)
class Lane:
    """A validated lane: resolved workspace root and repositories by name."""

    ref: LaneRef
    root: str  # realpath of the expanded workspace root
    repos: dict[str, RepoRef]
    checkouts: dict[str, str]  # repo name → expanded checkout path
    env_tokens: bool = True  # may a token come from this process's environment?
    state: StateRef | None = None  # the state directory the request acts for

    @classmethod
    def of(cls, ref: LaneRef, *, env_tokens: bool = True, state: StateRef | None = None) -> Lane:
        check_name(ref.name, "lane name")
        root = os.path.realpath(expand(ref.workspace_root))
        if root == os.sep:
            raise NodeError("the workspace root must not be '/'; choose a dedicated directory")
        repos: dict[str, RepoRef] = {}
        checkouts: dict[str, str] = {}
        for repo in ref.repos:
            check_name(repo.name, "repo name")
            check_ref_name(repo.remote, f"remote of repo {repo.name}")
            if repo.name in repos:
                raise NodeError(f"repo {repo.name} is listed twice in lane {ref.name}; keep one")
            repos[repo.name] = repo
            checkouts[repo.name] = expand(repo.checkout)
        for key, value in ref.env.items():
            if not key or "=" in key or "\0" in key or "\0" in value:
                raise NodeError(f"environment name {key!r} of lane {ref.name} is not valid")
        return cls(
            ref=ref,
            root=root,
            repos=repos,
            checkouts=checkouts,
            env_tokens=env_tokens,
            state=state,
        )

    def repo(self, name: str) -> tuple[RepoRef, str]:
        check_name(name, "repo name")
        if name not in self.repos:
            known = ", ".join(sorted(self.repos)) or "none"
            raise NodeError(
                f"repo {name} is not one of lane {self.ref.name}'s repos ({known}); "
                "add it to the lane or fix the task"
            )
        return self.repos[name], self.checkouts[name]

    def contained(self, path: str) -> str:
        if not is_under(self.root, path):
            raise NodeError(
                f"{path} resolves outside the workspace root {self.root}; remove the symlink "
                "that leads out of it"
            )
        return path

    def workspace(self, repo: str, task: str) -> str:
        """``<root>/<repo>/<task>``, checked to stay under the root."""
        check_name(repo, "repo name")
        check_name(task, "task name")
        return self.contained(os.path.join(self.root, repo, task))

    def task(self, task: TaskRef) -> tuple[RepoRef, str, str]:
        """(repo, checkout, workspace path) for a task, everything validated."""
        check_name(task.name, "task name")
        repo, checkout = self.repo(task.repo)
        check_branch(task.branch)
        if task.base is not None:
            check_branch(task.base, "base branch")
        return repo, checkout, self.workspace(repo.name, task.name)

    def make_root(self) -> None:
        """Create the workspace root private to the lane user (0700) if it does not exist; an
        existing one is left as its owner set it."""
        if not os.path.isdir(self.root):
            os.makedirs(os.path.dirname(self.root), exist_ok=True)
            with contextlib.suppress(FileExistsError):
                os.mkdir(self.root, 0o700)

    def runs_root(self) -> str:
        return os.path.join(self.root, RUNS_DIR)

    def run_dir(self, task: str, attempt: int, iteration: int) -> str:
        check_name(task, "task name")
        check_counter(attempt, "attempt")
        check_counter(iteration, "iteration")
        return self.contained(os.path.join(self.runs_root(), task, f"{attempt}.{iteration}"))


def parse_run_key(key: str) -> tuple[str, int, int]:
    """``task/attempt.iteration`` → (task, attempt, iteration)."""
    m = RUN_KEY.match(key)
    if not m:
        raise NodeError(
            f"run {key!r} is not of the form task/attempt.iteration (e.g. fix-login/1.2)"
        )
    return m.group(1), int(m.group(3)), int(m.group(4))
