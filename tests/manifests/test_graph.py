"""The dependency graph alone: which waits go round, and at which tasks a cycle is reported."""

from __future__ import annotations

import pytest

from reconciler.manifests.graph import cycle_rings


@pytest.mark.parametrize(
    ("depends_on", "rings"),
    [
        ({}, []),
        ({"a": ["b"], "b": []}, []),
        ({"a": ["missing"]}, []),  # an unknown name is not an edge
        ({"a": ["a"]}, [["a", "a"]]),
        ({"a": ["b"], "b": ["a"], "c": ["a"]}, [["a", "b", "a"], ["b", "a", "b"]]),
        ({"b": ["c"], "c": ["a", "b"], "a": ["c"]}, [["a", "c", "a"], ["c", "a", "c"]]),
    ],
)
def test_each_task_of_a_cycle_is_given_its_ring(
    depends_on: dict[str, list[str]], rings: list[list[str]]
) -> None:
    assert list(cycle_rings(depends_on)) == rings


def test_a_long_cycle_is_reported_at_its_first_task_only() -> None:
    names = [f"t{i:02d}" for i in range(11)]
    depends_on = {name: [names[(i + 1) % len(names)]] for i, name in enumerate(names)}
    assert list(cycle_rings(depends_on)) == [[*names, "t00"]]
    ten = {name: [names[(i + 1) % 10]] for i, name in enumerate(names[:10])}
    assert len(list(cycle_rings(ten))) == 10
