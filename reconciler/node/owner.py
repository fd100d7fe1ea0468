"""Which state directory owns the lane: the ``.owner`` record in its workspace root.

One state directory drives a lane; a reconciler started with another (a second ``apply --state``
next to a live ``run``) must not adopt its PRs or complete its tasks. The first state to change
the lane claims it; requests that change the lane from any other are refused with the owner
named; requests that only read are answered (the control side then shows the lane as owned
elsewhere and plans nothing for it). ``claim-lane`` with ``take_over`` moves the claim on
purpose.

The record lives in the lane user's own workspace, so the lane user can edit it: it guards
against an operator's mistake, it is not a trust boundary. Writes go through a fresh file and a
link (the first claim: two racing claimers cannot both win) or a rename (a deliberate take-over).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time

from pydantic import ValidationError

from reconciler.node.errors import NodeError
from reconciler.node.lane import Lane
from reconciler.protocol import LaneOwner, StateRef, owned_elsewhere, owns

OWNER_FILE = ".owner"
_MAX_RECORD = 64 << 10
# What only reads the lane: answered whoever asks. Every other request changes it.
READ_ONLY = frozenset({"observe", "preflight", "forge-list", "read-log", "changes"})


def owner_path(lane: Lane) -> str:
    return os.path.join(lane.root, OWNER_FILE)


class UnreadableOwner(NodeError):
    """The record exists but cannot be read as one (someone edited it, or the disk broke it)."""


def read_owner(lane: Lane) -> LaneOwner | None:
    """The lane's owner, or None when no state has claimed it yet."""
    path = owner_path(lane)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise UnreadableOwner(
            f"the lane's owner record {path} cannot be read ({exc.strerror}); remove it, or move "
            f"the lane deliberately with `reconciler apply --take-over {lane.ref.name}`"
        ) from None
    try:
        data = os.read(fd, _MAX_RECORD)
    finally:
        os.close(fd)
    try:
        return LaneOwner.model_validate_json(data)
    except ValidationError:
        raise UnreadableOwner(
            f"the lane's owner record {path} is not one the reconciler wrote; remove it, or move "
            f"the lane deliberately with `reconciler apply --take-over {lane.ref.name}`"
        ) from None


def refusal(lane: Lane, op: str, owner: LaneOwner) -> NodeError:
    detail, fix = owned_elsewhere(lane.ref.name, owner)
    return NodeError(f"{op} refused: {detail}; {fix}")


def _write(lane: Lane, state: StateRef, *, replace: bool) -> LaneOwner | None:
    """Record ``state`` as the owner; without ``replace`` only where there is no record (None
    then means another claimer was first)."""
    if state.id is None:
        raise NodeError("a lane is claimed by a state that has a database; run `reconciler apply`")
    record = LaneOwner(
        id=state.id,
        path=state.path,
        host=state.host,
        machine=state.machine,
        claimed_at=time.time(),
    )
    lane.make_root()
    path = owner_path(lane)
    fresh = f"{path}.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(record.model_dump_json(indent=1).encode() + b"\n")
            out.flush()
            os.fsync(out.fileno())
        if replace:
            os.replace(fresh, path)
            return record
        try:
            os.link(fresh, path)
        except FileExistsError:
            return None
        return record
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(fresh)


def claim(lane: Lane, *, take_over: bool) -> tuple[LaneOwner, LaneOwner | None]:
    """Make the batch's state the lane's owner: (the owner now, the other state it was taken
    from).

    A lane owned by another state is refused unless ``take_over``; an unreadable record is
    replaced only then, too."""
    state = lane.state
    if state is None:
        raise NodeError("claim-lane needs the state the batch acts for; none was sent")
    try:
        current = read_owner(lane)
    except UnreadableOwner:
        if not take_over:
            raise
        current = None
        replace = True
    else:
        replace = current is not None
    if current is not None and owns(current, state):
        if current.id == state.id:
            return current, None
    elif current is not None and not take_over:
        raise refusal(lane, "claim-lane", current)
    written = _write(lane, state, replace=replace)
    if written is None:  # another state claimed it in the meantime
        return claim(lane, take_over=take_over)
    previous = current if current is not None and current.id != state.id else None
    return written, previous


def guard(lane: Lane, op: str, *, claims: bool) -> None:
    """Refuse a request that changes the lane for a state other than its owner (raises
    NodeError naming the owner and the fix); claim a lane no state owns yet for the first state
    that changes it (or, ``claims``: that asks anything while holding its state's lock). A
    request that only reads is never refused here."""
    state = lane.state
    reads = op in READ_ONLY
    if reads and not claims:
        return
    try:
        owner = read_owner(lane)
    except UnreadableOwner:
        if reads:
            return
        raise
    if owner is not None and owns(owner, state):
        if state is not None and state.id is not None and owner.id != state.id:
            _refresh(lane, state, reads)  # the directory's database was replaced: record its id
        return
    if owner is not None:
        if reads:
            return
        raise refusal(lane, op, owner)
    if state is None or state.id is None:
        return  # no state named: served as before there were owners
    try:
        claim(lane, take_over=False)
    except (NodeError, OSError):
        if not reads:  # a read is answered anyway; the change needs the claim
            raise


def _refresh(lane: Lane, state: StateRef, reads: bool) -> None:
    try:
        _write(lane, state, replace=True)
    except OSError:
        if not reads:
            raise
