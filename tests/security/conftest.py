"""Fixtures for the security suite: throwaway lane users (removed with their homes and processes
at the end), a Python they can run, and a control repo driven through the real CLI as root."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.security.security_support import Control, create_user
from tests.support.linux_users import User, make_repo, remove_user, shared_python, shared_tempdir


@pytest.fixture(scope="session")
def python() -> str:
    return shared_python()


@pytest.fixture(scope="session")
def agents() -> Iterator[Path]:
    """A directory every lane user can read, for agent scripts (see ``agent_doc``)."""
    path = shared_tempdir("reconciler-agents-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def make_user() -> Iterator[Callable[[], User]]:
    """Lane users with an ``app`` repository (bare remote and clone) in their homes."""
    made: list[User] = []

    def make() -> User:
        user = create_user()
        made.append(user)
        make_repo(user)
        return user

    yield make
    for user in made:
        remove_user(user)


@pytest.fixture
def control(tmp_path: Path, python: str) -> Control:
    return Control(tmp_path, python=python)
