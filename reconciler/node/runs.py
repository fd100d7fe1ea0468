"""Runs on the lane: start (through a detached supervisor), stop, observe, and read logs.

A run is a directory ``<root>/.runs/<task>/<attempt>.<iteration>/`` holding what was asked
(``run.json``, ``prompt.md``, ``env.json``), who runs it (``pid.json``), what it printed
(``output.log``, ``stderr.log``, ``checks.log``) and how it ended (``exit.json``). The directory
is the record: the node keeps no other state, so a restarted reconciler adopts every run. Must
not run agents in-process, inherit the reconciler's environment into an agent, or signal a
process whose fingerprint no longer matches.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import time
from collections.abc import Mapping
from typing import Any, Literal

from reconciler import gitfiles, safefile
from reconciler.node import files, standby
from reconciler.node import git as gitops
from reconciler.node.agents import ADAPTERS, Adapter, Launch
from reconciler.node.agents.meter import Spend, spend
from reconciler.node.agents.render import render_line
from reconciler.node.errors import NodeError
from reconciler.node.lane import NAME, Lane, is_under, parse_run_key
from reconciler.node.loginenv import login_env
from reconciler.node.procs import (
    fingerprint,
    is_alive,
    kill_group,
    kill_processes,
    pids_by_env,
    pids_with_env,
)
from reconciler.node.spawn import (
    RUN_MARKER,
    START_TIMEOUT,
    spawn_supervisor,
    supervising,
    wait_for_pid,
)
from reconciler.protocol import (
    RUN_KEY,
    AgentEnd,
    AgentRef,
    AgentResult,
    ExitInfo,
    Fingerprint,
    FinishRunRequest,
    Leftovers,
    LogResult,
    PrunedResult,
    RunObs,
    StandbyObs,
    StartRunRequest,
    StopResult,
    TaskRef,
)
from reconciler.workers import fanout

INSPECT_WORKERS = 8  # git processes of inspections at once, across a node's lanes
SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL", re.IGNORECASE)
REDACTED = "<redacted>"
_RUN_NAME = re.compile(r"^(\d+)\.(\d+)$")
RUN_KEY_SHAPE = re.compile(RUN_KEY)


# ------------------------------------------------------------------------------ environment


def base_env() -> dict[str, str]:
    """The lane user's login environment, captured the same way every time (see ``loginenv``).

    Never the environment of the process serving the lane: nothing of the reconciler's own
    environment reaches an agent.
    """
    return dict(login_env().env)


def agent_env(
    lane_env: dict[str, str],
    agent: AgentRef,
    request_env: dict[str, str] | None = None,
    markers: dict[str, str] | None = None,
    *,
    strip: frozenset[str] = frozenset(),
    defaults: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """base < adapter defaults < lane env < agent env < request env < run markers, minus what
    the adapter strips."""
    env = base_env()
    for layer in (defaults or {}, lane_env, agent.env, request_env or {}, markers or {}):
        env.update(layer)
    for name in strip:
        env.pop(name, None)
    return env


_IDENTITY = {
    "user.name": ("GIT_AUTHOR_NAME", "GIT_COMMITTER_NAME"),
    "user.email": ("GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL"),
}


def git_identity(workspace: str, env: dict[str, str]) -> dict[str, str]:
    """The lane user's git identity (as git sees it in ``workspace``) as GIT_AUTHOR_* and
    GIT_COMMITTER_* variables, for the names ``env`` does not set already.

    An agent may run git with its own configuration hidden (Gemini CLI's shell tool sets
    ``GIT_CONFIG_GLOBAL=/dev/null``): the identity in the environment still reaches the commit.
    """
    wanted = {key: names for key, names in _IDENTITY.items() if not all(n in env for n in names)}
    if not wanted:
        return {}
    # Both keys in one git: ``key\nvalue\0`` per value, in the order git reads its files, so
    # the last value of a key is what ``git config --get`` would answer.
    pattern = "^(" + "|".join(re.escape(key) for key in wanted) + ")$"
    proc = gitops.run(["config", "-z", "--get-regexp", pattern], workspace, check=False, env=env)
    values: dict[str, str] = {}
    for entry in proc.stdout.split("\0") if proc.returncode == 0 else []:
        key, _, value = entry.partition("\n")
        values[key] = value.strip()
    found: dict[str, str] = {}
    for key, names in wanted.items():
        if values.get(key):
            found.update({name: values[key] for name in names if name not in env})
    return found


def redact(env: dict[str, str]) -> dict[str, str]:
    """The environment as recorded for humans: secret-looking values replaced."""
    return {k: (REDACTED if SECRET_NAME.search(k) else v) for k, v in sorted(env.items())}


def adapter_for(agent: AgentRef) -> Adapter:
    try:
        return ADAPTERS[agent.kind]
    except KeyError:
        known = ", ".join(sorted(ADAPTERS))
        raise NodeError(f"agent kind {agent.kind!r} has no adapter; use one of {known}") from None


# ------------------------------------------------------------------------------- reading runs


def _fingerprint(record: dict[str, object] | None) -> Fingerprint | None:
    if record is None:
        return None
    try:
        return Fingerprint.model_validate(
            {k: record.get(k) for k in ("boot_id", "pid", "start_time")}
        )
    except ValueError:
        return None


def _exit(run_dir: str) -> ExitInfo | None:
    data = files.read_json(os.path.join(run_dir, files.EXIT_JSON))
    if data is None:
        return None
    try:
        return ExitInfo.model_validate(data)
    except ValueError:
        return None


def _agent_end(run_dir: str) -> AgentEnd | None:
    data = files.read_json(os.path.join(run_dir, files.AGENT_EXIT))
    if data is None:
        return None
    try:
        return AgentEnd.model_validate(data)
    except ValueError:
        return None


def _mtime(path: str) -> float | None:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _num(value: object, default: float = 0.0) -> float:
    return float(value) if isinstance(value, int | float) else default


class RunProcesses:
    """Which run directories still have a live process carrying their run marker, read from
    /proc once (on first need) for a whole observation."""

    def __init__(self) -> None:
        self._by_run: dict[str, list[int]] | None = None

    def any_alive(self, run_dir: str) -> bool:
        if self._by_run is None:
            self._by_run = pids_by_env(RUN_MARKER)
        return bool(self._by_run.get(run_dir))


def _alive(
    fp: Fingerprint | None, ended: bool, run_dir: str, processes: RunProcesses | None
) -> bool:
    """A run lives while its supervisor does, and, when it recorded no end, while a supervisor
    not yet recorded in ``pid.json`` does (one starting, or a finisher taking over) or any
    process carrying its marker does: an agent whose supervisor was killed alone still works in
    the worktree, and a new run beside it would be a second agent there."""
    if fp is not None and is_alive(fp):
        return True
    if ended:
        return False
    return supervising(run_dir) or (processes or RunProcesses()).any_alive(run_dir)


# Ended runs as last observed, by run directory, with the identity of their exit.json: a
# long-running reconciler (or an in-process lane) does not read finished runs again every pass.
_ENDED: dict[str, tuple[tuple[int, int, int], RunObs]] = {}


def _ended_identity(run_dir: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(os.path.join(run_dir, files.EXIT_JSON))
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def read_run(
    lane: Lane,
    run_dir: str,
    *,
    inspect: bool = False,
    processes: RunProcesses | None = None,
) -> RunObs | None:
    """The run in ``run_dir`` as observed now; None when it has no readable ``run.json``.

    With ``inspect`` and an ended run, also the adapter's verdict and the worktree's state.
    ``processes``: the run markers of live processes, shared by the runs of one observation.
    """
    ended = _ended_identity(run_dir)
    if not inspect and ended is not None:
        known = _ENDED.get(run_dir)
        if known is not None and known[0] == ended:
            return known[1]
    spec = files.read_json(os.path.join(run_dir, files.RUN_JSON))
    if spec is None:
        return None
    try:
        task = TaskRef.model_validate(spec["task"])
        attempt = int(str(spec["attempt"]))
        iteration = int(str(spec["iteration"]))
    except (KeyError, ValueError):
        return None
    agent = _agent(spec)
    obs = _observe(run_dir, spec, agent, processes, task=task, attempt=attempt, iteration=iteration)
    if not inspect and ended is not None and obs.exit is not None and not obs.alive:
        _ENDED[run_dir] = (ended, obs)  # an ended run's directory changes no more
    if not inspect or (obs.alive and obs.exit is None):
        return obs
    return obs.model_copy(update=_inspection(lane, obs, spec=spec, task=task, agent=agent))


def _observe(
    run_dir: str,
    spec: dict[str, object],
    agent: AgentRef | None,
    processes: RunProcesses | None,
    *,
    task: TaskRef,
    attempt: int,
    iteration: int,
) -> RunObs:
    """What the run directory shows now: who runs it, whether it ended, its output and spend."""
    pid_record = files.read_json(os.path.join(run_dir, files.PID_JSON))
    fp = _fingerprint(pid_record)
    agent_pid = pid_record.get("agent_pid") if pid_record else None
    exit_info = _exit(run_dir)
    alive = _alive(fp, exit_info is not None, run_dir, processes)
    last_output = _last_output_at(run_dir)
    finishing = _finishing_since(pid_record) if exit_info is None else None
    spent = Spend()
    if exit_info is None and alive and agent is not None and finishing is None:
        spent = spend(agent, run_dir, resumed=_text(spec.get("resume_session")))
    left = None
    if exit_info is None and not alive and fp is not None:
        finishes = pid_record.get("finishes") if pid_record else None
        left = Leftovers(
            agent_end=_agent_end(run_dir),
            finishes=finishes if isinstance(finishes, int) else 0,
        )
    claimed = _run_key(pid_record.get("claimed_from") if pid_record else None)
    started_at = _num(spec.get("started_at"))
    if claimed is not None and pid_record is not None:
        started_at = _num(pid_record.get("claimed_at"), started_at)  # it waited until then
    return RunObs(
        task=task.name,
        repo=task.repo,
        attempt=attempt,
        iteration=iteration,
        generation=str(spec.get("generation", "")),
        run_dir=run_dir,
        workspace=str(spec.get("workspace", "")),
        started_at=started_at,
        supervisor=fp,
        agent_pid=agent_pid if isinstance(agent_pid, int) else None,
        session_id=_text(spec.get("resume_session")) or _text(spec.get("session_id")),
        alive=alive,
        exit=exit_info,
        output_bytes=_size(os.path.join(run_dir, files.OUTPUT_LOG)),
        last_output_at=last_output,
        progress_offset=spent.event_end,
        input_tokens_so_far=spent.input_tokens,
        output_tokens_so_far=spent.output_tokens,
        cost_so_far=spent.cost_usd,
        turns_so_far=spent.turns,
        tool_calls_so_far=spent.tool_calls,
        last_event=spent.last_event,
        left=left,
        finishing_since=finishing,
        handed_to=_handed_to(run_dir) if exit_info is not None else None,
        claimed_from=claimed,
    )


def _handed_to(run_dir: str) -> str | None:
    """The standby run the supervisor started at this run's end (``task/a.i``), if any."""
    record = files.read_json(os.path.join(run_dir, files.HANDOFF))
    return _run_key(record.get("run") if record else None)


def _run_key(value: object) -> str | None:
    """``value`` if it names a run (``task/attempt.iteration``), else None: what the run's own
    files say of another run is reported only as such a name."""
    return value if isinstance(value, str) and RUN_KEY_SHAPE.match(value) else None


def _finishing_since(pid_record: dict[str, object] | None) -> float | None:
    """When a finisher took the run over (its ``pid.json`` says so), else None."""
    since = pid_record.get("finishing_since") if pid_record else None
    return float(since) if isinstance(since, int | float) else None


def _last_output_at(run_dir: str) -> float | None:
    """When the run last wrote anything (agent, stderr, checks); before that, when it started."""
    times = [
        t
        for t in (
            _mtime(os.path.join(run_dir, n))
            for n in (files.OUTPUT_LOG, files.STDERR_LOG, files.CHECKS_LOG)
        )
        if t is not None
    ]
    return max(times) if times else _mtime(os.path.join(run_dir, files.PID_JSON))


def _agent(spec: dict[str, object]) -> AgentRef | None:
    try:
        return AgentRef.model_validate(spec["agent"])
    except (KeyError, ValueError):
        return None  # a run.json from no known version: no verdict or spend to read


def _inspection(
    lane: Lane,
    obs: RunObs,
    *,
    spec: dict[str, object],
    task: TaskRef,
    agent: AgentRef | None,
) -> dict[str, object]:
    """The adapter's verdict on an ended run, and the state of its branch and worktree."""
    update: dict[str, object] = {}
    if obs.exit is not None and agent is not None:
        output = os.path.join(obs.run_dir, files.OUTPUT_LOG)
        result = adapter_for(agent).parse(output, obs.exit)
        spent = spend(agent, obs.run_dir, final=True, resumed=_text(spec.get("resume_session")))
        update["result"] = _with_spend(result, spent)
    left = obs.left
    if left is not None and left.agent_end is None and agent is not None:
        final = _final_result(agent, obs.run_dir)
        update["left"] = left.model_copy(update={"final_result": final})
    if task.repo in lane.repos:
        repo, checkout = lane.repo(task.repo)
        workspace = obs.workspace
        # The two git processes at once: every run that ended waits for its inspection.
        with fanout("inspect", INSPECT_WORKERS) as fan:
            ahead = fan.submit(_ahead, checkout, task, repo.remote)
            if workspace and os.path.isdir(workspace) and is_under(lane.root, workspace):
                with contextlib.suppress(gitops.GitError):
                    update["dirty"] = gitops.status(workspace)
        update["commits_ahead"] = ahead.result()
    return update


def _ahead(checkout: str, task: TaskRef, remote: str) -> int | None:
    if task.base is None:
        return None
    try:
        return gitops.ahead_of_base(checkout, task.branch, task.base, remote)
    except gitops.GitError:
        return None


# A verdict names a subtype only when the output holds the agent's final result (a result
# event, a last turn, a last error the agent gave up on); "retrying" names an output that ends
# while the agent was still retrying the model API, which is no end at all.
_NOT_FINAL = frozenset({None, "retrying"})


def _final_result(agent: AgentRef, run_dir: str) -> AgentResult | None:
    """The agent's final result in the output of a run whose supervisor died without recording
    the agent's end, read by its adapter as though the agent had exited 0; None when the output
    holds none (an agent killed mid-work, or one whose output tells no end, like a command's)."""
    output = os.path.join(run_dir, files.OUTPUT_LOG)
    presumed = ExitInfo(exit_code=0, ended_at=_mtime(output) or 0.0)
    result = adapter_for(agent).parse(output, presumed)
    return None if result.subtype in _NOT_FINAL else result


def _with_spend(result: AgentResult, spent: Spend) -> AgentResult:
    """The adapter's verdict with the meter's spend: tokens counted over the whole output (a
    resumed codex thread's earlier totals taken out), and a cost priced from them where the
    agent reported none (an agent killed mid-run reports nothing, yet spent)."""
    update: dict[str, object] = {}
    if spent.tokens is not None:
        update.update(input_tokens=spent.input_tokens, output_tokens=spent.output_tokens)
    if result.num_turns is None and spent.turns is not None:
        update.update(num_turns=spent.turns)
    if spent.tool_calls is not None:
        update.update(tool_calls=spent.tool_calls)
    if result.cost_usd is None and spent.cost_usd is not None:
        update.update(cost_usd=spent.cost_usd, cost_estimated=spent.estimated)
    return result.model_copy(update=update) if update else result


def observe_runs(
    lane: Lane,
    inspect: set[tuple[str, int, int]],
    settled: Mapping[str, tuple[int, int]] | None = None,
) -> list[RunObs]:
    """Every run directory under ``<root>/.runs``, oldest attempt first per task, but those
    ``settled`` leaves out: for a task, its run ``(attempt, iteration)`` and every earlier one
    (the reconciler keeps them as history; their directories stay, unread)."""
    root = lane.runs_root()
    try:
        task_names = sorted(n for n in os.listdir(root) if NAME.match(n))
    except (FileNotFoundError, NotADirectoryError):
        return []  # no runs yet; a workspace root that is not a directory is pre-flight's to say
    settled = settled or {}
    runs: list[RunObs] = []
    read: set[str] = set()
    listed: set[str] = set()
    processes = RunProcesses()
    for name in task_names:
        task_dir = os.path.join(root, name)
        keyed = _run_names(task_dir, settled.get(name, (0, 0)))
        if keyed is None:
            continue
        listed.add(task_dir)
        for attempt, iteration, entry in keyed:
            run_dir = os.path.join(task_dir, entry)
            read.add(run_dir)
            obs = read_run(
                lane,
                run_dir,
                inspect=(name, attempt, iteration) in inspect,
                processes=processes,
            )
            if obs is not None:
                runs.append(obs)
    _forget(_ENDED, root, read)
    _forget(_LISTED, root, listed)
    return runs


# Task directories as last listed, with their identity: their runs after the settled ones, in
# order. A run directory comes and goes as an entry of its task's directory, which changes the
# directory's times; so a directory whose identity is unchanged, and was last changed before
# the racy window (two changes within one timestamp tick look like one), lists the same and is
# not listed again. Only the runs after those settled then are kept: what the node holds grows
# with the runs it reports, not with a task's history (its settled runs' directories stay for
# the retention period). A reconciler that names fewer runs settled (its state was lost) has
# the directory listed anew.
_Names = list[tuple[int, int, str]]
_LISTED: dict[str, tuple[tuple[int, int, int, int, int], tuple[int, int], _Names]] = {}


def _run_names(task_dir: str, past: tuple[int, int]) -> _Names | None:
    """The runs in ``task_dir`` after ``past`` (the task's last settled run) as (attempt,
    iteration, name), oldest first; None when it is not a directory (any more)."""
    try:
        st = os.stat(task_dir)
    except (NotADirectoryError, FileNotFoundError):
        return None
    identity = gitfiles.identity(st)
    kept = _LISTED.get(task_dir)
    if kept is not None and kept[0] == identity and kept[1] <= past:
        names = [n for n in kept[2] if (n[0], n[1]) > past]
        if kept[1] != past:
            _LISTED[task_dir] = (identity, past, names)
        return names
    read_at = time.time_ns()
    try:
        entries = os.listdir(task_dir)
    except (NotADirectoryError, FileNotFoundError):
        return None
    names = []
    for entry in entries:
        m = _RUN_NAME.match(entry)
        if m and (key := (int(m.group(1)), int(m.group(2)))) > past:
            names.append((*key, entry))
    names.sort()
    if gitfiles.settled(st, read_at):
        _LISTED[task_dir] = (identity, past, names)
    else:
        _LISTED.pop(task_dir, None)
    return names


def _forget(kept: dict[str, Any], root: str, seen: set[str]) -> None:
    """Drop what is kept of the directories under ``root`` that this observation did not read
    (settled, or gone): what the node holds stays as large as what it reports."""
    prefix = root + os.sep
    for path in list(kept):  # one copy: lanes served in-process observe from threads
        if path.startswith(prefix) and path not in seen:
            kept.pop(path, None)


# ------------------------------------------------------------------------------ starting runs


def start_run(lane: Lane, req: StartRunRequest) -> RunObs:
    """Start the run unless its directory already has one; return it as observed. A run waiting
    in the standby queue is withdrawn from it first (or, if a supervisor took it meanwhile,
    found started)."""
    workspace = _prepared(lane, req, "starting")
    adapter = adapter_for(req.agent)
    run_dir = lane.run_dir(req.task.name, req.attempt, req.iteration)
    lane.make_root()
    os.makedirs(lane.runs_root(), mode=0o700, exist_ok=True)
    _withdraw_queued(lane, req.task.name, req.attempt, req.iteration)
    os.makedirs(run_dir, mode=0o700, exist_ok=True)
    os.chmod(run_dir, 0o700)  # makedirs' mode is filtered by the umask
    lane.contained(run_dir)
    with files.locked(os.path.join(run_dir, files.START_LOCK), START_TIMEOUT * 3, f"run {run_dir}"):
        pid_path = os.path.join(run_dir, files.PID_JSON)
        if not os.path.exists(pid_path) and supervising(run_dir):
            _recorded_supervisor(run_dir)  # a start whose node died: it records itself, or dies
        if not os.path.exists(pid_path):
            _write_run(lane, req, adapter, run_dir, workspace, into=run_dir)
            spawn_supervisor(run_dir, workspace)
            wait_for_pid(pid_path, run_dir)
        obs = read_run(lane, run_dir)
    if obs is None:
        raise NodeError(f"run directory {run_dir} lost its run.json; remove the directory")
    return obs


def queue_run(lane: Lane, req: StartRunRequest, order: str) -> bool:
    """Prepare the run in the lane's standby queue (``reconciler.node.standby``) at ``order``;
    False when it has started already (its run directory exists). A run queued already stays
    as it was prepared."""
    workspace = _prepared(lane, req, "queueing")
    adapter = adapter_for(req.agent)
    run_dir = lane.run_dir(req.task.name, req.attempt, req.iteration)
    if os.path.lexists(run_dir):
        return False
    try:
        name = standby.entry_name(order, req.task.name, req.attempt, req.iteration, req.generation)
    except ValueError as exc:
        raise NodeError(f"{exc}; the reconciler sent a malformed standby order") from None
    lane.make_root()
    queue = standby.queue_dir(lane.runs_root())
    os.makedirs(queue, mode=0o700, exist_ok=True)
    lane.contained(queue)
    if _entry(lane, req.task.name, req.attempt, req.iteration) is not None:
        return True
    # Made aside and moved in whole: a claim never finds an entry half written.
    making = os.path.join(queue, f".making-{os.getpid()}-{name}")
    shutil.rmtree(making, ignore_errors=True)
    os.mkdir(making, 0o700)
    try:
        _write_run(lane, req, adapter, run_dir, workspace, into=making)
        os.rename(making, os.path.join(queue, name))
    except BaseException:
        shutil.rmtree(making, ignore_errors=True)
        raise
    return True


def withdraw_run(lane: Lane, task: str, attempt: int, iteration: int) -> tuple[bool, bool]:
    """Take the run out of the standby queue: (withdrawn, started)."""
    run_dir = lane.run_dir(task, attempt, iteration)
    withdrawn = _withdraw_queued(lane, task, attempt, iteration)
    return withdrawn, not withdrawn and os.path.isdir(run_dir)


def _withdraw_queued(lane: Lane, task: str, attempt: int, iteration: int) -> bool:
    entry = _entry(lane, task, attempt, iteration)
    return entry is not None and standby.withdraw(lane.runs_root(), entry)


def _entry(lane: Lane, task: str, attempt: int, iteration: int) -> standby.Entry | None:
    """The run's entry in the standby queue, if it is queued."""
    for entry in standby.entries(lane.runs_root()):
        if (entry.task, entry.attempt, entry.iteration) == (task, attempt, iteration):
            return entry
    return None


def _prepared(lane: Lane, req: StartRunRequest, doing: str) -> str:
    """The task's worktree, which must exist before its run is started or queued."""
    _repo, _checkout, workspace = lane.task(req.task)
    if not os.path.isdir(workspace):
        raise NodeError(
            f"workspace {workspace} of task {req.task.name} does not exist; "
            f"prepare the workspace before {doing} a run"
        )
    return workspace


def queued_runs(lane: Lane) -> list[StandbyObs]:
    """The standby queue as it is now, lowest order first."""
    return [
        StandbyObs(
            task=e.task,
            attempt=e.attempt,
            iteration=e.iteration,
            generation=e.generation,
            order=e.order,
        )
        for e in standby.entries(lane.runs_root())
    ]


def _commit_message(req: StartRunRequest) -> str:
    return (
        f"{req.task.name}: run {req.attempt}.{req.iteration}\n\n"
        f"The changes the {req.agent.kind} agent made in this run, committed by reconciler.\n"
    )


def _write_run(
    lane: Lane, req: StartRunRequest, adapter: Adapter, run_dir: str, workspace: str, *, into: str
) -> None:
    """Write what the run is (prompt, environment, ``run.json``) into the directory ``into``,
    as the files of ``run_dir``: the run's own, or a standby entry that becomes it."""
    prompt_path = os.path.join(run_dir, files.PROMPT)
    _write_prompt(req, into)
    env = _run_env(lane, req, adapter, run_dir=run_dir, workspace=workspace, prompt=prompt_path)
    if "TMPDIR" not in lane.ref.env and "TMPDIR" not in req.agent.env:
        # Agents leave files in $TMPDIR (gemini writes the whole conversation there, mode
        # 0644, on an API error): each run gets its own, private like its directory.
        os.makedirs(os.path.join(into, files.RUN_TMP), mode=0o700, exist_ok=True)
        env["TMPDIR"] = os.path.join(run_dir, files.RUN_TMP)
    launch = Launch(
        prompt_path,
        req.session_id,
        req.resume_session,
        git_dir=gitops.common_dir(workspace),
        env=env,
    )
    adapter.prepare(req.agent, launch)
    argv, on_stdin = adapter.build(req.agent, launch)
    # `~/bin/agent` names a binary in the lane user's home, as it would in their shell.
    argv[0] = os.path.expanduser(argv[0])
    spec = _run_spec(
        lane, req, adapter, workspace=workspace, argv=argv, on_stdin=on_stdin, prompt=prompt_path
    )
    # The real values, for the supervisor only; run.json is 0600 in a 0700 directory.
    spec["agent_env"] = env
    # env.json is the redacted copy for display, the prompt what a start (again) writes anew:
    # neither needs to outlive a power cut; run.json, the run's record, does.
    safefile.write_atomic(
        os.path.join(into, files.ENV_JSON), files.dump_json(redact(env)), durable=False
    )
    files.write_json_atomic(os.path.join(into, files.RUN_JSON), spec)


def _write_prompt(req: StartRunRequest, run_dir: str) -> str:
    prompt_path = os.path.join(run_dir, files.PROMPT)
    try:
        prompt = req.prompt.encode("utf-8")
    except UnicodeEncodeError:
        raise NodeError(
            f"the prompt of task {req.task.name} is not valid Unicode (it holds a lone "
            "surrogate); fix the prompt text"
        ) from None
    safefile.write_atomic(prompt_path, prompt, 0o600, durable=False)
    return prompt_path


def _run_env(
    lane: Lane,
    req: StartRunRequest,
    adapter: Adapter,
    *,
    run_dir: str,
    workspace: str,
    prompt: str,
) -> dict[str, str]:
    """The agent's environment: the layers of :func:`agent_env`, the run markers, the lane
    user's git identity and a private $TMPDIR."""
    markers = {
        "RECONCILER_TASK": req.task.name,
        "RECONCILER_ATTEMPT": str(req.attempt),
        "RECONCILER_ITERATION": str(req.iteration),
        RUN_MARKER: run_dir,
        "RECONCILER_PROMPT_FILE": prompt,
        "RECONCILER_WORKSPACE": workspace,
    }
    env = agent_env(
        lane.ref.env,
        req.agent,
        req.env,
        markers,
        strip=adapter.strip_env,
        defaults=adapter.env_defaults,
    )
    env.update(git_identity(workspace, env))
    return env


def _run_spec(
    lane: Lane,
    req: StartRunRequest,
    adapter: Adapter,
    *,
    workspace: str,
    argv: list[str],
    on_stdin: bool,
    prompt: str,
) -> dict[str, object]:
    """``run.json`` but for the agent's environment: the request, how the agent is started, and
    what the supervisor runs after it."""
    spec = req.model_dump(mode="json", exclude={"lane", "prompt"})
    if not adapter.sessions:  # record no session the agent never had
        spec.update(session_id=None, resume_session=None)
    elif req.session_id and req.session_id not in argv:
        # the agent picks its own id (codex): the next iteration must resume that one, which
        # its output reports, not an id it was never given
        spec.update(session_id=None)
    hooks = lane.repo(req.task.repo)[0].hooks
    spec.update(
        {
            "started_at": time.time(),
            "workspace": workspace,
            "repo": req.task.repo,
            "argv": argv,
            "prompt_on_stdin": on_stdin,
            "prompt_file": prompt,
            # The repository's afterRun hook, run by the supervisor before the checks.
            "after_run": hooks.after_run,
            "commit_message": _commit_message(req) if req.agent.commits == "reconciler" else None,
            "hook_timeout": hooks.timeout,
        }
    )
    return spec


# ----------------------------------------------------------------------------- finishing runs


def finish_run(lane: Lane, req: FinishRunRequest) -> RunObs:
    """Finish a run whose supervisor died after its agent ended (see ``FinishRunRequest``);
    return it as observed. Under the run's start lock, and only for a started run with no exit
    record and no live process: a run that ended, or that a supervisor or finisher still works
    on, is returned as it is."""
    run_dir = lane.run_dir(req.task, req.attempt, req.iteration)
    if not os.path.isdir(run_dir):
        raise NodeError(
            f"run {req.task}/{req.attempt}.{req.iteration} does not exist on lane {lane.ref.name}"
        )
    with files.locked(os.path.join(run_dir, files.START_LOCK), START_TIMEOUT * 3, f"run {run_dir}"):
        obs = read_run(lane, run_dir)
        if obs is None:
            raise NodeError(f"run directory {run_dir} lost its run.json; remove the directory")
        if obs.exit is not None or obs.alive or obs.supervisor is None:
            return obs
        workspace = obs.workspace
        if not (workspace and os.path.isdir(workspace) and is_under(lane.root, workspace)):
            raise NodeError(
                f"the worktree {workspace} of run {req.task}/{req.attempt}.{req.iteration} "
                "is gone: there is nothing to commit or check; the run cannot be finished"
            )
        end_path = os.path.join(run_dir, files.AGENT_EXIT)
        if _agent_end(run_dir) is None:
            # The supervisor died before it recorded the agent's end: the planner presumed it
            # from the agent's final result; the agent stopped writing when it ended.
            ended = _mtime(os.path.join(run_dir, files.OUTPUT_LOG)) or obs.started_at
            end = AgentEnd(exit_code=req.exit_code, ended_at=ended, presumed=True)
            files.write_json_atomic(end_path, end.model_dump(mode="json"))
        spawn_supervisor(run_dir, workspace, finish=True)
        return read_run(lane, run_dir) or obs


# ------------------------------------------------------------------------------- pruning runs


def prune_runs(lane: Lane, keys: list[str]) -> PrunedResult:
    """Remove the directories of these runs, each only when the run is over: it recorded its
    end, and neither its supervisor nor any process carrying its marker lives. A task's
    directory goes with its last run. What cannot be removed stays, with the reason."""
    removed: list[str] = []
    kept: dict[str, str] = {}
    processes = RunProcesses()
    for key in keys:
        task, attempt, iteration = parse_run_key(key)
        run_dir = lane.run_dir(task, attempt, iteration)
        if not os.path.lexists(run_dir):
            removed.append(key)
            continue
        if os.path.islink(run_dir) or not os.path.isdir(run_dir):
            kept[key] = f"{run_dir} is not a run directory"
            continue
        ended = _ended_identity(run_dir) is not None
        fp = _fingerprint(files.read_json(os.path.join(run_dir, files.PID_JSON)))
        if not ended or _alive(fp, False, run_dir, processes):
            kept[key] = "the run is not over"
            continue
        shutil.rmtree(run_dir)
        _ENDED.pop(run_dir, None)
        removed.append(key)
        with contextlib.suppress(OSError):  # not empty: the task has other runs
            os.rmdir(os.path.dirname(run_dir))
    return PrunedResult(removed=removed, kept=kept)


# ------------------------------------------------------------------------------ stopping runs


def stop_run(lane: Lane, task: str, attempt: int, iteration: int, grace: float) -> StopResult:
    """Terminate the run's process group (TERM, ``grace``, KILL). Idempotent."""
    run_dir = lane.run_dir(task, attempt, iteration)
    if not os.path.isdir(run_dir):
        return StopResult(was_alive=False)
    fp = _recorded_supervisor(run_dir)
    was_alive = False
    if fp is not None and is_alive(fp):
        # The supervisor leads the group of itself and the agent; its fingerprint just matched,
        # so the group id is still this run's.
        was_alive = kill_group(fp.pid, grace)
    # Processes that left the group (setsid) still carry the run marker in their environment
    # (those the supervisor started: the supervisor itself, forked, carries none).
    strays = [f for f in (fingerprint(p) for p in pids_with_env(RUN_MARKER, run_dir)) if f]
    if strays and kill_processes(strays, grace):
        was_alive = True
    exit_path = os.path.join(run_dir, files.EXIT_JSON)
    if was_alive and not os.path.exists(exit_path) and (fp is None or not is_alive(fp)):
        # The supervisor was killed before it could record the end: record the stop, so the
        # run reads as stopped rather than crashed.
        info = ExitInfo(exit_code=None, signal=int(signal.SIGKILL), ended_at=time.time())
        files.write_json_atomic(exit_path, info.model_dump(mode="json"))
    return StopResult(was_alive=was_alive)


def _recorded_supervisor(run_dir: str) -> Fingerprint | None:
    """The supervisor ``pid.json`` names, once a supervisor still starting (or a finisher
    taking over) has recorded itself: a stop must reach it, and it carries no marker."""
    pid_path = os.path.join(run_dir, files.PID_JSON)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        fp = _fingerprint(files.read_json(pid_path))
        if (fp is not None and is_alive(fp)) or not supervising(run_dir):
            return fp
        if time.monotonic() >= deadline:
            return fp
        time.sleep(0.01)


# --------------------------------------------------------------------------------- log access


def _complete_utf8(data: bytes) -> int:
    """Length of ``data`` without a trailing, incomplete UTF-8 sequence."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:
            continue  # a continuation byte: look further back for the lead byte
        if byte < 0x80:
            return len(data)
        need = 2 if byte & 0xE0 == 0xC0 else 3 if byte & 0xF0 == 0xE0 else 4
        return len(data) if back >= need else len(data) - back
    return len(data)


_LOG_FILES = {"output": files.OUTPUT_LOG, "prompt": files.PROMPT, "checks": files.CHECKS_LOG}


def read_log(
    lane: Lane,
    task: str,
    attempt: int,
    iteration: int,
    *,
    offset: int,
    limit: int,
    render: bool = False,
    file: Literal["output", "prompt", "checks"] = "output",
) -> LogResult:
    """A run's ``file`` (its output, the prompt it was given, its checks' output) from
    ``offset``; ``ended`` once the run is over and everything has been read."""
    if offset < 0 or limit <= 0:
        raise NodeError("offset must be ≥ 0 and limit > 0; fix the read-log request")
    run_dir = lane.run_dir(task, attempt, iteration)
    if not os.path.isdir(run_dir):
        raise NodeError(f"run {task}/{attempt}.{iteration} does not exist on lane {lane.ref.name}")
    # Decide "over" before reading, so that output written after the check is never skipped.
    fp = _fingerprint(files.read_json(os.path.join(run_dir, files.PID_JSON)))
    ended = os.path.exists(os.path.join(run_dir, files.EXIT_JSON))
    over = ended or (fp is not None and not _alive(fp, ended, run_dir, None))
    path = os.path.join(run_dir, _LOG_FILES[file])
    render = render and file == "output"
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            f.seek(offset)
            data = f.read(limit)
    except FileNotFoundError:
        size, data = 0, b""
    end = offset + len(data)
    if not (over and end >= size):
        data = data[: _complete_utf8(data)]  # the rest of the character comes next time
        if render and b"\n" in data:
            data = data[: data.rindex(b"\n") + 1]  # events are whole lines: the rest next time
        elif render and len(data) < limit:
            data = b""  # a line still being written (one longer than the window is shown raw)
        end = offset + len(data)
    text = data.decode("utf-8", errors="replace")
    if render:
        spec = files.read_json(os.path.join(run_dir, files.RUN_JSON)) or {}
        agent = spec.get("agent")
        kind = str(agent.get("kind", "")) if isinstance(agent, dict) else ""
        shown = [out for line in text.splitlines() for out in render_line(kind, line)]
        text = "".join(f"{line}\n" for line in shown)
    return LogResult(data=text, offset=end, ended=over and end >= size)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
