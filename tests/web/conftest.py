"""A world with tasks in several phases, converged once for the module's tests."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.world import World, yaml_doc
from tests.support.git import commit_all

# A credential shape and the listener's own token, in a prompt that describe shows: neither may
# leave the server.
SECRET_SHAPE = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"


def build(world: World, token: str) -> World:
    world.lane("web", slots=2)
    world.lane("api", slots=1)
    world.task("a", "web", "succeed", prompt=f"Do a. Use {SECRET_SHAPE} and {token}.")
    world.task("b", "web", "succeed")
    world.task("c", "api", "exit-3", maxAttempts=1, maxIterations=1)
    world.commit()
    labelled = yaml_doc("Task", "d", {**world.tasks["b"], "prompt": "Do d."})
    doc = json.loads(labelled)
    doc["metadata"]["labels"] = {"team": "web", "tier": "one"}
    (world.control / "manifests" / "labelled.yaml").write_text(json.dumps(doc) + "\n", "utf-8")
    commit_all(world.control, "a labelled task")
    world.converge()
    return world


@pytest.fixture
def served_world(tmp_path: Path) -> Iterator[World]:
    from tests.web.support import TOKEN

    w = World(tmp_path).setup()
    yield build(w, TOKEN)
    w.kill_agents()
