"""Fixtures for the real agent CLIs: one lane user per test (removed with its home and whatever
it left running), the scripted model API on loopback, the pinned CLIs from the cache."""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

SECURITY = str(Path(__file__).parents[1] / "security")
if SECURITY not in sys.path:
    sys.path.append(SECURITY)

from egress import Egress  # noqa: E402
from linux_users import User, make_repo, remove_user, shared_python  # noqa: E402
from model_api import ModelServer  # noqa: E402
from real_support import Scenario, require_root  # noqa: E402
from security_support import Control, create_user  # noqa: E402

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
