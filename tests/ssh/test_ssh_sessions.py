"""Node sessions of real lanes: a local user's (``setpriv``) and an ssh lane's (the forced,
pinned node behind the loopback sshd), the same user and checkout both ways.

- a lane's batches are served by one node process, batch after batch;
- a node killed while its session idles is replaced, and the next batch is served;
- a node that dies while serving a batch fails that batch (the lane is unavailable), and the
  batch after it is served by a new one;
- closing the lane's sessions leaves no node running.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from reconciler.lanes import LaneUnavailable, lane_ref, local_user, process
from reconciler.lanes.local_user import LocalUserTransport
from reconciler.lanes.ssh import SshTransport, authorized_keys_line, ensure_key
from reconciler.manifests.models import LaneSpec
from reconciler.protocol import Batch, ObserveRequest, PrepareWorkspaceRequest, TaskRef
from tests.ssh.ssh_support import (
    LANE,
    Side,
    _descendants,
    install_authorized_keys,
    make_remote_repo,
    require_root_and_sshd,
    running,
)
from tests.support.linux_users import User
from tests.support.waiting import exited, wait_for

require_root_and_sshd()


@dataclass
class Lane:
    transport: LocalUserTransport | SshTransport
    spec: LaneSpec
    user: User
    home: Path

    def observe(self) -> Batch:
        return Batch(requests=[ObserveRequest(lane=lane_ref(LANE, self.spec))])

    def prepare(self, task: str) -> Batch:
        ref = TaskRef(name=task, repo="app", base="main", branch=f"agent/{task}")
        return Batch(requests=[PrepareWorkspaceRequest(lane=lane_ref(LANE, self.spec), task=ref)])

    def served(self, batch: Batch) -> None:
        result = self.transport.exchange(batch)
        assert [r.ok for r in result.responses] == [True] * len(batch.requests), result

    def session(self) -> int:
        """The pid of the lane's one idle session (setpriv's node, or the ssh client)."""
        (pid,) = process.SESSIONS.idle(self.transport_argv())
        return pid

    def transport_argv(self) -> list[str]:
        return self.transport.argv()


def nodes(user: User) -> list[int]:
    """The ``reconciler node`` processes running as ``user``."""
    found = []
    for entry in os.listdir("/proc"):
        with contextlib.suppress(OSError):
            if not entry.isdigit() or os.stat(f"/proc/{entry}").st_uid != user.uid:
                continue
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            if b"node" in argv and running(int(entry)):
                found.append(int(entry))
    return found


@pytest.fixture(params=["local user", "ssh"])
def lane(
    request: pytest.FixtureRequest, side: Side, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Lane]:
    """The lane both ways; its repository runs a hook on a new worktree that says it started
    (a file named after the task) and then waits for its node to be killed."""
    wait_for(lambda: not nodes(side.user), "the nodes of earlier tests to exit")
    home = side.user.home
    tag = f"sessions-{secrets.token_hex(3)}"  # its own checkout and worktrees: none left to others
    make_remote_repo(side.user, tag)
    hooks = {"afterCreate": ["sh", "-c", f'touch {home}/started-"$RECONCILER_TASK"; sleep 300']}
    repos = [{"name": "app", "checkout": f"{home}/src/{tag}", "hooks": hooks}]
    root = f"{home}/lanes/{tag}"
    if request.param == "ssh":
        spec: dict[str, Any] = {**side.spec(), "workspaceRoot": root, "repos": repos}
        lane_spec = LaneSpec.model_validate(spec)
        key = ensure_key(str(side.identity)).public
        install_authorized_keys(side.user, authorized_keys_line(LANE, lane_spec, key))
        side.trust()
        transport: LocalUserTransport | SshTransport = SshTransport(LANE, lane_spec)
    else:
        monkeypatch.setattr(local_user, "PYTHON", side.installed.python)
        spec = {"user": side.user.name, "workspaceRoot": root, "repos": repos}
        lane_spec = LaneSpec.model_validate(spec)
        transport = LocalUserTransport(LANE, side.user.name)
    made = Lane(transport, lane_spec, side.user, home)
    try:
        yield made
    finally:
        transport.close()
        wait_for(lambda: not nodes(side.user), "the lane's nodes to exit")


def test_a_lanes_batches_are_served_by_one_node(lane: Lane) -> None:
    lane.served(lane.observe())
    (node,) = nodes(lane.user)
    session = lane.session()
    lane.served(lane.observe())
    lane.served(lane.observe())
    assert nodes(lane.user) == [node]
    assert lane.session() == session


def test_a_node_killed_while_idle_is_replaced_and_the_next_batch_served(lane: Lane) -> None:
    lane.served(lane.observe())
    (node,) = nodes(lane.user)
    session = lane.session()
    os.kill(node, signal.SIGKILL)
    wait_for(lambda: exited(session), "the session to notice its node is gone")
    lane.served(lane.observe())
    (fresh,) = nodes(lane.user)
    assert fresh != node


def test_a_node_that_dies_mid_batch_fails_that_batch_and_the_next_is_served(lane: Lane) -> None:
    lane.served(lane.observe())
    (node,) = nodes(lane.user)
    task = f"t{secrets.token_hex(3)}"
    failed: list[BaseException] = []

    def send() -> None:
        try:
            lane.served(lane.prepare(task))
        except BaseException as exc:
            failed.append(exc)

    sender = threading.Thread(target=send)
    sender.start()
    started = lane.home / f"started-{task}"
    wait_for(started.exists, "the batch's hook to start")
    hook = _descendants(node)
    os.kill(node, signal.SIGKILL)
    for pid in hook:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    sender.join(timeout=120)
    assert not sender.is_alive()
    (error,) = failed
    assert isinstance(error, LaneUnavailable), error
    assert f"lane {LANE}:" in str(error)
    lane.served(lane.observe())
    (fresh,) = nodes(lane.user)
    assert fresh != node


def test_closing_the_lane_leaves_no_node_running(lane: Lane) -> None:
    lane.served(lane.observe())
    assert nodes(lane.user)
    lane.transport.close()
    assert process.SESSIONS.idle(lane.transport_argv()) == []
    wait_for(lambda: not nodes(lane.user), "the node to see EOF and exit")


def test_every_batch_of_a_session_is_held_to_the_pinned_lane(side: Side) -> None:
    """One ssh session, one node: a batch for the lane as authorized is served, a batch for the
    same lane name with another workspace root and token file is refused request by request, and
    the session serves the authorized lane again afterwards."""
    wait_for(lambda: not nodes(side.user), "the nodes of earlier tests to exit")
    spec = side.lane_spec()
    key = ensure_key(str(side.identity)).public
    install_authorized_keys(side.user, authorized_keys_line(LANE, spec, key))
    side.trust()
    transport = SshTransport(LANE, spec)
    moved = {**side.spec(), "workspaceRoot": "/"}
    moved["credentials"] = {"github": f"{side.user.home}/.ssh/id_ed25519"}
    lanes = {
        "pinned": Batch(requests=[ObserveRequest(lane=lane_ref(LANE, spec))]),
        "moved": Batch(
            requests=[ObserveRequest(lane=lane_ref(LANE, LaneSpec.model_validate(moved)))]
        ),
    }
    try:
        assert all(r.ok for r in transport.exchange(lanes["pinned"]).responses)
        (session,) = process.SESSIONS.idle(transport.argv())
        (refused,) = transport.exchange(lanes["moved"]).responses
        assert not refused.ok and refused.failure is not None
        assert "refused" in refused.failure.error and "keys authorize" in refused.failure.error
        assert all(r.ok for r in transport.exchange(lanes["pinned"]).responses)
        assert process.SESSIONS.idle(transport.argv()) == [session]
    finally:
        transport.close()
        wait_for(lambda: not nodes(side.user), "the node to exit")
