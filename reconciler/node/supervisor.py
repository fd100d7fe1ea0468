"""The run supervisor: a small detached process that owns one agent run until ``exit.json``.

Forked by the node's fork server (:mod:`reconciler.node.forkserver`) as a session and
process-group leader of its own, so the run survives the reconciler and is stopped as one group.
It records its identity in ``pid.json``, runs the agent with exactly the environment in
``run.json``, records the agent's own end in ``agent-exit.json``, commits the agent's changes
when asked, runs the success checks, and writes ``exit.json`` atomically.

Forked to :func:`finish` it is a *finisher*: the reconciler found the run's processes gone with
no ``exit.json`` but with the agent's end recorded (or presumed from its final result), and the
finisher does what the dead supervisor did not — the commit (of changes still uncommitted only),
the afterRun hook, the checks and ``exit.json``, marked ``recovered``. Must not read requests,
talk to the control plane, or pass anything of its own environment on; git only to commit.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import traceback

from reconciler import safefile
from reconciler.node import files, standby
from reconciler.node.procs import boot_id, running, start_time

TYPE_CHECKING = False  # typing's own, without importing typing (type checkers know the name)
if TYPE_CHECKING:
    from types import FrameType

# Standard library only (and these stdlib-only modules): the fork server imports this module
# once and forks every supervisor from it, and stays small beside the node. Records are plain
# dicts in the shapes of protocol.ExitInfo and protocol.CheckResult, which the node validates
# when it reads them.
CheckResult = dict[str, object]

CHECK_TAIL = 4096
COMMIT_TIMEOUT = 300.0
FALLBACK_IDENTITY = ["-c", "user.name=reconciler", "-c", "user.email=reconciler@localhost.invalid"]


class _State:
    """What the signal handler needs to reach: the live check and whether we were stopped."""

    check: subprocess.Popen[bytes] | None = None
    stop_signal: int | None = None


_state = _State()


def _on_stop(signum: int, frame: FrameType | None) -> None:
    if _state.stop_signal is not None:
        return  # our own forwarded signal coming back, or a repeat
    _state.stop_signal = signum
    if _state.check is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(_state.check.pid, signal.SIGTERM)
    # Forward to the whole group (the agent and its children); a group kill already did it.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(os.getpgrp(), signum)


def _catch_stops() -> None:
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, _on_stop)


def _identity() -> dict[str, object]:
    """This process's fingerprint, as ``pid.json`` records it (protocol.Fingerprint)."""
    return {"boot_id": boot_id(), "pid": os.getpid(), "start_time": start_time(os.getpid())}


def _str_list(value: object) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"expected a list of strings in run.json, got {value!r}")
    return list(value)


def _shown(argv: list[str]) -> str:
    """``argv`` as a shell would read it, for the log only (never executed)."""
    return shlex.join(argv)


def run_check(
    argv: list[str], workspace: str, env: dict[str, str], timeout: float, log_path: str
) -> CheckResult:
    started = time.monotonic()
    exit_code: int | None = None
    timed_out = False
    with open(log_path, "ab") as log:
        offset = log.tell()
        log.write(f"$ {_shown(argv)}\n".encode())  # display only, never executed
        log.flush()
        try:
            if not argv:
                raise FileNotFoundError("the check is an empty argv list")
            # Own session: a timed-out check is killed with everything it started.
            proc = subprocess.Popen(
                argv,
                cwd=workspace,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                close_fds=True,
                start_new_session=True,
            )
        except OSError as exc:
            log.write(f"could not start the check: {exc}\n".encode())
        else:
            _state.check = proc
            try:
                exit_code = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                timed_out = True
                log.write(f"\ntimed out after {timeout:g}s\n".encode())
            finally:
                _state.check = None
    with open(log_path, "rb") as f:
        f.seek(offset)
        produced = f.read()
    return {
        "argv": argv,
        "exit_code": exit_code,
        "timed_out": timed_out,
        "duration": round(time.monotonic() - started, 3),
        "output_tail": produced[-CHECK_TAIL:].decode("utf-8", errors="replace"),
    }


def _write_exit(
    run_dir: str,
    exit_code: int | None,
    signal_: int | None = None,
    ended_at: float | None = None,
    checks: list[CheckResult] | None = None,
    *,
    after_run: CheckResult | None = None,
    commit: CheckResult | None = None,
    recovered: str | None = None,
) -> None:
    """``exit.json`` (protocol.ExitInfo), atomically: it is the run's record of its end. The
    run's private $TMPDIR goes first: what the agent and its checks left there is no record."""
    shutil.rmtree(os.path.join(run_dir, files.RUN_TMP), ignore_errors=True)
    info = {
        "exit_code": exit_code,
        "signal": signal_,
        "ended_at": time.time() if ended_at is None else ended_at,
        "checks": checks or [],
        "after_run": after_run,
        "commit": commit,
        "recovered": recovered,
    }
    files.write_json_atomic(os.path.join(run_dir, files.EXIT_JSON), info)


def _record_agent_end(run_dir: str, code: int, ended: float) -> None:
    """``agent-exit.json`` (protocol.AgentEnd): the agent ended on its own. Written before the
    commit and the checks, so that a supervisor killed during them leaves the evidence that the
    agent's work is complete, and the reconciler finishes the run instead of redoing it."""
    record = {"exit_code": code, "ended_at": ended, "presumed": False}
    files.write_json_atomic(os.path.join(run_dir, files.AGENT_EXIT), record)


def _ready(fd: int | None) -> None:
    """Tell the node the run has started (agent spawned, pid.json complete) or has already
    ended or is owned by another start: the node waits on this pipe instead of polling."""
    if fd is None:
        return
    with contextlib.suppress(OSError):
        os.write(fd, b"\n")
    with contextlib.suppress(OSError):
        os.close(fd)


def _write_pid(path: str, record: dict[str, object]) -> None:
    """``pid.json`` replaced. Never durable (no fsync, also when created): the record names
    processes, which a power cut ends with the machine (its boot id says so), and one lost or
    empty after it reads as a run no longer alive, as the truth is."""
    safefile.write_atomic(path, files.dump_json(record), durable=False)


class _Run:
    """What ``run.json`` asks for, checked before the run is claimed."""

    __slots__ = ("argv", "check_timeout", "checks", "env", "workspace")

    def __init__(
        self,
        workspace: str,
        argv: list[str],
        env: dict[str, str],
        checks: list[list[str]],
        check_timeout: float,
    ) -> None:
        self.workspace = workspace
        self.argv = argv
        self.env = env
        self.checks = checks
        self.check_timeout = check_timeout


def _read_spec(spec: dict[str, object]) -> _Run:
    workspace = str(spec["workspace"])
    argv = _str_list(spec["argv"])
    raw_env = spec["agent_env"]
    if not isinstance(raw_env, dict):
        raise ValueError("agent_env in run.json is not an object")
    env = {str(k): str(v) for k, v in raw_env.items()}
    checks = [_str_list(c) for c in _str_list_of_lists(spec.get("checks", []))]
    return _Run(workspace, argv, env, checks, _seconds(spec.get("check_timeout")))


def _seconds(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 600.0


def supervise(run_dir: str, ready_fd: int | None = None, claimed_from: str | None = None) -> int:
    """Run the agent described by ``run_dir/run.json`` to its end; 0 unless the run is broken.
    ``claimed_from``: a standby run, started by the supervisor of that run (``task/a.i``) at
    its end. An agent that ended on its own hands its slot to the lane's first standby run."""
    spec = files.read_json(os.path.join(run_dir, files.RUN_JSON))
    if spec is None:
        print(f"{run_dir}/run.json is missing or not JSON; nothing to run", file=sys.stderr)
        return 1
    run = _read_spec(spec)
    _catch_stops()
    pid_path = os.path.join(run_dir, files.PID_JSON)
    record: dict[str, object] = {**_identity(), "agent_pid": None}
    if claimed_from is not None:
        record.update(claimed_from=claimed_from, claimed_at=time.time())
    if not safefile.create_exclusive(pid_path, files.dump_json(record), durable=False):
        _ready(ready_fd)
        return 0  # a concurrent start already owns this run; starting twice would duplicate it

    if _state.stop_signal is not None:
        _write_exit(run_dir, None, _state.stop_signal)
        _ready(ready_fd)
        return 0

    agent = _start_agent(run_dir, run, prompt_on_stdin=bool(spec.get("prompt_on_stdin")))
    if agent is None:
        _write_exit(run_dir, 127)
        _ready(ready_fd)
        return 0
    if _state.stop_signal is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(agent, _state.stop_signal)
    record["agent_pid"] = agent
    _write_pid(pid_path, record)
    _ready(ready_fd)  # the agent runs and its output files exist: start-run may return

    code = os.waitstatus_to_exitcode(os.waitpid(agent, 0)[1])
    ended = time.time()
    if code < 0:
        _write_exit(run_dir, None, -code, ended)
    elif _state.stop_signal is not None:
        _write_exit(run_dir, code, _state.stop_signal, ended)
    else:
        _record_agent_end(run_dir, code, ended)
        _after_agent(run_dir, spec, run, code, ended)
        if _state.stop_signal is None:
            _hand_over(run_dir)
    return 0


def _hand_over(run_dir: str) -> None:
    """The agent ended on its own and the run's end is recorded: give the slot to the lane's
    first standby run (``reconciler.node.standby``), started by a supervisor forked from this
    one. It records where the slot went (``handoff.json``) before it goes, and the new one
    starts its agent only once this process is gone, so the lane never has a live supervisor
    more than it has slots. A stopped run hands nothing over: a stop frees its slot for the
    pass that made it."""
    task_dir = os.path.dirname(run_dir)
    taken = standby.claim(os.path.dirname(task_dir))
    if taken is None:
        return
    target, lock_fd = taken
    key = f"{os.path.basename(os.path.dirname(target))}/{os.path.basename(target)}"
    with contextlib.suppress(OSError):  # only a pass reading both runs mid-way needs it
        record = files.dump_json({"run": key})
        safefile.write_atomic(os.path.join(run_dir, files.HANDOFF), record, durable=False)
    me = os.getpid()
    started = start_time(me)
    mine = f"{os.path.basename(task_dir)}/{os.path.basename(run_dir)}"
    sys.stdout.flush()
    sys.stderr.flush()
    if os.fork() == 0:
        code = 1
        try:
            code = _take_over(target, lock_fd, (me, started or 0), mine)
        finally:
            os._exit(code)
    os.close(lock_fd)


def _take_over(run_dir: str, lock_fd: int, parent: tuple[int, int], claimed_from: str) -> int:
    """In the fork of a supervisor whose run ended: become the supervisor of the standby run
    in ``run_dir``, holding its lock (``lock_fd``), as the fork server makes one: a session of
    its own, its output in the run's ``supervisor.log``."""
    os.setsid()
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd != lock_fd:
            with contextlib.suppress(OSError):  # the old run's lock, the listing's own
                os.close(fd)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
    log = os.open(os.path.join(run_dir, files.SUPERVISOR_LOG), flags, 0o600)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    os.write(1, f"reconciler: started at the end of run {claimed_from}\n".encode())
    while running(*parent):  # the slot is the old supervisor's until it is gone: a moment
        time.sleep(0.0005)
    try:  # (the agent's start enters the worktree, and says so when it cannot)
        return supervise(run_dir, None, claimed_from=claimed_from)
    except Exception:
        traceback.print_exc()  # into the new run's supervisor.log, as the fork server's do
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def finish(run_dir: str, ready_fd: int | None = None) -> int:
    """Finish the run in ``run_dir`` whose supervisor died after its agent ended: what
    ``_after_agent`` does, from the agent's end in ``agent-exit.json``. The node starts it under
    the run's start lock, having found no live process of the run and no ``exit.json``; a
    finisher killed in turn leaves the run as it found it, to be finished again."""
    spec = files.read_json(os.path.join(run_dir, files.RUN_JSON))
    end = files.read_json(os.path.join(run_dir, files.AGENT_EXIT))
    code, ended = (end or {}).get("exit_code"), (end or {}).get("ended_at")
    if spec is None or not isinstance(code, int) or not isinstance(ended, int | float):
        print(f"{run_dir}: run.json or agent-exit.json is missing or not valid", file=sys.stderr)
        return 1
    run = _read_spec(spec)
    _catch_stops()
    pid_path = os.path.join(run_dir, files.PID_JSON)
    before = files.read_json(pid_path) or {}
    finishes = before.get("finishes")
    record = {
        **_identity(),
        "agent_pid": before.get("agent_pid"),
        "finishes": (finishes if isinstance(finishes, int) else 0) + 1,
        "finishing_since": time.time(),
    }
    # The dead supervisor's record is replaced: the run is alive again while this one works.
    _write_pid(pid_path, record)
    recovered = "presumed" if (end or {}).get("presumed") else "recorded"
    log_path = os.path.join(run_dir, files.CHECKS_LOG)
    with open(log_path, "ab") as log:
        log.write(
            f"reconciler: the supervisor died after the agent ended (exit {code}, "
            f"{recovered}); finishing the run\n".encode()
        )
    _clear_index_lock(run, log_path)
    _ready(ready_fd)
    if _state.stop_signal is not None:
        _write_exit(run_dir, code, _state.stop_signal, ended, recovered=recovered)
        return 0
    _after_agent(run_dir, spec, run, code, float(ended), recovered=recovered)
    return 0


def _start_agent(run_dir: str, run: _Run, *, prompt_on_stdin: bool) -> int | None:
    """The agent's pid: started with exactly ``run.json``'s environment, writing to the run's
    logs, in the supervisor's process group (one killpg stops both); None when it cannot be
    started (said in ``stderr.log``)."""
    stdin_path = os.path.join(run_dir, files.PROMPT) if prompt_on_stdin else os.devnull
    with (
        open(stdin_path, "rb") as stdin,
        open(os.path.join(run_dir, files.OUTPUT_LOG), "ab") as out,
        open(os.path.join(run_dir, files.STDERR_LOG), "ab") as err,
    ):
        try:
            stdio = (stdin.fileno(), out.fileno(), err.fileno())
            return _spawn(run.argv, run.workspace, run.env, stdio)
        except OSError as exc:
            err.write(f"reconciler: could not start the agent {run.argv[:1]}: {exc}\n".encode())
            err.flush()  # the message is on disk before exit.json says the run ended
            return None


def _spawn(argv: list[str], cwd: str, env: dict[str, str], stdio: tuple[int, int, int]) -> int:
    """What ``subprocess.Popen(argv, cwd=cwd, env=env, stdin/stdout/stderr=stdio,
    close_fds=True)`` does, by ``os.posix_spawn``: the program found on ``env``'s PATH, the
    signals Python ignores back to their default, no descriptor but the three passed on."""
    if not argv:
        raise FileNotFoundError(errno.ENOENT, "the agent's command line is empty")
    os.chdir(cwd)  # posix_spawn has no cwd (the node started the supervisor there already)
    # close_fds: what the supervisor inherited (the ready pipe) is not the agent's
    for name in os.listdir("/proc/self/fd"):
        if int(name) > 2:
            with contextlib.suppress(OSError):  # the listing's own, closed by now
                os.set_inheritable(int(name), False)
    actions = [(os.POSIX_SPAWN_DUP2, source, fd) for fd, source in enumerate(stdio)]
    program = argv[0]
    found: OSError = FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)
    paths = (
        [program]
        if os.sep in program
        else [os.path.join(d, program) for d in os.get_exec_path(env)]
    )
    for path in paths:
        try:
            return os.posix_spawn(
                path,
                argv,
                env,
                file_actions=actions,
                setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
            )
        except (FileNotFoundError, NotADirectoryError):
            continue  # as execvp: the next directory of PATH
        except OSError as exc:
            found = type(exc)(exc.errno, exc.strerror, program)  # as execvp: kept, the next one
    raise found


def _after_agent(
    run_dir: str,
    spec: dict[str, object],
    run: _Run,
    code: int,
    ended: float,
    *,
    recovered: str | None = None,
) -> None:
    """The agent exited on its own: commit its work, run the afterRun hook and the checks, and
    record the end (as stopped if a stop came meanwhile)."""
    log_path = os.path.join(run_dir, files.CHECKS_LOG)
    commit: CheckResult | None = None
    message = spec.get("commit_message")
    if code == 0 and isinstance(message, str) and message:
        commit = _commit(run.workspace, run.env, message, log_path)
    after_run = _after_run(run_dir, spec, run) if spec.get("after_run") else None
    results: list[CheckResult] = []
    for check in run.checks:
        if _state.stop_signal is not None:
            break
        results.append(run_check(check, run.workspace, run.env, run.check_timeout, log_path))
    if _state.stop_signal is not None:
        _write_exit(run_dir, code, _state.stop_signal, ended, recovered=recovered)
        return
    _write_exit(
        run_dir, code, None, ended, results, after_run=after_run, commit=commit, recovered=recovered
    )


def _after_run(run_dir: str, spec: dict[str, object], run: _Run) -> CheckResult:
    """The repository's afterRun hook: recorded, never fatal; logged beside the other hooks."""
    hook_log = os.path.join(os.path.dirname(run_dir), "hooks.log")
    with open(hook_log, "ab") as log:
        log.write(f"\n# afterRun of run {os.path.basename(run_dir)}\n".encode())
    argv = _str_list(spec["after_run"])
    return run_check(argv, run.workspace, run.env, _seconds(spec.get("hook_timeout")), hook_log)


def _commit(workspace: str, env: dict[str, str], message: str, log_path: str) -> CheckResult | None:
    """The agent's changes as one commit (an Agent with ``commits: reconciler``); None when it
    left nothing to commit. Without a git identity in the lane, the commit is the reconciler's."""
    status = subprocess.run(
        ["git", "status", "--porcelain"], cwd=workspace, env=env, capture_output=True, check=False
    )
    if status.returncode == 0 and not status.stdout.strip():
        return None
    added = run_check(["git", "add", "-A"], workspace, env, COMMIT_TIMEOUT, log_path)
    if added["exit_code"] != 0:
        return added
    staged = subprocess.run(
        ["git", "diff", "--cached", "--quiet"], cwd=workspace, env=env, check=False
    )
    if staged.returncode == 0:
        return None  # the files differ from HEAD only in the index: a commit made before a crash
    who = subprocess.run(
        ["git", "config", "user.email"], cwd=workspace, env=env, capture_output=True, check=False
    )
    identity = [] if who.stdout.strip() or "GIT_AUTHOR_EMAIL" in env else FALLBACK_IDENTITY
    argv = ["git", *identity, "commit", "-q", "-m", message]
    return run_check(argv, workspace, env, COMMIT_TIMEOUT, log_path)


def _clear_index_lock(run: _Run, log_path: str) -> None:
    """Remove the worktree's index lock a git of the dead supervisor left (killed in its
    commit): no process of the run is alive (no supervisor holds the run's lock, none carries its
    marker), so the lock is no one's, and with it every git command of the finish would fail."""
    where = subprocess.run(
        ["git", "rev-parse", "--git-path", "index.lock"],
        cwd=run.workspace,
        env=run.env,
        capture_output=True,
        text=True,
        check=False,
    )
    lock = os.path.join(run.workspace, where.stdout.strip())  # git may answer relative to cwd
    if where.returncode != 0 or not where.stdout.strip() or not os.path.exists(lock):
        return
    os.unlink(lock)
    with open(log_path, "ab") as log:
        log.write(f"reconciler: removed {lock}, left by a git of the dead supervisor\n".encode())


def _str_list_of_lists(value: object) -> list[object]:
    if not isinstance(value, list):
        raise ValueError(f"checks in run.json must be a list, got {value!r}")
    return list(value)
