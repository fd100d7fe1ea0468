"""One registry of agent kinds: the node's plugins are the kinds the manifests accept, and the
generic machinery (meter, render, tally, pricing) names none of them."""

from __future__ import annotations

import ast
import typing
from pathlib import Path

import pytest

from reconciler.manifests.models import DEFAULT_COMMITS, AgentSpec
from reconciler.node.agents import ADAPTERS
from reconciler.protocol import AgentRef


def literal_values(annotation: object) -> set[str]:
    return {str(value) for value in typing.get_args(annotation)}


def test_the_node_knows_exactly_the_kinds_the_manifests_accept() -> None:
    assert set(ADAPTERS) == literal_values(AgentSpec.model_fields["kind"].annotation)
    assert set(ADAPTERS) == literal_values(AgentRef.model_fields["kind"].annotation)
    # a per-kind default of the manifests is for a kind that exists
    assert set(DEFAULT_COMMITS) <= set(ADAPTERS)


@pytest.mark.parametrize("kind", sorted(ADAPTERS))
def test_a_plugins_tally_is_of_its_own_kind(kind: str) -> None:
    # the kind in meter.json tells a tally of another kind (read again from the start) apart
    model = ADAPTERS[kind].tally
    if model is not None:
        assert model().kind == kind
        assert model.model_validate({"kind": kind}).kind == kind


SHARED = ["__init__.py", "meter.py", "render.py", "tally.py", "values.py", "pricing.py"]


def kinds_decided_on(tree: ast.AST) -> set[str]:
    """The kind names ``tree`` compares with (``kind == "x"``, ``kind in ("x", "y")``) or keys
    a dict by: where code would treat a kind specially."""
    found: set[object] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for side in [node.left, *node.comparators]:
                found |= {c.value for c in ast.walk(side) if isinstance(c, ast.Constant)}
        elif isinstance(node, ast.Dict):
            found |= {k.value for k in node.keys if isinstance(k, ast.Constant)}
    return {str(value) for value in found if value in ADAPTERS}


@pytest.mark.parametrize("module", SHARED)
def test_the_shared_machinery_treats_no_kind_specially(module: str) -> None:
    path = Path(__file__).parents[2] / "reconciler" / "node" / "agents" / module
    tree = ast.parse(path.read_text())
    if module == "__init__.py":  # the registry is the one place that lists the kinds
        registry = [
            node
            for node in tree.body
            if isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and node.target.id == "ADAPTERS"
        ]
        assert len(registry) == 1
        tree.body.remove(registry[0])
    named = kinds_decided_on(tree)
    assert named == set(), f"{module} decides on kinds {sorted(named)}: ask the plugin instead"
