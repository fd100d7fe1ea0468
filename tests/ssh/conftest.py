"""Fixtures for the SSH lane tests: a throwaway login user with a git checkout in its home, a real
``sshd`` on 127.0.0.1 letting only that user in, and the reconciler's side (key, known hosts,
manifests) under the test's temporary directory, which is also HOME.

The user and the server live for the test session (per worker under xdist) and are removed and
stopped at its end; tests that need their own server (stopping it) start one and stop it. The
lanes' node sessions are closed after each test.
Modules that need root and sshd call ``require_root_and_sshd()`` first, so they skip with the
reason where those are missing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.lanes import close_sessions
from tests.ssh.ssh_support import (
    Installed,
    Side,
    Sshd,
    create_user,
    install_reconciler,
    make_remote_repo,
)
from tests.support.linux_users import User, remove_user


@pytest.fixture(autouse=True)
def sessions_closed() -> Iterator[None]:
    """Each test's lane sessions end with it: the next test's nodes are its own."""
    yield
    close_sessions()


@pytest.fixture(scope="session")
def lane_user() -> Iterator[User]:
    user = create_user()
    try:
        yield user
    finally:
        remove_user(user)


@pytest.fixture(scope="session")
def installed(lane_user: User) -> Installed:
    return install_reconciler(lane_user)


@pytest.fixture(scope="session")
def remote_checkout(lane_user: User) -> Path:
    return make_remote_repo(lane_user)


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory, lane_user: User) -> Iterator[Sshd]:
    server = Sshd(tmp_path_factory.mktemp("sshd"), lane_user).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def side(
    tmp_path: Path, lane_user: User, sshd: Sshd, installed: Installed, remote_checkout: Path
) -> Side:
    return Side(root=tmp_path, user=lane_user, sshd=sshd, installed=installed)
