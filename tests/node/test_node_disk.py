"""A start that meets a full or read-only disk in the lane: the failure names the path and, for a
full disk, the space left there; a full disk passes (temporary), a read-only one does not."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from node_support import Env

from reconciler.protocol import RunObs


@contextmanager
def tmpfs(where: Path, options: str) -> Iterator[Path]:
    """A small tmpfs mounted at ``where`` for the block; skipped where mounting is not allowed."""
    where.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {proc.stderr}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def fill(directory: Path) -> None:
    """Write until the file system is full."""
    with open(directory / "ballast", "wb", buffering=0) as out:
        while True:
            try:
                out.write(b"\0" * 65536)
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    return
                raise


def test_a_full_disk_fails_the_start_naming_the_path_and_the_space_left(env: Env) -> None:
    agent = env.agent("print('DONE')")
    env.prepare("full")
    runs = env.root / ".runs"
    with tmpfs(runs, "size=256k") as mounted:
        fill(mounted)
        response = env.respond(env.start_request("full", agent))
        assert not response.ok and response.failure is not None
        message = response.failure.error
        assert "No space left on device" in message, message
        assert str(runs / "full" / "1.1") in message, message  # the file it could not write
        assert f"0.0 B free on {runs / 'full' / '1.1'}" in message, message
        assert "free some space there" in message
        assert response.failure.temporary  # a later pass may just succeed
        (mounted / "ballast").unlink()
        # the leftover run directory does not stand in the way of the start once space is back
        run = RunObs.model_validate(env.call(env.start_request("full", agent)))
        assert env.wait_exit(run).exit_code == 0


def test_a_read_only_disk_fails_the_start_for_good(env: Env) -> None:
    agent = env.agent("print('DONE')")
    env.prepare("ro")
    runs = env.root / ".runs"
    with tmpfs(runs, "size=256k,ro"):
        response = env.respond(env.start_request("ro", agent))
    assert not response.ok and response.failure is not None
    assert "Read-only file system" in response.failure.error
    assert "check permissions and free space" in response.failure.error
    assert not response.failure.temporary  # nobody remounts it by waiting: the attempt counts
    assert not os.path.ismount(runs)
