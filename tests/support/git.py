"""git for setting up tests: one committer identity, and a failure that quotes git's message.

Agent scripts that commit inside a worktree carry ``GIT_ID`` in their source (they run as
their own process, often as another user, and cannot import this module).
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

GIT_ID = ["-c", "user.name=t", "-c", "user.email=t@example.invalid"]


def git(cwd: Path | str, *args: str) -> str:
    """Run git in ``cwd`` and return its output without the surrounding white space; a failure
    fails the test with git's own message."""
    proc = subprocess.run(
        ["git", "-C", str(cwd), *GIT_ID, *args], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, f"git {' '.join(args)} in {cwd} failed: {proc.stderr}"
    return proc.stdout.strip()


def commit(cwd: Path | str, name: str, content: str, message: str | None = None) -> str:
    """Write one file and commit it; the new revision."""
    Path(cwd, name).write_text(content)
    git(cwd, "add", name)
    git(cwd, "commit", "-q", "-m", message or f"change {name}")
    return git(cwd, "rev-parse", "HEAD")


def commit_all(repo: Path | str, message: str) -> str:
    """Commit everything in the work tree, even nothing; the new revision."""
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "--allow-empty", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def commit_manifests(repo: Path, docs: Sequence[str], message: str = "manifests") -> str:
    """Make ``docs`` the control repo's only manifests (the repo is made on first use) and
    commit them; the new revision."""
    if not (repo / ".git").exists():
        repo.mkdir(parents=True, exist_ok=True)
        git(repo, "init", "-q", "-b", "main")
    (repo / "manifests").mkdir(exist_ok=True)
    (repo / "manifests" / "all.yaml").write_text("\n---\n".join(docs) + "\n")
    return commit_all(repo, message)
