"""SSH lanes against a real sshd on 127.0.0.1: batches round-trip, host keys are verified, the
forced command wins over whatever the client asks, ``from=`` is enforced, and a host that does not
answer makes the lane unavailable (its tasks ``unknown``)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from reconciler.lanes import (
    InProcessTransport,
    LaneClient,
    LaneUnavailable,
    lane_ref,
    transport_for,
)
from reconciler.lanes.ssh import SshTransport, authorized_keys_line, ensure_key
from reconciler.manifests.models import LaneSpec
from reconciler.protocol import (
    AgentRef,
    Batch,
    BatchResult,
    ObserveRequest,
    ObserveResult,
    PreflightRequest,
    PreflightResult,
    PrepareWorkspaceRequest,
    RunObs,
    StartRunRequest,
    TaskRef,
    WorkspaceResult,
    lane_pin,
)
from tests.ssh.ssh_support import (
    LANE,
    Side,
    Sshd,
    install_authorized_keys,
    require_root_and_sshd,
    sessions_ended,
)
from tests.support.waiting import wait_for

require_root_and_sshd()


def authorize(side: Side, **ssh: Any) -> str:
    """Create the reconciler's key and install its authorized_keys line for the lane user."""
    spec = side.lane_spec(**ssh)
    line = authorized_keys_line(LANE, spec, ensure_key(str(side.identity)).public)
    install_authorized_keys(side.user, line)
    return line


def lane_batch(side: Side, spec: LaneSpec | None = None) -> Batch:
    ref = lane_ref(LANE, spec or side.lane_spec())
    task = TaskRef(name="roundtrip", repo="app", base="main", branch="agent/roundtrip")
    return Batch(
        requests=[
            PreflightRequest(lane=ref, bases={"app": ["main"]}),
            PrepareWorkspaceRequest(lane=ref, task=task),
            ObserveRequest(lane=ref),
        ]
    )


def comparable(result: BatchResult) -> list[dict[str, Any]]:
    """The responses without what legitimately differs between two calls: the lane's clock
    and the free disk space."""
    out = []
    for response in result.responses:
        data = response.model_dump(mode="json")
        res = data.get("result") or {}
        res.pop("now", None)
        for check in res.get("checks", []):
            if check["name"] == "disk":
                check["detail"] = "…"
        out.append(data)
    return out


def in_process_as_user(side: Side, batch: Batch) -> BatchResult:
    """The in-process transport, run by the lane user on this machine (no ssh involved)."""
    code = (
        "from reconciler.lanes import InProcessTransport; "
        "from reconciler.protocol import Batch; "
        "b = Batch.model_validate_json(sys.stdin.read()); "
        "print(InProcessTransport().exchange(b).model_dump_json())"
    )
    proc = side.user.run(side.installed.python_code(code), input=batch.model_dump_json())
    return BatchResult.model_validate_json(proc.stdout)


# ------------------------------------------------------------------------------------ (a)


def test_a_batch_round_trips_over_ssh_as_the_lane_user(side: Side) -> None:
    authorize(side)
    side.trust()
    spec = side.lane_spec()
    transport = transport_for(LANE, spec)
    assert isinstance(transport, SshTransport)
    batch = lane_batch(side)
    # Nothing of the request is on the command line: only fixed words.
    argv = transport.argv()
    assert argv[-2:] == [side.installed.command, "node"]
    assert not any(side.user.name + "/worktrees" in a or "roundtrip" in a for a in argv)

    over_ssh = transport.exchange(batch)

    assert [r.ok for r in over_ssh.responses] == [True, True, True], over_ssh
    preflight = PreflightResult.model_validate(over_ssh.responses[0].result)
    checks = {c.name: c.ok for c in preflight.checks}
    assert checks["checkout"] and checks["base-branch"] and checks["workspace-writable"]
    # The worktree was made by the lane user, in its home: the node ran as that user.
    workspace = side.user.home / "worktrees" / "app" / "roundtrip"
    assert over_ssh.responses[1].result == {"path": str(workspace), "created": True}
    assert workspace.stat().st_uid == side.user.uid
    observed = ObserveResult.model_validate(over_ssh.responses[2].result)
    assert [w.branch for w in observed.repos["app"].worktrees] == ["agent/roundtrip"]

    # The same batch again, now that the workspace exists, in-process as the lane user and
    # over ssh (through the lane client): the same answers.
    local = in_process_as_user(side, batch)
    assert local.responses[1].result == {"path": str(workspace), "created": False}
    again = BatchResult(responses=LaneClient(LANE, spec).call(batch.requests))
    assert comparable(again) == comparable(local)
    # …and the in-process transport run as root is a different answer (root's git refuses the
    # user's checkout), so the equality above is not trivial.
    as_root = InProcessTransport().exchange(batch)
    assert comparable(as_root) != comparable(again)


# ------------------------------------------------------------------------------------ (b)


def test_an_unknown_host_key_is_never_trusted(side: Side) -> None:
    authorize(side)
    transport = SshTransport(LANE, side.lane_spec())
    batch = lane_batch(side)
    for _ in range(2):  # no trust on first use: the second try fails the same way
        with pytest.raises(LaneUnavailable) as info:
            transport.exchange(batch)
        message = str(info.value)
        assert f"`reconciler keys scan {LANE}`" in message, message
        assert str(side.known_hosts) in message and "nothing was trusted" in message
    assert not side.known_hosts.exists()
    assert not (Path(os.environ["HOME"]) / ".ssh").exists()


def test_a_changed_host_key_is_refused_with_the_fix(side: Side, tmp_path: Path) -> None:
    authorize(side)
    other = tmp_path / "other"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)],
        check=True,
        capture_output=True,
    )
    kind, key = other.with_suffix(".pub").read_text().split()[:2]
    side.known_hosts.parent.mkdir(parents=True, exist_ok=True)
    side.known_hosts.write_text(f"[127.0.0.1]:{side.sshd.port} {kind} {key}\n")
    before = side.known_hosts.read_text()
    with pytest.raises(LaneUnavailable) as info:
        SshTransport(LANE, side.lane_spec()).exchange(lane_batch(side))
    message = str(info.value)
    assert "is not the one in" in message and "--replace" in message, message
    assert side.known_hosts.read_text() == before


# ------------------------------------------------------------------------------------ (c)


def test_keys_authorize_line_forces_the_node_whatever_the_client_asks(side: Side) -> None:
    side.control(side.spec())
    proc = side.cli("keys", "authorize", LANE)
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.strip()
    assert "\n" not in line
    pin = lane_pin(lane_ref(LANE, side.lane_spec()))
    assert line.startswith(f'restrict,command="{side.installed.command} node --pin {pin}" ssh-')
    assert line.endswith(f" reconciler:{LANE}")
    assert str(side.identity) in proc.stderr and "created now" in proc.stderr
    assert side.identity.stat().st_mode & 0o777 == 0o600
    again = side.cli("keys", "authorize", LANE)
    assert again.stdout == proc.stdout and "existing" in again.stderr  # the same key, kept
    install_authorized_keys(side.user, line)
    side.trust()
    transport = SshTransport(LANE, side.lane_spec())
    batch = lane_batch(side)
    expected = len(batch.requests)

    # The client asks for `id`: what answers is the node, reading the batch from stdin.
    asked_id = ssh(transport, ["id"], batch.model_dump_json())
    assert asked_id.returncode == 0, asked_id.stderr
    assert "uid=" not in asked_id.stdout
    answered = BatchResult.model_validate_json(asked_id.stdout)
    assert len(answered.responses) == expected and answered.responses[0].ok

    # Asking for a file outside the lane, or for a shell command, gets the node too.
    marker = side.user.home / "pwned"
    for command in (["cat", "/etc/shadow"], ["touch", str(marker)], [f"touch {marker}; id"]):
        refused = ssh(transport, command, "")
        assert refused.returncode == 2, (command, refused.stdout, refused.stderr)
        assert "reconciler node: the batch is not valid JSON" in refused.stderr
        assert refused.stdout == "" and "root:" not in refused.stderr
    assert not marker.exists()

    # The node refuses an operation that is not in its list.
    ref = json.loads(batch.requests[0].model_dump_json())["lane"]
    odd = json.dumps({"requests": [{"op": "shell", "lane": ref, "argv": ["id"]}]})
    result = BatchResult.model_validate_json(ssh(transport, ["id"], odd).stdout)
    (response,) = result.responses
    assert not response.ok and response.failure is not None
    assert "request 0 (shell) is invalid" in response.failure.error

    # The key serves this lane as authorized, not another root, checkout or token file.
    moved = side.spec()
    moved["workspaceRoot"] = "/"
    moved["credentials"] = {"github": f"{side.user.home}/.ssh/id_ed25519"}
    elsewhere = SshTransport(LANE, LaneSpec.model_validate(moved))
    answered = elsewhere.exchange(lane_batch(side, LaneSpec.model_validate(moved)))
    for response in answered.responses:
        assert not response.ok and response.failure is not None
        assert "refused" in response.failure.error and "keys authorize" in response.failure.error

    # restrict: no pty even when asked for one.
    pty = subprocess.run(
        [*transport.argv(["id"])[:1], "-tt", *transport.argv(["id"])[1:]],
        input="",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "uid=" not in pty.stdout


def ssh(transport: SshTransport, remote: list[str], stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        transport.argv(remote), input=stdin, capture_output=True, text=True, timeout=60, check=False
    )


# ------------------------------------------------------------------------------------ (d)


def test_from_restricts_where_the_key_may_log_in_from(side: Side) -> None:
    side.trust()
    batch = lane_batch(side)
    elsewhere: dict[str, Any] = {"from": "10.9.9.9"}  # `from` is a keyword
    line = authorize(side, **elsewhere)
    assert ',from="10.9.9.9" ssh-ed25519 ' in line
    spec = side.lane_spec(**elsewhere)
    with pytest.raises(LaneUnavailable) as info:
        SshTransport(LANE, spec).exchange(batch)
    message = str(info.value)
    assert "refused the key" in message and f"`reconciler keys authorize {LANE}`" in message
    # The same key with the right address gets in: from= was the reason.
    here: dict[str, Any] = {"from": "127.0.0.1"}
    authorize(side, **here)
    result = SshTransport(LANE, side.lane_spec(**here)).exchange(batch)
    assert all(r.ok for r in result.responses)


# ------------------------------------------------------------------------------------ (e)


def test_a_stopped_sshd_makes_the_lane_unavailable_and_its_tasks_unknown(
    side: Side, tmp_path: Path
) -> None:
    own = Sshd(tmp_path / "sshd", side.user).start()
    try:
        authorize(side)
        side.trust(own)
        spec = side.spec(own)
        side.control(spec, task=True)
        transport = SshTransport(LANE, side.lane_spec(own))
        batch = lane_batch(side)
        assert all(r.ok for r in transport.exchange(batch).responses)
        before = side.cli("status", "--json")
        assert before.returncode == 0, before.stderr
        (task,) = json.loads(before.stdout)["tasks"]
        assert task["phase"] != "unknown", task
    finally:
        own.stop()
    sessions_ended(transport)  # the idle session's connection went with sshd
    with pytest.raises(LaneUnavailable) as info:
        transport.exchange(batch)
    message = str(info.value)
    assert f"cannot reach {side.user.name}@127.0.0.1:{own.port} over ssh" in message, message
    assert "Connection refused" in message
    status = side.cli("status", "--json")
    assert status.returncode == 0, status.stderr
    (task,) = json.loads(status.stdout)["tasks"]
    assert task["phase"] == "unknown" and "cannot reach" in task["reason"], task
    plan = side.cli("plan", "--json")
    assert json.loads(plan.stdout)["actions"] == []  # nothing is started because of it


def test_a_host_that_does_not_answer_times_out(side: Side) -> None:
    authorize(side)
    with socket.socket() as silent:  # accepts connections (the kernel does) and never speaks
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        spec = side.spec(timeout="1s")
        spec["host"] = f"ssh://{side.user.name}@127.0.0.1:{port}"
        transport = SshTransport(LANE, LaneSpec.model_validate(spec))
        started = time.monotonic()
        with pytest.raises(LaneUnavailable) as info:
            transport.exchange(lane_batch(side))
        assert time.monotonic() - started < 5
    assert "did not answer within 1s" in str(info.value)


# ------------------------------------------------------------------------------------ scan


def test_keys_scan_shows_the_fingerprint_and_trusts_only_when_told(side: Side) -> None:
    side.control(side.spec())
    fingerprint = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(side.sshd.host_key.with_suffix(".pub"))],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()[1]
    asked = side.cli("keys", "scan", LANE)  # not a terminal, no --yes: nothing is trusted
    assert asked.returncode == 1
    assert fingerprint in asked.stdout and "needs --yes" in asked.stderr
    assert not side.known_hosts.exists()

    trusted = side.cli("keys", "scan", LANE, "--yes")
    assert trusted.returncode == 0, trusted.stderr
    assert fingerprint in trusted.stdout and "verifying them is your job" in trusted.stdout
    kind, key = side.sshd.public_host_key()
    assert side.known_hosts.read_text() == f"[127.0.0.1]:{side.sshd.port} {kind} {key}\n"
    assert side.known_hosts.stat().st_mode & 0o777 == 0o600
    authorize(side)
    assert all(
        r.ok for r in SshTransport(LANE, side.lane_spec()).exchange(lane_batch(side)).responses
    )

    same = side.cli("keys", "scan", LANE, "--yes")
    assert same.returncode == 0 and "nothing changed" in same.stdout

    # Another key already trusted for the host: refused unless --replace.
    side.known_hosts.write_text(
        f"[127.0.0.1]:{side.sshd.port} ssh-ed25519 "
        "AAAAC3NzaC1lZDI1NTE5AAAAIKh9bH2J0vX8zJ3qQ5a8bqGv2jOPGxZ7aJzW6Xq1V4cB\n"
        "other.example ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKh9bH2J0vX8zJ3qQ5a8bqGv2jOPGxZ7aJzW6Xq1V4cB\n"
    )
    changed = side.cli("keys", "scan", LANE, "--yes")
    assert changed.returncode == 1 and "--replace" in changed.stderr
    replaced = side.cli("keys", "scan", LANE, "--yes", "--replace")
    assert replaced.returncode == 0, replaced.stderr
    lines = side.known_hosts.read_text().splitlines()
    assert lines[0].startswith("other.example ")  # other hosts' keys are left alone
    assert lines[1:] == [f"[127.0.0.1]:{side.sshd.port} {kind} {key}"]


# ------------------------------------------------------------------------------------ runs

WAIT_FOR_RELEASE = "while [ ! -e release ]; do sleep 0.1; done; echo DONE"


def test_a_run_started_over_ssh_outlives_the_session_and_is_observed_to_its_end(
    side: Side,
) -> None:
    authorize(side)
    side.trust()
    spec = side.lane_spec()
    ref = lane_ref(LANE, spec)
    task = TaskRef(name="detached", repo="app", base="main", branch="agent/detached")
    transport = SshTransport(LANE, spec)
    prepared = transport.exchange(Batch(requests=[PrepareWorkspaceRequest(lane=ref, task=task)]))
    assert prepared.responses[0].ok, prepared
    start = StartRunRequest(
        lane=ref,
        task=task,
        attempt=1,
        iteration=1,
        generation="g1",
        prompt="hello",
        # The agent ends only once released, after the session that started it returned.
        agent=AgentRef(kind="command", command=["/bin/sh", "-c", WAIT_FOR_RELEASE]),
    )
    started = transport.exchange(Batch(requests=[start]))
    run = RunObs.model_validate(started.responses[0].result)
    assert run.alive and run.supervisor is not None
    # The session is closed; the run goes on, as the lane user.
    observed = ObserveResult.model_validate(
        transport.exchange(Batch(requests=[ObserveRequest(lane=ref)])).responses[0].result
    )
    (seen,) = [r for r in observed.runs if r.task == "detached"]
    assert seen.alive and seen.exit is None
    assert Path(seen.run_dir).stat().st_uid == side.user.uid
    workspace = WorkspaceResult.model_validate(prepared.responses[0].result).path
    (Path(workspace) / "release").touch()

    def ended() -> RunObs | None:
        inspect = ObserveRequest(lane=ref, inspect=["detached/1.1"])
        result = transport.exchange(Batch(requests=[inspect])).responses[0].result
        (seen,) = [r for r in ObserveResult.model_validate(result).runs if r.task == "detached"]
        return seen if seen.exit is not None else None

    seen = wait_for(ended, "the detached run's end", timeout=30, every=0.5)
    assert seen.exit is not None and seen.exit.exit_code == 0, seen
    assert seen.result is not None and seen.result.final_text == "DONE\n"
