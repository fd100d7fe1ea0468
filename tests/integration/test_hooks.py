"""The pre-receive hook: a push of the followed branch whose manifests do not validate is
refused, with every error on the pusher's terminal; other branches and good pushes go in."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.integration.world import World, yaml_doc
from tests.support.git import git


def push(clone: Path, ref: str = "HEAD") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", "push", "origin", ref], cwd=clone, capture_output=True, text=True, check=False
    )


def test_a_push_with_broken_manifests_is_refused_with_every_error(
    world: World, tmp_path: Path
) -> None:
    world.lane("web")
    world.task("a", "web", "succeed")
    world.commit()
    bare = tmp_path / "control.git"
    git(tmp_path, "clone", "-q", "--bare", str(world.control), str(bare))
    installed = world.cli("hook", "install", "--pre-receive", RECONCILER_CONTROL=str(bare))
    assert installed.returncode == 0, installed.stderr
    assert "pre-receive" in installed.stdout
    assert (bare / "hooks" / "pre-receive").stat().st_mode & 0o111
    clone = tmp_path / "operator"
    git(tmp_path, "clone", "-q", str(bare), str(clone))
    before = git(bare, "rev-parse", "HEAD").strip()
    tasks = clone / "manifests" / "tasks"
    # two problems in one task: a field of the wrong type, and an agent that does not exist
    broken = dict(world.tasks["a"], agent="fakee", maxIterations="three")
    (tasks / "b.yaml").write_text(yaml_doc("Task", "b", broken) + "\n")
    git(clone, "add", "-A")
    git(clone, "commit", "-qm", "broken")
    refused = push(clone)
    assert refused.returncode != 0
    assert "reconciler: refusing refs/heads/main at" in refused.stderr
    assert "remote: manifests/tasks/b.yaml:" in refused.stderr
    assert "maxIterations" in refused.stderr
    assert "task 'b' refers to unknown agent 'fakee'" in refused.stderr
    assert git(bare, "rev-parse", "HEAD").strip() == before  # nothing went in
    # another branch is not what the reconciler reads: it goes in as it is
    assert push(clone, "HEAD:refs/heads/wip").returncode == 0
    # fixed: accepted, and a dependsOn naming no task is a warning the pusher sees
    waiting = dict(world.tasks["a"], dependsOn=["aa"])
    (tasks / "b.yaml").write_text(yaml_doc("Task", "b", waiting) + "\n")
    git(clone, "add", "-A")
    git(clone, "commit", "-qm", "fixed")
    accepted = push(clone)
    assert accepted.returncode == 0, accepted.stderr
    assert "reconciler: warning: manifests/tasks/b.yaml:" in accepted.stderr
    assert "did you mean 'a'?" in accepted.stderr
    assert git(bare, "rev-parse", "HEAD").strip() == git(clone, "rev-parse", "HEAD").strip()
