"""Shared fixtures for the node tests: real git repositories and real processes in tmp_path.

Every test runs with HOME pointing into its tmp_path, so nothing can touch the real home.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.protocol import LaneRef, RepoRef
from tests.node.node_support import Env, kill_leftover_runs
from tests.support.git import commit, git


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
