"""The batch entry points: validation, isolation of failures, JSON in and out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.node.server import BatchError, handle, handle_json
from reconciler.protocol import (
    PROTOCOL_VERSION,
    Batch,
    BatchResult,
    ForgeListRequest,
    LaneRef,
    ObserveRequest,
    ObserveResult,
    PrepareWorkspaceRequest,
    ReadLogRequest,
    RepoRef,
    StopRunRequest,
    TaskRef,
)
from tests.node.node_support import Env


def failure_of(env: Env, req: object) -> str:
    response = env.respond(req)  # type: ignore[arg-type]
    assert not response.ok
    assert response.failure is not None
    assert "Traceback" not in response.failure.error
    return response.failure.error


@pytest.mark.parametrize(
    ("task", "message"),
    [
        (
            TaskRef(name="../escape", repo="webapp", base="main", branch="agent/x"),
            "not a valid name",
        ),
        (TaskRef(name="UPPER", repo="webapp", base="main", branch="agent/x"), "not a valid name"),
        (
            TaskRef(name="ok", repo="webapp", base="main", branch="--upload-pack=evil"),
            "not a usable git name",
        ),
        (TaskRef(name="ok", repo="webapp", base="../main", branch="agent/ok"), "base branch"),
        (TaskRef(name="ok", repo="other", base="main", branch="agent/ok"), "not one of lane"),
    ],
)
def test_bad_names_are_rejected(env: Env, task: TaskRef, message: str) -> None:
    error = failure_of(env, PrepareWorkspaceRequest(lane=env.lane, task=task))
    assert message in error
    assert not env.root.exists() or not any(env.root.rglob("*"))


def test_start_run_rejects_nul_bytes_and_bad_prompts(env: Env) -> None:
    env.prepare("nul")
    agent = env.agent("print(1)")
    bad_env = env.start_request("nul", agent, env={"X": "a\0b"})
    assert "not valid" in failure_of(env, bad_env)
    bad_check = env.start_request("nul", agent, checks=[["echo", "a\0b"]])
    assert "NUL" in failure_of(env, bad_check)
    surrogate = env.start_request("nul", agent, prompt="broken \ud800 text")
    assert "not valid Unicode" in failure_of(env, surrogate)
    assert not (env.root / ".runs" / "nul" / "1.1" / "pid.json").exists()


def test_paths_must_stay_under_the_workspace_root(env: Env) -> None:
    (env.root / "webapp").mkdir(parents=True)
    outside = env.tmp / "outside"
    outside.mkdir()
    os.symlink(outside, env.root / "webapp" / "sneaky")
    error = failure_of(env, PrepareWorkspaceRequest(lane=env.lane, task=env.task("sneaky")))
    assert "outside the workspace root" in error
    assert list(outside.iterdir()) == []


def test_one_failure_does_not_abort_the_batch(env: Env) -> None:
    batch = Batch(
        requests=[
            ForgeListRequest(lane=env.lane, repo="nope"),
            PrepareWorkspaceRequest(lane=env.lane, task=env.task("fine")),
            ReadLogRequest(lane=env.lane, task="missing", attempt=1, iteration=1),
            StopRunRequest(lane=env.lane, task="missing", attempt=1, iteration=1),
        ]
    )
    responses = handle(batch).responses
    assert [r.ok for r in responses] == [False, True, False, True]
    assert responses[0].failure is not None
    assert "not one of lane webapp's repos" in responses[0].failure.error
    assert responses[1].result == {"path": str(env.workspace("fine")), "created": True}


def test_handle_json_answers_invalid_requests_individually(env: Env) -> None:
    good = ForgeListRequest(lane=env.lane, repo="webapp").model_dump(mode="json")
    text = json.dumps(
        {
            "version": PROTOCOL_VERSION,
            "requests": [{"op": "start-run", "attempt": "x"}, {"op": "explode"}, good],
        }
    )
    result = BatchResult.model_validate_json(handle_json(text))
    first, second, third = result.responses
    assert not first.ok
    assert first.failure is not None
    assert first.failure.error.startswith("request 0 (start-run) is invalid")
    assert not second.ok
    assert third.ok
    assert third.result == {"prs": []}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[]", '"requests" list'),
        ('{"version": 99, "requests": []}', "protocol version 99"),
    ],
)
def test_unreadable_batches_raise(text: str, message: str) -> None:
    with pytest.raises(BatchError, match=message):
        handle_json(text)


def test_main_reads_stdin_and_writes_stdout(env: Env) -> None:
    batch = Batch(requests=[ForgeListRequest(lane=env.lane, repo="webapp")])
    code = "import sys\nfrom reconciler.node.server import main\nsys.exit(main())\n"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        input=batch.model_dump_json(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result = BatchResult.model_validate_json(proc.stdout)
    assert result.responses[0].ok
    bad = subprocess.run(
        [sys.executable, "-c", code], input="nope", capture_output=True, text=True, check=False
    )
    assert bad.returncode == 2
    assert "not valid JSON" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_observe_with_a_missing_checkout_reports_that_repo_only(env: Env) -> None:
    env.prepare("present")
    lane = LaneRef(
        name="webapp",
        workspace_root=str(env.root),
        repos=[
            *env.lane.repos,
            RepoRef(name="lost", checkout=str(env.tmp / "lost"), forge="local"),
        ],
    )
    env.prepare("present")
    req = ObserveRequest(lane=lane)
    result = ObserveResult.model_validate(env.call(req))
    assert result.repos["webapp"].ok
    assert result.repos["webapp"].branches == {
        "agent/present": result.repos["webapp"].branches["agent/present"]
    }
    lost = result.repos["lost"]
    assert not lost.ok
    assert lost.error is not None
    assert "does not exist" in lost.error
    assert lost.prs is None
    assert result.runs == []
    assert result.boot_id == Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def test_observe_rejects_a_malformed_inspect_key(env: Env) -> None:
    error = failure_of(env, ObserveRequest(lane=env.lane, inspect=["nope"]))
    assert "task/attempt.iteration" in error


def test_workspace_root_with_tilde_is_the_lane_users_home(env: Env, isolated_home: Path) -> None:
    lane = env.lane.model_copy(update={"workspace_root": "~/wt"})
    result = env.call(PrepareWorkspaceRequest(lane=lane, task=env.task("tilde")))
    assert result["path"] == str(isolated_home / "wt" / "webapp" / "tilde")


def test_a_pinned_node_serves_only_the_lane_it_was_authorized_for(env: Env) -> None:
    from reconciler.protocol import lane_pin

    pin = lane_pin(env.lane)
    batch = Batch(requests=[ObserveRequest(lane=env.lane)]).model_dump_json()
    (ok,) = BatchResult.model_validate_json(handle_json(batch, pin)).responses
    assert ok.ok
    # the lane env is not a bound: changing it keeps the pin
    same = env.lane.model_copy(update={"env": {"EXTRA": "1"}})
    assert lane_pin(same) == pin
    for change in (
        {"workspace_root": "/"},
        {"github_token_file": "~/.git-credentials"},
        {"repos": [RepoRef(name="webapp", checkout="/etc")]},
    ):
        moved = env.lane.model_copy(update=change)
        text = Batch(requests=[ObserveRequest(lane=moved)]).model_dump_json()
        (refused,) = BatchResult.model_validate_json(handle_json(text, pin)).responses
        assert not refused.ok and refused.failure is not None, change
        assert "keys authorize" in refused.failure.error
    assert not (Path("/") / ".runs").exists()


# ------------------------------------------------------------------------------ secrets


MALFORMED = "ghp_" + "Q1w2E3r4T5y6U7i8O9p0" * 2 + "\nsecondhalf" + "Z" * 20


def github_lane(env: Env, token_file: Path) -> LaneRef:
    repo = RepoRef(
        name="webapp", checkout=str(env.checkout), forge="github", github_repo="acme/webapp"
    )
    return env.lane.model_copy(update={"repos": [repo], "github_token_file": str(token_file)})


def test_a_token_file_of_two_lines_is_refused_and_never_quoted(env: Env) -> None:
    token_file = env.tmp / "github-token"
    token_file.write_text(MALFORMED + "\n")
    token_file.chmod(0o600)
    error = failure_of(env, ForgeListRequest(lane=github_lane(env, token_file), repo="webapp"))
    assert error == (f"token file {token_file} holds 2 lines; write only the token, on one line")
    for piece in MALFORMED.split():
        assert piece not in error


def test_every_failure_branch_masks_the_tokens_the_node_read(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    import requests

    from reconciler.node import credentials, server

    token = "opaque-lane-token-with-no-known-shape"
    credentials.remember(token)
    first, second = MALFORMED.split()
    credentials.remember(MALFORMED)
    header = f"token {MALFORMED}"
    raised: list[BaseException] = [
        # what requests raised for a token file with a newline: an OSError quoting the header
        requests.exceptions.InvalidHeader(
            "Invalid leading whitespace, reserved character(s), or return character(s) in "
            f"header value: {header!r}"
        ),
        OSError(13, f"denied with {token}", f"/home/x/{token}"),
        RuntimeError(f"a bug that quoted {token} and {first}"),
        server.NodeError(f"git said https://bot:{token}@example.com/x.git: {second}"),
        TimeoutError(f"slow {token}"),
    ]
    for exc in raised:

        def boom(lane: object, req: object, exc: BaseException = exc) -> None:
            raise exc

        monkeypatch.setitem(server._HANDLERS, "forge-list", boom)
        error = failure_of(env, ForgeListRequest(lane=env.lane, repo="webapp"))
        for secret in (token, first, second):
            assert secret not in error, (type(exc).__name__, error)
        assert "***" in error, error


def test_one_table_pairs_every_operation_with_its_result_on_both_sides() -> None:
    import typing

    from reconciler.node.server import _HANDLERS
    from reconciler.protocol import RESULTS, Request

    (union, *_) = typing.get_args(Request)
    ops = {typing.get_args(m.model_fields["op"].annotation)[0] for m in typing.get_args(union)}
    assert ops == set(RESULTS) == set(_HANDLERS)
