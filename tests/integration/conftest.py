"""Fixtures for end-to-end tests: a fresh world per test, and no agent left running after it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.world import World


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    assert os.path.expanduser("~") == str(home)
    return home


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path).setup()
    yield w
    w.kill_agents()
