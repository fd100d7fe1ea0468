"""The lane side of the control-plane interface: serve a ``Batch`` of requests, return results.

Runs inside the lane, as the lane's user (in-process, through ``runuser``/``setpriv``, or as an
SSH forced command). Each request is validated (names are names, the repo is the lane's, paths
stay under the workspace root) and handled on its own: a failure becomes that request's
``Failure`` sentence and never aborts the batch or shows a traceback. Every failure sentence
leaves through ``_failure``, which masks the tokens this process read and anything shaped like a
credential (``credentials.scrub``): an exception's text may quote whatever it touched. Must not
import any control-plane module or keep state outside the lane's own files.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import sys
from collections.abc import Callable
from typing import Any, BinaryIO

from pydantic import BaseModel, TypeAdapter, ValidationError

from reconciler.diskspace import space_left
from reconciler.node import git as gitops
from reconciler.node import pool
from reconciler.node.changes import changes
from reconciler.node.credentials import scrub
from reconciler.node.errors import NodeError
from reconciler.node.hooks import run_hook
from reconciler.node.lane import Lane, check_branch, check_name
from reconciler.node.owner import claim, guard, read_owner
from reconciler.node.preflight import preflight
from reconciler.node.pulls import Pulls, pulls_for
from reconciler.node.runs import (
    finish_run,
    prune_runs,
    queue_run,
    read_log,
    start_run,
    stop_run,
    withdraw_run,
)
from reconciler.node.survey import survey
from reconciler.protocol import (
    FRAME_HEADER_MAX,
    PROTOCOL_VERSION,
    RESULTS,
    SESSION_OPEN,
    SESSION_READY,
    Batch,
    BatchResult,
    ChangesRequest,
    ClaimLaneRequest,
    ClaimResult,
    Failure,
    FillPoolRequest,
    FillPoolResult,
    FinishRunRequest,
    ForgeCloseRequest,
    ForgeListRequest,
    ForgeListResult,
    ForgeMergeRequest,
    ForgeOpenRequest,
    ForgeOpenResult,
    ForgeShowRequest,
    ForgeShowResult,
    ForgeUpdateRequest,
    LaneRef,
    ObserveRequest,
    PreflightRequest,
    PreflightResult,
    PrepareWorkspaceRequest,
    PRResult,
    PruneRunsRequest,
    PushRequest,
    PushResult,
    QueuedResult,
    QueueRunRequest,
    ReadLogRequest,
    RebaseRequest,
    RebaseResult,
    RemovedResult,
    RemoveWorkspaceRequest,
    Request,
    Response,
    StartRunRequest,
    StateRef,
    StopRunRequest,
    WithdrawResult,
    WithdrawRunRequest,
    WorkspaceResult,
    frame,
    lane_pin,
)

__all__ = ["BatchError", "NodeError", "handle", "handle_json", "handle_request", "main"]

_REQUEST = TypeAdapter[Request](Request)
_STATE = TypeAdapter[StateRef | None](StateRef | None)


class BatchError(ValueError):
    """The batch as a whole could not be read (not JSON, wrong shape, other protocol version)."""


# ---------------------------------------------------------------------------------- handlers


def _observe(lane: Lane, req: ObserveRequest) -> BaseModel:
    return survey(lane, req).model_copy(update={"owner": read_owner(lane)})


def _preflight(lane: Lane, req: PreflightRequest) -> BaseModel:
    return PreflightResult(checks=preflight(lane, req))


def _prepare(lane: Lane, req: PrepareWorkspaceRequest) -> BaseModel:
    repo, checkout, path = lane.task(req.task)
    if not gitops.is_repo(checkout):
        raise NodeError(
            f"the checkout {checkout} of repo {repo.name} is missing or not a git repository; "
            "clone it there or fix the lane's checkout path"
        )
    lane.make_root()
    task, base = req.task, req.task.base
    if base is None:
        raise NodeError(f"task {task.name}: a workspace is made from a base branch; none was given")
    created = pooled = False
    # Which of the branch and its base exist, read once for the whole start.
    found = gitops.start_refs(checkout, base, repo.remote, task.branch)
    known: dict[str, str] | None = found
    new_branch = f"refs/heads/{task.branch}" not in found
    if req.fetch_base or new_branch:  # once: a new branch starts at the base the remote has now
        fresh = 0.0 if req.fetch_base else gitops.BASE_FRESH  # asked for: the newest base
        gitops.fetch_base(checkout, repo.remote, base, fresh=fresh)
        if f"refs/remotes/{repo.remote}/{base}" not in found:
            known = None  # a first fetch makes the remote-tracking base: read them again
    if repo.pool > 0 and new_branch:
        directory = pool.pool_dir(lane.root, repo.name, base)
        taken = pool.take(
            checkout, directory, path, branch=task.branch, base=base, remote=repo.remote
        )
        created = pooled = taken is not None
    if not created:
        created = gitops.prepare_workspace(
            checkout, path, task.branch, base, repo.remote, sparse=repo.sparse, known=known
        )
    if created and not pooled:  # a pooled worktree ran afterCreate when it was made
        ok, message = run_hook(lane, repo, "after_create", task.name, path)
        if not ok:
            gitops.remove_workspace(checkout, path)
            raise NodeError(f"{message}; the worktree was removed and the start fails")
    return WorkspaceResult(path=path, created=created)


def _fill_pool(lane: Lane, req: FillPoolRequest) -> BaseModel:
    result = FillPoolResult()
    for name, bases in req.bases.items():
        repo, checkout = lane.repo(name)
        if repo.pool <= 0 or not gitops.is_repo(checkout):
            continue
        lane.make_root()
        for base in bases:
            check_branch(base, "base branch")
            try:
                made = pool.fill(
                    checkout,
                    pool.pool_dir(lane.root, name, base),
                    base=base,
                    remote=repo.remote,
                    size=repo.pool,
                    sparse=repo.sparse,
                    prepared=functools.partial(run_hook, lane, repo, "after_create", ".pool"),
                )
            except NodeError as exc:
                result.errors.append(scrub(f"{name}:{base}: {exc}"))
                continue
            if made:
                result.created[name] = result.created.get(name, 0) + len(made)
    return result


def _remove(lane: Lane, req: RemoveWorkspaceRequest) -> BaseModel:
    repo, checkout, path = lane.task(req.task)
    if not gitops.is_repo(checkout):
        raise NodeError(
            f"the checkout {checkout} of repo {repo.name} is missing or not a git repository; "
            "restore it before removing its worktrees"
        )
    if repo.hooks.before_remove and os.path.isdir(path):
        run_hook(lane, repo, "before_remove", req.task.name, path)  # recorded, never fatal
    return RemovedResult(removed=gitops.remove_workspace(checkout, path))


def _start(lane: Lane, req: StartRunRequest) -> BaseModel:
    _check_start(req)
    repo, _checkout, workspace = lane.task(req.task)
    run_dir = lane.run_dir(req.task.name, req.attempt, req.iteration)
    if repo.hooks.before_run and not os.path.exists(run_dir) and os.path.isdir(workspace):
        ok, message = run_hook(lane, repo, "before_run", req.task.name, workspace)
        if not ok:
            raise NodeError(f"{message}; the run was not started")
    return start_run(lane, req)


def _check_start(req: StartRunRequest) -> None:
    for layer, what in ((req.env, "the run"), (req.agent.env, "the agent")):
        for key, value in layer.items():
            if not key or "=" in key or "\0" in key or "\0" in value:
                raise NodeError(f"environment variable {key!r} of {what} is not valid")
    argvs = [req.agent.command or [], req.agent.args, *req.checks]
    if any("\0" in arg for argv in argvs for arg in argv):
        raise NodeError("an agent or check argument contains a NUL byte; remove it")
    if req.check_timeout <= 0:
        raise NodeError("check_timeout must be positive; give the seconds a check may take")


def _queue(lane: Lane, req: QueueRunRequest) -> BaseModel:
    run = req.run
    _check_start(run)
    repo, _checkout, _workspace = lane.task(run.task)
    if repo.hooks.before_run:
        raise NodeError(
            f"repository {run.task.repo} has a beforeRun hook, which runs just before the "
            "agent: its runs are started by a pass, not queued"
        )
    return QueuedResult(queued=queue_run(lane, run, req.order))


def _withdraw(lane: Lane, req: WithdrawRunRequest) -> BaseModel:
    withdrawn, started = withdraw_run(lane, req.task, req.attempt, req.iteration)
    return WithdrawResult(withdrawn=withdrawn, started=started)


def _stop(lane: Lane, req: StopRunRequest) -> BaseModel:
    if req.grace < 0:
        raise NodeError("grace must not be negative; give seconds to wait before KILL")
    return stop_run(lane, req.task, req.attempt, req.iteration, req.grace)


def _finish(lane: Lane, req: FinishRunRequest) -> BaseModel:
    return finish_run(lane, req)


def _push(lane: Lane, req: PushRequest) -> BaseModel:
    repo, checkout = lane.repo(req.repo)
    check_branch(req.branch)
    return PushResult(sha=gitops.push(checkout, repo.remote, req.branch, req.force_with_lease))


def _rebase(lane: Lane, req: RebaseRequest) -> BaseModel:
    repo, checkout, path = lane.task(req.task)
    if req.task.base is None:
        raise NodeError(f"task {req.task.name}: a rebase needs the task's base branch")
    sha, onto, how = gitops.rebase_on_base(
        checkout, path, req.task.branch, req.task.base, repo.remote
    )
    return RebaseResult(sha=sha, onto=onto, how=how)


def _forge(lane: Lane, repo_name: str) -> Pulls:
    forge = pulls_for(lane, repo_name)
    if forge is None:
        raise NodeError(
            f"repo {repo_name} has no forge on this lane; give it forge: {{kind: local}} or "
            "{kind: github, repo: OWNER/NAME} to have pull requests"
        )
    return forge


def _forge_list(lane: Lane, req: ForgeListRequest) -> BaseModel:
    if req.head is not None:
        check_branch(req.head, "head branch")
    return ForgeListResult(prs=_forge(lane, req.repo).list_pulls(req.head, mergeable=req.mergeable))


def _forge_open(lane: Lane, req: ForgeOpenRequest) -> BaseModel:
    check_name(req.task, "task name")
    check_branch(req.head, "head branch")
    check_branch(req.base, "base branch")
    pr, created = _forge(lane, req.repo).open_pull(
        task=req.task,
        head=req.head,
        base=req.base,
        title=req.title,
        body=req.body,
        draft=req.draft,
        labels=req.labels,
        reviewers=req.reviewers,
    )
    return ForgeOpenResult(pr=pr, created=created)


def _forge_update(lane: Lane, req: ForgeUpdateRequest) -> BaseModel:
    forge = _forge(lane, req.repo)
    return PRResult(
        pr=forge.update_pull(req.number, title=req.title, body=req.body, comment=req.comment)
    )


def _forge_close(lane: Lane, req: ForgeCloseRequest) -> BaseModel:
    return PRResult(pr=_forge(lane, req.repo).close_pull(req.number, req.comment))


def _forge_show(lane: Lane, req: ForgeShowRequest) -> BaseModel:
    pr, comments, diff = _forge(lane, req.repo).show(req.number, diff=req.diff)
    return ForgeShowResult(pr=pr, comments=comments, diff=diff)


def _forge_merge(lane: Lane, req: ForgeMergeRequest) -> BaseModel:
    return PRResult(pr=_forge(lane, req.repo).merge_pull(req.number))


def _read_log(lane: Lane, req: ReadLogRequest) -> BaseModel:
    return read_log(
        lane,
        req.task,
        req.attempt,
        req.iteration,
        offset=req.offset,
        limit=req.limit,
        render=req.render,
        file=req.file,
    )


def _changes(lane: Lane, req: ChangesRequest) -> BaseModel:
    return changes(lane, req)


def _prune(lane: Lane, req: PruneRunsRequest) -> BaseModel:
    return prune_runs(lane, req.runs)


def _claim(lane: Lane, req: ClaimLaneRequest) -> BaseModel:
    owner, previous = claim(lane, take_over=req.take_over)
    return ClaimResult(owner=owner, previous=previous)


_HANDLERS: dict[str, Callable[[Lane, Any], BaseModel]] = {
    "observe": _observe,
    "preflight": _preflight,
    "prepare-workspace": _prepare,
    "fill-pool": _fill_pool,
    "start-run": _start,
    "queue-run": _queue,
    "withdraw-run": _withdraw,
    "stop-run": _stop,
    "finish-run": _finish,
    "push": _push,
    "rebase": _rebase,
    "forge-list": _forge_list,
    "forge-open": _forge_open,
    "forge-update": _forge_update,
    "forge-close": _forge_close,
    "forge-show": _forge_show,
    "forge-merge": _forge_merge,
    "remove-workspace": _remove,
    "prune-runs": _prune,
    "read-log": _read_log,
    "changes": _changes,
    "claim-lane": _claim,
}


# -------------------------------------------------------------------------------- dispatching


def _failure(message: str, temporary: bool = False) -> Response:
    """The one way a failure leaves the node: its sentence with every secret masked."""
    return Response(ok=False, failure=Failure(error=scrub(message), temporary=temporary))


# Failures that pass without anyone repairing anything: a later pass may simply succeed.
TRANSIENT = frozenset(
    {
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EAGAIN,
        errno.EINTR,
        errno.EBUSY,
        errno.ETIMEDOUT,
        errno.EMFILE,
        errno.ENFILE,
        errno.ENOMEM,
        errno.ETXTBSY,
    }
)


def _os_fix(exc: OSError, lane: LaneRef) -> str:
    """What to do about a failed file operation; for a full disk, where and how much is left."""
    if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
        return "check permissions and free space"
    where = os.fsdecode(exc.filename) if exc.filename else os.path.expanduser(lane.workspace_root)
    return f"{space_left(where)}; free some space there, then run again"


def handle_request(
    req: Request,
    pin: str | None = None,
    *,
    env_tokens: bool = True,
    state: StateRef | None = None,
    claims: bool = False,
) -> Response:
    """Serve one request; every error becomes a Failure sentence. With ``pin`` (an ssh lane's
    forced command), a request for a lane other than the one the key was authorized for is
    refused before anything is touched. ``env_tokens`` False: this process's environment is the
    reconciler's own (an in-process lane), so no token is taken from it. ``state`` is the state
    directory the batch acts for: a request that would change a lane another state owns is
    refused naming the owner (``reconciler.node.owner``); ``claims`` (the batch of the reconciler
    holding that state's lock) claims a lane no state owns yet."""
    op = req.op
    if pin is not None and lane_pin(req.lane) != pin:
        return _failure(
            f"{op} refused: this node serves lane {req.lane.name} only as it was when its key "
            "was authorized (workspace root, repositories, token file); the lane spec changed "
            f"since: run `reconciler keys authorize {req.lane.name}` and replace the line in "
            "authorized_keys"
        )
    try:
        lane = Lane.of(req.lane, env_tokens=env_tokens, state=state)
        if op != "claim-lane":  # a claim decides for itself
            guard(lane, op, claims=claims)
        result = _HANDLERS[op](lane, req)
        if type(result) is not RESULTS[op]:
            raise TypeError(f"the {op} handler answered {type(result).__name__}")
        return Response(ok=True, result=result.model_dump(mode="json"))
    except NodeError as exc:
        return _failure(str(exc), exc.temporary)
    except TimeoutError as exc:
        return _failure(f"{op} timed out: {exc}", temporary=True)
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        reason = exc.strerror or str(exc)
        return _failure(
            f"{op} failed on the lane: {reason}{where}; {_os_fix(exc, req.lane)}",
            temporary=exc.errno in TRANSIENT,
        )
    except Exception as exc:  # a bug in the node: report it without a traceback, keep going
        return _failure(f"{op} failed unexpectedly ({type(exc).__name__}: {exc}); report this bug")


def handle(batch: Batch, *, env_tokens: bool = True) -> BatchResult:
    """Serve each request of ``batch`` independently, in order."""
    return BatchResult(
        responses=[
            handle_request(req, env_tokens=env_tokens, state=batch.state, claims=batch.claim)
            for req in batch.requests
        ]
    )


def _invalid(index: int, raw: object, exc: ValidationError) -> Response:
    op = raw.get("op") if isinstance(raw, dict) else None
    first = exc.errors()[0]
    field = ".".join(str(p) for p in first.get("loc", ())) or "request"
    more = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
    return _failure(
        f"request {index} ({op or 'no op'}) is invalid: {field}: {first.get('msg')}{more}; "
        "fix the request"
    )


def handle_json(text: str, pin: str | None = None) -> str:
    """A Batch as JSON text in, a BatchResult as JSON text out.

    Requests are validated one by one, so a malformed request fails alone. Raises BatchError
    when the text is not a batch at all.
    """
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise BatchError(f"the batch is not valid JSON ({exc}); send one JSON object") from None
    if not isinstance(data, dict) or not isinstance(data.get("requests"), list):
        raise BatchError('the batch must be a JSON object with a "requests" list')
    version = data.get("version", PROTOCOL_VERSION)
    if version != PROTOCOL_VERSION:
        raise BatchError(
            f"the batch speaks protocol version {version!r}, this node speaks "
            f"{PROTOCOL_VERSION}; install the same reconciler version on both sides"
        )
    try:
        state = _STATE.validate_python(data.get("state"))
    except ValidationError as exc:
        raise BatchError(f"the batch's state is invalid ({exc.errors()[0].get('msg')})") from None
    claims = data.get("claim") is True
    responses = []
    for index, raw in enumerate(data["requests"]):
        try:
            req = _REQUEST.validate_python(raw)
        except ValidationError as exc:
            responses.append(_invalid(index, raw, exc))
            continue
        responses.append(handle_request(req, pin, state=state, claims=claims))
    return BatchResult(responses=responses).model_dump_json()


MAX_BATCH = 256 << 20  # bytes of one batch in a session: far above any real one


def main(pin: str | None = None) -> int:
    """``reconciler node``: one Batch on stdin and its BatchResult on stdout, or, when stdin opens
    with the session line (``SESSION_OPEN``), a session: batch after batch
    until EOF.

    The protocol's streams are kept to this function: what the handlers start gets /dev/null
    for stdin (nothing may read the next batch) and stderr for stdout (nothing may write into an
    answer)."""
    inp = os.fdopen(os.dup(0), "rb")
    out = os.fdopen(os.dup(1), "wb")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    with inp, out:
        start = inp.read(len(SESSION_OPEN))
        if start == SESSION_OPEN:
            return serve_session(inp, out, pin)
        if start.startswith(SESSION_OPEN.split(b" ")[0] + b" "):
            said = (start + inp.readline(FRAME_HEADER_MAX)).decode("utf-8", "replace").strip()
            out.write(_frame_error(f"the reconciler opened {said!r}{_SAME_VERSION}"))
            out.flush()
            return 2
        try:
            text = (start + inp.read()).decode("utf-8")
        except UnicodeDecodeError:
            print(
                "reconciler node: the batch on stdin is not UTF-8; send UTF-8 JSON", file=sys.stderr
            )
            return 2
        try:
            answer = handle_json(text, pin)
        except BatchError as exc:
            print(f"reconciler node: {exc}", file=sys.stderr)
            return 2
        out.write(answer.encode() + b"\n")
        out.flush()
        return 0


_SAME_VERSION = (
    f", but this node speaks session protocol {PROTOCOL_VERSION}; install the same reconciler "
    "version on both sides"
)


def _frame_error(message: str) -> bytes:
    return frame("error", f"reconciler node: {message}".encode())


def serve_session(inp: BinaryIO, out: BinaryIO, pin: str | None) -> int:
    """Serve ``LENGTH\\n`` + batch frames until EOF, each answered ``ok LENGTH\\n`` + its
    BatchResult, or ``error LENGTH\\n`` + the sentence of a batch that could not be read at all
    (the session goes on). A frame that is not one ends the session: the stream is out of step."""
    out.write(SESSION_READY)
    out.flush()
    while True:
        header = inp.readline(FRAME_HEADER_MAX)
        if not header:
            return 0
        size = header[:-1]
        if not header.endswith(b"\n") or not size.isdigit() or int(size) > MAX_BATCH:
            out.write(_frame_error(f"a session frame starts with a length, not {header[:20]!r}"))
            out.flush()
            return 2
        data = inp.read(int(size))
        if len(data) < int(size):
            print("reconciler node: the session ended inside a batch", file=sys.stderr)
            return 2
        try:
            answer = frame("ok", handle_json(data.decode("utf-8"), pin).encode())
        except UnicodeDecodeError:
            answer = _frame_error("the batch is not UTF-8; send UTF-8 JSON")
        except BatchError as exc:
            answer = _frame_error(str(exc))
        out.write(answer)
        out.flush()
