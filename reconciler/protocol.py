"""The lane interface: JSON requests in, JSON results out.

Every transport (in-process, ``runuser``/``setpriv`` to a lane user, SSH with a forced command)
carries exactly these shapes, so the control plane never knows which one it is talking to. Pure:
models only, no I/O. Times are UNIX epoch seconds (float, UTC).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

# 2: changes, read-log files, observe rechecks and rate limits
# 3: node sessions, observe's settled runs, prune-runs
PROTOCOL_VERSION = 4


class Msg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ------------------------------------------------------------------------------ shared pieces


class RepoHooks(Msg):
    after_create: list[str] | None = None
    before_run: list[str] | None = None
    after_run: list[str] | None = None
    before_remove: list[str] | None = None
    timeout: float = 600.0


class RepoRef(Msg):
    name: str
    checkout: str  # may start with ~ (the lane user's home)
    remote: str = "origin"
    forge: Literal["local", "github"] | None = None
    github_repo: str | None = None  # OWNER/NAME for a github forge
    api_url: str | None = None  # GitHub Enterprise Server API root
    pool: int = 0  # idle worktrees kept per base
    sparse: list[str] = Field(default_factory=list)
    hooks: RepoHooks = Field(default_factory=RepoHooks)


class LaneRef(Msg):
    """What the node needs to know about its lane to serve any request."""

    name: str
    workspace_root: str  # may start with ~
    repos: list[RepoRef]
    env: dict[str, str] = Field(default_factory=dict)
    github_token_file: str | None = None  # a path inside the lane; the token never travels


def lane_pin(lane: LaneRef) -> str:
    """A digest of what bounds a lane on its host: workspace root, repositories (checkouts,
    remotes, forges, API URLs) and token file. An ssh lane's authorized_keys line pins its node
    to it, so a key cannot point the node at other paths, files or hosts."""
    bounds = {
        "name": lane.name,
        "workspace_root": lane.workspace_root,
        "repos": [r.model_dump(mode="json") for r in lane.repos],
        "github_token_file": lane.github_token_file,
    }
    text = json.dumps(bounds, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class StateRef(Msg):
    """The state directory a batch acts for. A lane belongs to one (``LaneOwner``): the node
    refuses requests that change the lane from any other."""

    id: str | None = None  # random, made with the state database; None: no database yet
    path: str  # the state directory, on the host below
    host: str  # the host name, for people
    machine: str = ""  # what tells the host apart (its /etc/machine-id, else its name)


class LaneOwner(StateRef):
    """The lane's ``.owner`` record in its workspace root: which state claimed it, and when."""

    id: str
    claimed_at: float


def owns(owner: StateRef, state: StateRef | None) -> bool:
    """Whether ``state`` is the ``owner`` of a lane: the same database (its id), or the same
    directory on the same machine (its database was replaced or restored there: the directory's
    lock still lets only one reconciler drive the lane)."""
    if state is None:
        return False
    if state.id is not None and state.id == owner.id:
        return True
    return bool(owner.machine) and (owner.machine, owner.path) == (state.machine, state.path)


def owned_elsewhere(lane: str, owner: LaneOwner) -> tuple[str, str]:
    """What to tell someone whose state does not own ``lane``: (what is so, what to do)."""
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(owner.claimed_at))
    return (
        f"lane {lane} belongs to the state directory {owner.path} on {owner.host} (claimed "
        f"{when}, state id {owner.id[:12]})",
        f"run the reconciler with that state directory, or move the lane to this one "
        f"deliberately with `reconciler apply --take-over {lane}` (or `run --take-over {lane}`)",
    )


class TaskRef(Msg):
    name: str
    repo: str
    # None only for a task whose manifest is gone: its actions (stop, close-pr, cleanup) act on
    # what exists and never create a workspace, which needs the base
    base: str | None
    branch: str  # e.g. agent/<task>


class Pricing(Msg):
    """USD per million tokens, overriding the built-in prices for every model of an agent."""

    input: float
    output: float
    cache_read: float | None = None  # default: a tenth of input
    cache_write: float | None = None  # default: 1.25x input


class AgentRef(Msg):
    kind: Literal["claude", "codex", "aider", "gemini", "command"]
    command: list[str] | None = None
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    max_budget_usd: float | None = None  # the run's spending cap, where the agent enforces one
    pricing: Pricing | None = None  # prices for estimating spend the agent does not report
    commits: Literal["agent", "reconciler"] = "agent"  # who commits the agent's changes


class CheckResult(Msg):
    argv: list[str]
    exit_code: int | None  # None: timed out or could not start
    timed_out: bool = False
    duration: float = 0.0
    output_tail: str = ""  # last ~4 KiB of combined stdout/stderr


class ExitInfo(Msg):
    """``exit.json``, written atomically by the run's supervisor when the agent has ended."""

    exit_code: int | None  # None when killed by a signal
    signal: int | None = None
    ended_at: float
    checks: list[CheckResult] = Field(default_factory=list)
    after_run: CheckResult | None = None  # the repository's afterRun hook (recorded only)
    commit: CheckResult | None = None  # the reconciler's commit of the agent's changes
    # Set when the reconciler finished the run after its supervisor died (``finish-run``):
    # "recorded" when the supervisor had recorded the agent's exit before dying, "presumed" when
    # the exit status was presumed from the agent's final result in its output.
    recovered: Literal["recorded", "presumed"] | None = None


class AgentResult(Msg):
    """What the adapter read from the agent's output."""

    ok: bool  # the agent itself reports success (claude: not is_error; command: exit 0)
    subtype: str | None = None
    session_id: str | None = None
    cost_usd: float | None = None
    cost_estimated: bool = False  # priced from the tokens it reported; the agent said no cost
    input_tokens: int | None = None
    output_tokens: int | None = None
    num_turns: int | None = None
    tool_calls: int | None = None  # tools, commands and edits the agent ran
    final_text: str = ""  # final message (claude) or stdout tail (command), ≤ 64 KiB
    error: str | None = None  # the agent's own one-line account of a failure (≤ 300 chars)


class AgentEnd(Msg):
    """``agent-exit.json``: how the agent itself ended, recorded by the supervisor the moment the
    agent exits on its own (before the commit and the checks), or presumed by a ``finish-run``
    from the agent's final result when the supervisor died before recording it."""

    exit_code: int
    ended_at: float
    presumed: bool = False


class Leftovers(Msg):
    """What a run left when its processes are gone and it has no exit record (its supervisor
    died before writing one): the evidence the planner judges before calling it a crash."""

    agent_end: AgentEnd | None = None  # the agent's own end, as recorded
    # The agent's final result in its output (a result event, a final turn), read by its
    # adapter as though it exited 0; only for inspected runs, and only when the output holds one.
    final_result: AgentResult | None = None
    finishes: int = 0  # how many times the reconciler began finishing the run


class Fingerprint(Msg):
    """A process identity that survives pid reuse."""

    boot_id: str
    pid: int
    start_time: int  # field 22 of /proc/PID/stat, in clock ticks since boot


# A run named by its task and number, ``task/attempt.iteration``: all a lane may say of one run
# in another's record (it reaches events and logs).
RUN_KEY = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?/[0-9]{1,9}\.[0-9]{1,9}$"


class RunObs(Msg):
    """A run directory as the lane sees it: ``<root>/.runs/<task>/<attempt>.<iteration>/``."""

    task: str
    repo: str
    attempt: int
    iteration: int
    generation: str
    run_dir: str
    workspace: str
    started_at: float
    supervisor: Fingerprint | None  # None: pid file not written (yet)
    agent_pid: int | None = None
    session_id: str | None = None  # the agent session the run started (or resumed)
    alive: bool  # supervisor fingerprint matches a live process
    exit: ExitInfo | None = None
    output_bytes: int = 0
    last_output_at: float | None = None  # newest mtime of output, stderr and check logs
    progress_offset: int | None = None  # end of the agent's last own event in its output
    # what a running agent's events report spending so far, input and output apart
    input_tokens_so_far: int | None = None
    output_tokens_so_far: int | None = None
    cost_so_far: float | None = None  # its cost so far, as reported or priced from its tokens
    turns_so_far: int | None = None  # model responses so far
    tool_calls_so_far: int | None = None  # tools, commands and edits it ran so far
    last_event: str | None = None  # its last own event, as `logs` renders it (≤ 200 chars)
    result: AgentResult | None = None  # parsed when the run has ended and inspect was asked
    commits_ahead: int | None = None  # at inspection time
    dirty: list[str] = Field(default_factory=list)  # `git status --porcelain` lines, ≤ 50
    left: Leftovers | None = None  # processes gone, no exit record: what the run left
    finishing_since: float | None = None  # a finish-run's finisher took the run over then
    # Its supervisor, at the agent's end, started this standby run of the lane (``task/a.i``)
    handed_to: str | None = Field(None, pattern=RUN_KEY, max_length=128)
    # It was a standby run, started by the supervisor of this run (``task/a.i``) at its end
    claimed_from: str | None = Field(None, pattern=RUN_KEY, max_length=128)


class StandbyObs(Msg):
    """A standby run waiting in its lane's queue (``<root>/.runs/.standby/``): prepared in full,
    started by the supervisor of the next run of the lane to end (or by a later pass)."""

    task: str
    attempt: int
    iteration: int
    generation: str
    order: str  # its place in the queue: the lowest is taken first


class Worktree(Msg):
    path: str
    branch: str | None  # short name, e.g. agent/x; None when detached
    head: str | None
    prunable: bool = False


class PullRequest(Msg):
    number: int
    url: str
    state: Literal["open", "closed", "merged"]
    head: str  # branch name
    base: str
    title: str
    body: str = ""
    task: str | None = None  # from the hidden marker in the body
    head_sha: str | None = None
    updated_at: float | None = None  # last change of state (closed/merged time for those)
    # What reviewers and CI say of head_sha (hosted forges; the local forge has neither):
    checks: Literal["pending", "success", "failure"] | None = None  # None: no checks reported
    check_feedback: list[str] = Field(default_factory=list)  # failing checks, with output tails
    review_feedback: list[str] = Field(default_factory=list)  # change requests, with file:line
    # Whether head_sha merges into the base as the base is now (open PRs the forge was asked
    # about): None while unknown (not asked, or GitHub still computing it); False: it conflicts.
    mergeable: bool | None = None
    behind: bool = False  # the base has commits the head has not (the base moved since)
    conflicts: list[str] = Field(default_factory=list)  # conflicting files, where the forge says


class PrComment(Msg):
    at: float | None = None
    author: str = ""
    body: str


class RateLimit(Msg):
    """What the forge last said of the token's rate limit (GitHub's core limit), as the lane's
    forge client learnt it from answers it had anyway: no request is made to know it."""

    remaining: int
    limit: int
    at: float  # when it was said (the lane's clock)


class RepoObs(Msg):
    name: str
    ok: bool
    error: str | None = None
    worktrees: list[Worktree] = Field(default_factory=list)  # only those under the workspace root
    branches: dict[str, str] = Field(default_factory=dict)  # local branch (prefix only) → sha
    remote_branches: dict[str, str] = Field(default_factory=dict)  # pushed branch → sha
    prs: list[PullRequest] | None = None  # None: the repo has no forge
    pool: dict[str, int] = Field(default_factory=dict)  # base → idle pooled worktrees
    rate_limit: RateLimit | None = None  # the forge's token, when its forge tells (GitHub)


class PreflightCheck(Msg):
    name: str  # e.g. "checkout", "base-branch", "workspace-writable", "disk", "git", "agent"
    ok: bool
    subject: str = ""  # repo or agent the check is about ("" = the whole lane)
    detail: str = ""
    fix: str = ""
    advisory: bool = False  # a failure doctor reports (exit 1) but that does not block dispatch


# ----------------------------------------------------------------------------------- requests


class Recheck(Msg):
    """Pull requests of one forge repository whose checks and reviews an observation reads anew,
    however recently they were read (a webhook delivery named them): by number, or by the head
    commit they are about (check runs and statuses name commits)."""

    repo: str  # as the forge names it, OWNER/NAME (compared without case)
    numbers: list[int] = Field(default_factory=list)
    shas: list[str] = Field(default_factory=list)


class ObserveRequest(Msg):
    """Read-only: runs (with liveness), worktrees, branches, forge PRs.

    ``inspect`` names runs (``task/attempt.iteration``) whose ended result should be parsed and
    whose worktree should be inspected (commits ahead, dirty files). Each run directory records
    its task, base and agent, so nothing else per task travels but ``settled``: for each task
    with runs the reconciler has settled (over for good; state keeps them as history), the last
    of them, ``[attempt, iteration]``. The lane leaves that run and every earlier one of the task
    out of its report, so a report does not grow with every run ever made.
    """

    op: Literal["observe"] = "observe"
    lane: LaneRef
    branch_prefix: str = "agent/"
    inspect: list[str] = Field(default_factory=list)
    # Branches whose PR feedback is wanted other than in full (checks and reviews): only tasks
    # whose `pr.iterateOn` says otherwise travel, so the request stays small.
    feedback: dict[str, list[Literal["checks", "reviews"]]] = Field(default_factory=dict)
    # PRs whose feedback is read anew on this observation (named by webhooks since the last)
    recheck: list[Recheck] = Field(default_factory=list)
    settled: dict[str, tuple[int, int]] = Field(default_factory=dict)


class PreflightRequest(Msg):
    op: Literal["preflight"] = "preflight"
    lane: LaneRef
    bases: dict[str, list[str]] = Field(default_factory=dict)  # repo → base branches needed
    agents: list[AgentRef] = Field(default_factory=list)
    min_free_bytes: int = 1 << 30


class PrepareWorkspaceRequest(Msg):
    """Idempotent: an existing worktree for the task is reused as it is."""

    op: Literal["prepare-workspace"] = "prepare-workspace"
    lane: LaneRef
    task: TaskRef
    # Fetch the base also for an existing branch, so that the run sees the base as the remote
    # has it now (a run asked to integrate a base that moved).
    fetch_base: bool = False


class FillPoolRequest(Msg):
    """Create the idle worktrees the lane's repositories keep ready for these bases."""

    op: Literal["fill-pool"] = "fill-pool"
    lane: LaneRef
    bases: dict[str, list[str]] = Field(default_factory=dict)  # repo → bases in use


class FillPoolResult(Msg):
    created: dict[str, int] = Field(default_factory=dict)  # repo → worktrees created now
    errors: list[str] = Field(default_factory=list)


class StartRunRequest(Msg):
    """Idempotent: if the run directory already has a started run, it is returned unchanged."""

    op: Literal["start-run"] = "start-run"
    lane: LaneRef
    task: TaskRef
    attempt: int
    iteration: int
    generation: str
    prompt: str
    agent: AgentRef
    resume_session: str | None = None
    session_id: str | None = None  # a fresh id for adapters that accept one (claude)
    checks: list[list[str]] = Field(default_factory=list)
    check_timeout: float = 600.0
    markers: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)  # run markers (RECONCILER_TASK, …)


class QueueRunRequest(Msg):
    """Prepare ``run`` in full (its directory, prompt, environment and ``run.json``) but start no
    supervisor: put it in the lane's standby queue, in the place ``order`` says (lowest first),
    for the supervisor of the next run of the lane to end to start. Idempotent: a run already
    queued stays as it is; a run already started is reported so."""

    op: Literal["queue-run"] = "queue-run"
    run: StartRunRequest
    order: str

    @property
    def lane(self) -> LaneRef:
        return self.run.lane


class WithdrawRunRequest(Msg):
    """Take a standby run out of the queue unstarted. Exactly one of a withdrawal and a start
    takes a queued run: ``WithdrawResult.started`` says the start did."""

    op: Literal["withdraw-run"] = "withdraw-run"
    lane: LaneRef
    task: str
    attempt: int
    iteration: int


class StopRunRequest(Msg):
    """Terminate the run's process group: TERM, ``grace`` seconds, KILL. Idempotent."""

    op: Literal["stop-run"] = "stop-run"
    lane: LaneRef
    task: str
    attempt: int
    iteration: int
    grace: float = 5.0


class FinishRunRequest(Msg):
    """Do for a run what its dead supervisor did not: record the agent's end (``exit_code``,
    presumed, where the supervisor recorded none), then, in a detached finisher, commit the
    agent's changes when its Agent says ``commits: reconciler``, run the afterRun hook and the
    success checks, and write ``exit.json`` marked ``recovered``. Idempotent: a run that has an
    exit record or a live process is returned as it is; a commit is made only of changes still
    uncommitted."""

    op: Literal["finish-run"] = "finish-run"
    lane: LaneRef
    task: str
    attempt: int
    iteration: int
    exit_code: int = 0  # the agent's exit presumed from its final result


class PushRequest(Msg):
    op: Literal["push"] = "push"
    lane: LaneRef
    repo: str
    branch: str
    force_with_lease: bool = False


class RebaseRequest(Msg):
    """Bring the task's branch up to date with its base, fetched now, in the task's worktree
    (where the branch is checked out): a rebase, else a merge of the base when the rebase stops
    on a conflict that the merge as a whole does not have. Nothing is pushed. Refused while the
    worktree is missing or on another branch; a conflict leaves the worktree as it was."""

    op: Literal["rebase"] = "rebase"
    lane: LaneRef
    task: TaskRef


class ForgeListRequest(Msg):
    op: Literal["forge-list"] = "forge-list"
    lane: LaneRef
    repo: str
    head: str | None = None  # only PRs from this branch
    mergeable: bool = False  # with whether each open PR merges into its base now


class ForgeOpenRequest(Msg):
    """Create a PR unless one exists for ``head`` (then it is returned with created=False)."""

    op: Literal["forge-open"] = "forge-open"
    lane: LaneRef
    repo: str
    task: str
    head: str
    base: str
    title: str
    body: str
    draft: bool = False
    labels: list[str] = Field(default_factory=list)
    reviewers: list[str] = Field(default_factory=list)  # users, or ORG/TEAM for teams


class ForgeUpdateRequest(Msg):
    op: Literal["forge-update"] = "forge-update"
    lane: LaneRef
    repo: str
    number: int
    title: str | None = None
    body: str | None = None
    comment: str | None = None


class ForgeCloseRequest(Msg):
    op: Literal["forge-close"] = "forge-close"
    lane: LaneRef
    repo: str
    number: int
    comment: str


class ForgeShowRequest(Msg):
    """One PR with its comments, whether it merges into its base, and with ``diff`` its changes
    against its base (``git diff base...head``; the local forge)."""

    op: Literal["forge-show"] = "forge-show"
    lane: LaneRef
    repo: str
    number: int
    diff: bool = False


class ForgeMergeRequest(Msg):
    """Local forge only (an operator's merge): fast-forward or merge commit into base."""

    op: Literal["forge-merge"] = "forge-merge"
    lane: LaneRef
    repo: str
    number: int


class RemoveWorkspaceRequest(Msg):
    """Remove the task's worktree (``--force``); the branch stays. Idempotent."""

    op: Literal["remove-workspace"] = "remove-workspace"
    lane: LaneRef
    task: TaskRef


class PruneRunsRequest(Msg):
    """Remove the directories of these ended runs (``task/attempt.iteration``), kept past the
    retention period; a run that is not over is left alone. Idempotent."""

    op: Literal["prune-runs"] = "prune-runs"
    lane: LaneRef
    runs: list[str] = Field(max_length=1000)


class ReadLogRequest(Msg):
    """Bytes of one of a run's files from ``offset`` (for ``logs``, ``logs -f`` and the
    dashboard): the agent's ``output``, the ``prompt`` it was given, or its ``checks``' output."""

    op: Literal["read-log"] = "read-log"
    lane: LaneRef
    task: str
    attempt: int
    iteration: int
    offset: int = 0
    limit: int = 1 << 20
    render: bool = False  # the agent's events as readable lines (whole lines only; output only)
    file: Literal["output", "prompt", "checks"] = "output"


class ChangesRequest(Msg):
    """What a task's branch changed against its base: in its worktree (committed and not yet
    committed, while the agent works), else the branch as committed. Read-only."""

    op: Literal["changes"] = "changes"
    lane: LaneRef
    task: TaskRef
    limit: int = 1 << 20  # characters of diff at most; the rest is cut at a line's end


class ClaimLaneRequest(Msg):
    """Make the batch's state the lane's owner. Without ``take_over`` a lane another state owns
    stays its (the request fails naming it); with it the claim moves here deliberately."""

    op: Literal["claim-lane"] = "claim-lane"
    lane: LaneRef
    take_over: bool = False


Request = Annotated[
    ObserveRequest
    | PreflightRequest
    | PrepareWorkspaceRequest
    | FillPoolRequest
    | StartRunRequest
    | QueueRunRequest
    | WithdrawRunRequest
    | StopRunRequest
    | FinishRunRequest
    | PushRequest
    | RebaseRequest
    | ForgeListRequest
    | ForgeOpenRequest
    | ForgeUpdateRequest
    | ForgeCloseRequest
    | ForgeShowRequest
    | ForgeMergeRequest
    | RemoveWorkspaceRequest
    | PruneRunsRequest
    | ReadLogRequest
    | ChangesRequest
    | ClaimLaneRequest,
    Field(discriminator="op"),
]


class Batch(Msg):
    version: int = PROTOCOL_VERSION
    requests: list[Request]
    # The state directory the batch acts for (None: a client that names none, which may not
    # change a lane another state owns). ``claim``: the batch comes from the reconciler holding
    # that state's lock, so a lane no state owns yet becomes its before anything is answered.
    state: StateRef | None = None
    claim: bool = False


# ---------------------------------------------------------------------------------- responses


class ObserveResult(Msg):
    repos: dict[str, RepoObs]
    runs: list[RunObs]
    boot_id: str
    now: float  # the lane's clock
    runs_root: str = ""  # where the lane's run directories are, as the lane sees it
    standby: list[StandbyObs] = Field(default_factory=list)  # the queue, lowest order first
    owner: LaneOwner | None = None  # the state directory that owns the lane (None: none yet)


class PreflightResult(Msg):
    checks: list[PreflightCheck]


class WorkspaceResult(Msg):
    path: str
    created: bool


class StopResult(Msg):
    was_alive: bool


class QueuedResult(Msg):
    queued: bool  # in the queue now (False: the run had started already)


class WithdrawResult(Msg):
    withdrawn: bool  # taken out of the queue by this request
    started: bool  # the run had started (a supervisor or a start took it first)


class PushResult(Msg):
    sha: str


class RebaseResult(Msg):
    sha: str  # the branch's head afterwards
    onto: str  # the base commit it now contains
    how: Literal["rebased", "merged", "current"]  # current: it contained the base already


class ForgeListResult(Msg):
    prs: list[PullRequest]


class ForgeOpenResult(Msg):
    pr: PullRequest
    created: bool


class PRResult(Msg):
    pr: PullRequest


class ForgeShowResult(Msg):
    pr: PullRequest
    comments: list[PrComment] = Field(default_factory=list)
    diff: str | None = None


class RemovedResult(Msg):
    removed: bool


class PrunedResult(Msg):
    removed: list[str]  # the runs whose directories are gone (also those gone already)
    kept: dict[str, str] = Field(default_factory=dict)  # run → why its directory stays


class ClaimResult(Msg):
    owner: LaneOwner  # the lane's owner now
    previous: LaneOwner | None = None  # the other state it was taken from, if it was


class LogResult(Msg):
    data: str  # decoded with errors="replace"
    offset: int  # next offset
    ended: bool


class ChangesResult(Msg):
    source: Literal["worktree", "branch", "none"]  # none: neither the worktree nor the branch
    base: str | None = None  # the commit the changes are counted from (where the branch left)
    head: str | None = None  # the branch's commit
    diff: str = ""  # unified, against ``base``; tracked files only
    untracked: list[str] = Field(default_factory=list)  # new files not yet added (worktree)
    truncated: bool = False  # ``diff`` was cut at the request's limit


class Failure(Msg):
    """A request that failed. ``temporary``: worth retrying on a later pass."""

    error: str
    temporary: bool = False


class Response(Msg):
    ok: bool
    result: dict[str, object] | None = None
    failure: Failure | None = None


# What each operation answers: the one pairing of requests and results, checked by the lane
# client (a caller expecting another type is a bug) and by the node server (a handler
# returning another type is a bug), so the two sides cannot drift apart.
RESULTS: dict[str, type[Msg]] = {
    "observe": ObserveResult,
    "preflight": PreflightResult,
    "prepare-workspace": WorkspaceResult,
    "fill-pool": FillPoolResult,
    "start-run": RunObs,
    "queue-run": QueuedResult,
    "withdraw-run": WithdrawResult,
    "stop-run": StopResult,
    "finish-run": RunObs,
    "push": PushResult,
    "rebase": RebaseResult,
    "forge-list": ForgeListResult,
    "forge-open": ForgeOpenResult,
    "forge-update": PRResult,
    "forge-close": PRResult,
    "forge-show": ForgeShowResult,
    "forge-merge": PRResult,
    "remove-workspace": RemovedResult,
    "prune-runs": PrunedResult,
    "read-log": LogResult,
    "changes": ChangesResult,
    "claim-lane": ClaimResult,
}


class BatchResult(Msg):
    version: int = PROTOCOL_VERSION
    responses: list[Response]


# ------------------------------------------------------------------------ the PR marker
# The one rule that finds a task's PR again on every forge, read and written on both sides: a
# hidden line in the PR body naming the task, kept whatever else the body becomes.

PR_MARKER = re.compile(r"<!--\s*reconciler:task=([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)\s*-->")


def pr_marker(task: str) -> str:
    return f"<!-- reconciler:task={task} -->"


def marked_task(body: str) -> str | None:
    """The task a PR body's (last) marker names, if any."""
    found = PR_MARKER.findall(body)
    return found[-1][0] if found else None


def with_marker(body: str, task: str | None) -> str:
    """``body`` carrying ``task``'s marker: added below it unless it already has one (a body
    edited without its marker could no longer be found by task)."""
    if task is None or marked_task(body) is not None:
        return body
    return f"{body.rstrip()}\n\n{pr_marker(task)}".lstrip()


# ---------------------------------------------------------------------- a node session's frames
# A transport that keeps a node running opens with SESSION_OPEN, then sends each batch as
# ``LENGTH\n`` and its JSON; the node answers each ``ok LENGTH\n`` and the BatchResult JSON, or
# ``error LENGTH\n`` and the sentence of a batch it could not read at all. The node exits on EOF.

SESSION_OPEN = b"reconciler-session %d\n" % PROTOCOL_VERSION
# The node's first words in a session, before any answer: a node that does not say them (an
# older one reads its stdin to the end as one batch) is told apart from a slow one.
SESSION_READY = b"reconciler-session %d ready\n" % PROTOCOL_VERSION
FRAME_HEADER_MAX = 32  # bytes of a header line, its newline included


def frame(kind: str, body: bytes) -> bytes:
    """One answer frame: ``KIND LENGTH\\n`` and the body."""
    return f"{kind} {len(body)}\n".encode() + body
