"""Fixtures for end-to-end tests: a fresh world per test, and no agent left running after it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.world import World


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path).setup()
    yield w
    w.kill_agents()
