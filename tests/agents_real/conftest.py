"""Fixtures for the real agent CLIs: one lane user per test (removed with its home and whatever
it left running), the scripted model API on loopback, the pinned CLIs from the cache."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agents_real.egress import Egress
from tests.agents_real.real_support import Scenario, require_root
from tests.security.security_support import Control, create_user
from tests.support.linux_users import User, make_repo, remove_user, shared_python
from tests.support.model_api import ModelServer

require_root()


@pytest.fixture
def lane_user() -> Iterator[User]:
    user = create_user()
    make_repo(user)
    try:
        yield user
    finally:
        remove_user(user)


@pytest.fixture
def model_api() -> Iterator[ModelServer]:
    with ModelServer() as api:
        yield api


@pytest.fixture
def scenario(lane_user: User, model_api: ModelServer, tmp_path: Path) -> Scenario:
    root = Path(tempfile.mkdtemp(prefix="control-", dir=tmp_path))
    return Scenario(Control(root, python=shared_python()), lane_user, model_api)


@pytest.fixture
def egress() -> Iterator[Egress]:
    """A proxy that lets nothing out and records what tried (put its env in the profile)."""
    with Egress() as out:
        yield out
