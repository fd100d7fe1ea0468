"""The lane's owner: the first state to change a lane claims it, another state is refused with the
owner named, reads are answered to anyone, and ``claim-lane`` with ``take_over`` moves it."""

from __future__ import annotations

import json
import os
from pathlib import Path

from reconciler.node.lane import Lane
from reconciler.node.owner import _write, read_owner
from reconciler.node.server import handle, handle_json
from reconciler.protocol import (
    Batch,
    ClaimLaneRequest,
    ClaimResult,
    ForgeListRequest,
    ObserveRequest,
    ObserveResult,
    PreflightCheck,
    PreflightRequest,
    PreflightResult,
    PrepareWorkspaceRequest,
    Request,
    Response,
    StateRef,
)
from tests.node.node_support import Env

FIRST = StateRef(id="a" * 32, path="/srv/first/state", host="ctl-1", machine="m-1")
SECOND = StateRef(id="b" * 32, path="/home/op/state", host="laptop", machine="m-2")


def ask(env: Env, req: Request, state: StateRef | None, *, claim: bool = False) -> Response:
    [response] = handle(Batch(requests=[req], state=state, claim=claim)).responses
    return response


def owner_file(env: Env) -> dict[str, object]:
    data: dict[str, object] = json.loads((env.root / ".owner").read_text())
    return data


def prepare(env: Env, state: StateRef | None, name: str = "t") -> Response:
    return ask(env, PrepareWorkspaceRequest(lane=env.lane, task=env.task(name)), state)


def owner_check(env: Env, state: StateRef | None) -> PreflightCheck:
    response = ask(env, PreflightRequest(lane=env.lane, min_free_bytes=1), state)
    assert response.ok, response.failure
    checks = PreflightResult.model_validate(response.result).checks
    [check] = [c for c in checks if c.name == "lane-owner"]
    return check


def test_the_first_state_to_change_the_lane_claims_it(env: Env) -> None:
    observed = ask(env, ObserveRequest(lane=env.lane), FIRST)
    assert observed.ok and ObserveResult.model_validate(observed.result).owner is None
    assert not (env.root / ".owner").exists()  # reading claims nothing
    assert owner_check(env, FIRST).ok
    assert prepare(env, FIRST).ok
    record = owner_file(env)
    assert {k: record[k] for k in ("id", "path", "host", "machine")} == FIRST.model_dump()
    assert isinstance(record["claimed_at"], float)
    assert os.stat(env.root / ".owner").st_mode & 0o777 == 0o600
    assert prepare(env, FIRST, "u").ok  # its own lane: served


def test_the_lock_holders_batch_claims_on_a_read(env: Env) -> None:
    assert ask(env, ObserveRequest(lane=env.lane), FIRST, claim=True).ok
    assert owner_file(env)["id"] == FIRST.id


def test_another_state_is_refused_with_the_owner_and_the_fix(env: Env) -> None:
    assert prepare(env, FIRST).ok
    refused = prepare(env, SECOND, "u")
    assert not refused.ok and refused.failure is not None
    message = refused.failure.error
    assert message.startswith("prepare-workspace refused: lane webapp belongs to the state")
    assert "/srv/first/state on ctl-1" in message and "UTC" in message
    assert "`reconciler apply --take-over webapp`" in message
    assert not refused.failure.temporary
    assert not env.workspace("u").exists()
    # a read is answered, naming the owner, and claims nothing
    observed = ask(env, ObserveRequest(lane=env.lane), SECOND, claim=True)
    owner = ObserveResult.model_validate(observed.result).owner
    assert owner is not None and owner.id == FIRST.id
    listed = ask(env, ForgeListRequest(lane=env.lane, repo="webapp"), SECOND)
    assert listed.ok
    check = owner_check(env, SECOND)
    assert not check.ok
    assert "/srv/first/state on ctl-1" in check.detail and "--take-over webapp" in check.fix
    assert owner_check(env, FIRST).ok
    assert owner_file(env)["id"] == FIRST.id


def test_a_batch_naming_no_state_changes_only_an_unowned_lane(env: Env) -> None:
    assert prepare(env, None).ok
    assert not (env.root / ".owner").exists()  # served as before there were owners
    assert prepare(env, FIRST, "u").ok
    refused = prepare(env, None, "v")
    assert not refused.ok and refused.failure is not None
    assert "/srv/first/state" in refused.failure.error


def test_take_over_moves_the_claim_and_names_the_previous_owner(env: Env) -> None:
    assert prepare(env, FIRST).ok
    plain = ask(env, ClaimLaneRequest(lane=env.lane), SECOND)
    assert not plain.ok and plain.failure is not None
    assert "claim-lane refused" in plain.failure.error
    taken = ask(env, ClaimLaneRequest(lane=env.lane, take_over=True), SECOND)
    assert taken.ok, taken.failure
    result = ClaimResult.model_validate(taken.result)
    assert result.owner.id == SECOND.id
    assert result.previous is not None and result.previous.path == FIRST.path
    assert owner_file(env)["id"] == SECOND.id
    assert prepare(env, SECOND, "u").ok
    assert not prepare(env, FIRST, "v").ok
    again = ask(env, ClaimLaneRequest(lane=env.lane, take_over=True), SECOND)
    assert ClaimResult.model_validate(again.result).previous is None  # already its own


def test_a_claim_needs_a_state_with_a_database(env: Env) -> None:
    for state in (None, SECOND.model_copy(update={"id": None})):
        response = ask(env, ClaimLaneRequest(lane=env.lane, take_over=True), state)
        assert not response.ok
    assert not (env.root / ".owner").exists()


def test_the_same_directory_with_a_new_database_still_owns_the_lane(env: Env) -> None:
    assert prepare(env, FIRST).ok
    rebuilt = FIRST.model_copy(update={"id": "c" * 32})  # state.db deleted and made again
    assert owner_check(env, rebuilt).ok
    assert owner_check(env, FIRST.model_copy(update={"id": None})).ok  # not made yet
    assert prepare(env, rebuilt, "u").ok
    assert owner_file(env)["id"] == "c" * 32  # the record follows the new database
    elsewhere = FIRST.model_copy(update={"id": "d" * 32, "machine": "m-9"})
    assert not prepare(env, elsewhere, "v").ok  # the same path on another machine is another


def test_an_unreadable_record_refuses_changes_until_taken_over(env: Env) -> None:
    env.root.mkdir()
    (env.root / ".owner").write_text("edited by hand\n")
    refused = prepare(env, FIRST)
    assert not refused.ok and refused.failure is not None
    assert "is not one the reconciler wrote" in refused.failure.error
    assert "--take-over webapp" in refused.failure.error
    # observing says so too: the control side shows the lane unreachable with this fix
    observed = ask(env, ObserveRequest(lane=env.lane), FIRST, claim=True)
    assert not observed.ok and observed.failure is not None
    assert "--take-over webapp" in observed.failure.error
    assert not owner_check(env, FIRST).ok
    taken = ask(env, ClaimLaneRequest(lane=env.lane, take_over=True), FIRST)
    assert taken.ok, taken.failure
    assert ClaimResult.model_validate(taken.result).previous is None
    assert prepare(env, FIRST).ok


def test_of_two_first_claims_one_wins(env: Env) -> None:
    lane = Lane.of(env.lane, state=FIRST)
    assert _write(lane, FIRST, replace=False) is not None
    assert _write(Lane.of(env.lane, state=SECOND), SECOND, replace=False) is None
    owner = read_owner(lane)
    assert owner is not None and owner.id == FIRST.id
    assert [p.name for p in Path(env.root).iterdir()] == [".owner"]  # no temporary file left


def test_the_state_travels_in_the_json_batch(env: Env) -> None:
    assert prepare(env, FIRST).ok
    batch = Batch(
        requests=[PrepareWorkspaceRequest(lane=env.lane, task=env.task("u"))], state=SECOND
    )
    [response] = json.loads(handle_json(batch.model_dump_json()))["responses"]
    assert not response["ok"] and "/srv/first/state" in response["failure"]["error"]
