"""Shared fixtures for the node tests: real git repositories and real processes in tmp_path.

Every test runs with HOME pointing into its tmp_path, so nothing can touch the real home.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.protocol import LaneRef, RepoRef
from tests.node.node_support import Env, commit, git, kill_leftover_runs


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)  # as a careful admin sets a lane user's home (pre-flight checks it)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.delenv("GIT_DIR", raising=False)
    monkeypatch.delenv("GIT_WORK_TREE", raising=False)
    assert os.path.expanduser("~") == str(home)
    return home


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    origin = tmp_path / "origin.git"
    checkout = tmp_path / "src" / "webapp"
    seed = tmp_path / "seed"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(origin))
    git(tmp_path, "init", "-q", "-b", "main", str(seed))
    commit(seed, "README.md", "hello\n", "initial commit")
    git(seed, "push", "-q", str(origin), "main")
    git(tmp_path, "clone", "-q", str(origin), str(checkout))
    git(checkout, "config", "user.name", "Lane User")  # as the lane user's ~/.gitconfig would
    git(checkout, "config", "user.email", "lane@example.invalid")
    root = tmp_path / "worktrees"
    lane = LaneRef(
        name="webapp",
        workspace_root=str(root),
        repos=[RepoRef(name="webapp", checkout=str(checkout), forge="local")],
        env={"NODE_ENV": "test"},
    )
    yield Env(tmp=tmp_path, origin=origin, checkout=checkout, root=root, lane=lane)
    kill_leftover_runs(root)
