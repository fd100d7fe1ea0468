"""A start that meets a full or read-only disk in the lane: the failure names the path and, for a
full disk, the space left there; a full disk passes (temporary), a read-only one does not."""

from __future__ import annotations

import os

from reconciler.protocol import RunObs
from tests.node.node_support import Env
from tests.support.disks import fill, tmpfs


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
