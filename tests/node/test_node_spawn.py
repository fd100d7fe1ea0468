"""Supervisors forked by the node's fork server, and the lock that tells a starting one from a
dead one (it carries no run marker: a forked process keeps its parent's environment)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from reconciler.node import procs, runs, spawn
from reconciler.node.files import AGENT_EXIT, EXIT_JSON, PID_JSON, read_json
from reconciler.protocol import (
    ObserveRequest,
    ObserveResult,
    Request,
    RunObs,
    StopResult,
    StopRunRequest,
)
from tests.node.node_support import Env
from tests.support.waiting import wait_for

# A supervisor still starting, as a node that died mid-start leaves one: it holds the run's
# supervisor lock at once, and records itself in pid.json (exclusively, as a supervisor does)
# once the file ``argv[2]`` exists.
STARTING = """
import fcntl, json, os, sys, time
run_dir, go = sys.argv[1], sys.argv[2]
fd = os.open(os.path.join(run_dir, ".supervisor.lock"), os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
while not os.path.exists(go):
    time.sleep(0.01)
boot = open("/proc/sys/kernel/random/boot_id").read().strip()
start = int(open(f"/proc/{os.getpid()}/stat").read().rpartition(")")[2].split()[19])
record = {"boot_id": boot, "pid": os.getpid(), "start_time": start, "agent_pid": None}
try:
    with open(os.path.join(run_dir, "pid.json"), "x") as f:
        json.dump(record, f)
except FileExistsError:
    pass
time.sleep(60)
"""


def observe(env: Env, run: RunObs) -> RunObs:
    result = ObserveResult.model_validate(env.call(ObserveRequest(lane=env.lane)))
    [found] = [r for r in result.runs if r.run_dir == run.run_dir]
    return found


@pytest.fixture
def unrecorded(env: Env) -> RunObs:
    """A run whose directory says it was asked for and nothing more: its supervisor ended, and
    its pid.json and end are gone, as a node killed between the request and the supervisor's
    first record would leave it."""
    run = env.start("begun", env.agent("print('once')"))
    env.wait_exit(run)
    supervisor = run.supervisor
    assert supervisor is not None
    wait_for(lambda: not procs.is_alive(supervisor), "the supervisor to be gone")
    for name in (PID_JSON, EXIT_JSON, AGENT_EXIT):
        (Path(run.run_dir) / name).unlink(missing_ok=True)
    return run


@pytest.fixture
def starting(env: Env, unrecorded: RunObs) -> Iterator[Callable[[], subprocess.Popen[str]]]:
    """Start a stand-in for a supervisor still starting in ``unrecorded``'s directory; it
    records itself when ``go`` is called."""
    started: list[subprocess.Popen[str]] = []

    def start() -> subprocess.Popen[str]:
        go = env.tmp / "go"
        proc = subprocess.Popen(
            [*env.script("starting.py", STARTING), unrecorded.run_dir, str(go)],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        started.append(proc)
        assert proc.stdout is not None and proc.stdout.readline() == "locked\n"
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


def go(env: Env) -> None:
    (env.tmp / "go").touch()


def test_a_supervisor_not_yet_recorded_is_alive_while_it_holds_the_lock(
    env: Env, unrecorded: RunObs, starting: Callable[[], subprocess.Popen[str]]
) -> None:
    assert not observe(env, unrecorded).alive  # nothing holds it: a start that died
    holder = starting()
    seen = observe(env, unrecorded)
    assert seen.alive and seen.exit is None and seen.supervisor is None
    holder.kill()
    holder.wait()
    assert not observe(env, unrecorded).alive


@pytest.fixture
def looked_at(
    starting: Callable[[], subprocess.Popen[str]], monkeypatch: pytest.MonkeyPatch
) -> tuple[subprocess.Popen[str], threading.Event]:
    """A supervisor still starting, and an event set once the node has looked and found it."""
    holder = starting()
    looked = threading.Event()
    real = spawn.supervising

    def supervising(run_dir: str) -> bool:
        found = real(run_dir)
        if found:
            looked.set()
        return found

    monkeypatch.setattr(runs, "supervising", supervising)
    return holder, looked


def call_in_thread(env: Env, request: Request) -> Callable[[], dict[str, object]]:
    """Serve ``request`` in a thread; the function returned waits for its answer."""
    answers: list[dict[str, object]] = []
    thread = threading.Thread(target=lambda: answers.append(env.call(request)))
    thread.start()

    def answer() -> dict[str, object]:
        thread.join(15)
        [found] = answers
        return found

    return answer


def test_a_start_finds_a_supervisor_still_starting_and_starts_no_second(
    env: Env, unrecorded: RunObs, looked_at: tuple[subprocess.Popen[str], threading.Event]
) -> None:
    holder, looked = looked_at
    spec = Path(unrecorded.run_dir) / "run.json"
    before = spec.read_bytes()
    answer = call_in_thread(env, env.start_request("begun", env.agent("print('twice')")))
    assert looked.wait(10)
    go(env)  # the supervisor that was starting records itself
    run = RunObs.model_validate(answer())
    assert run.supervisor is not None and run.supervisor.pid == holder.pid
    assert spec.read_bytes() == before  # its run.json was not written again under it
    assert (Path(run.run_dir) / "output.log").read_text() == "once\n"  # no second agent


def test_a_start_whose_starting_supervisor_dies_unrecorded_starts_its_own(
    env: Env, unrecorded: RunObs, looked_at: tuple[subprocess.Popen[str], threading.Event]
) -> None:
    holder, looked = looked_at
    answer = call_in_thread(env, env.start_request("begun", env.agent("print('again')")))
    assert looked.wait(10)
    holder.kill()  # it dies before it recorded itself: nothing runs the run
    run = RunObs.model_validate(answer())
    assert run.supervisor is not None and run.supervisor.pid != holder.pid
    env.wait_exit(run)
    assert (Path(run.run_dir) / "output.log").read_text() == "once\nagain\n"


def test_a_stop_waits_for_a_starting_supervisor_and_stops_it(
    env: Env, looked_at: tuple[subprocess.Popen[str], threading.Event]
) -> None:
    holder, looked = looked_at
    answer = call_in_thread(
        env, StopRunRequest(lane=env.lane, task="begun", attempt=1, iteration=1, grace=5)
    )
    assert looked.wait(10)
    go(env)
    assert StopResult.model_validate(answer()) == StopResult(was_alive=True)
    assert holder.wait(5) == -signal.SIGTERM


def test_the_supervisor_holds_the_lock_and_its_agent_does_not(env: Env) -> None:
    run = env.start("held", env.agent("import time; print('up', flush=True); time.sleep(60)"))
    assert spawn.supervising(run.run_dir)
    supervisor = run.supervisor
    assert supervisor is not None
    os.kill(supervisor.pid, signal.SIGKILL)  # the supervisor alone: its agent works on
    wait_for(lambda: not procs.is_alive(supervisor), "the supervisor to be gone")
    # the fork server closes its copy of the lock's descriptor a moment after the fork
    wait_for(lambda: not spawn.supervising(run.run_dir), "the lock to be free of the agent")
    assert observe(env, run).alive  # by its agent's run marker
    stop = StopRunRequest(lane=env.lane, task="held", attempt=1, iteration=1, grace=2)
    assert StopResult.model_validate(env.call(stop)).was_alive
    assert not observe(env, run).alive


def test_a_fork_server_found_gone_is_started_again(env: Env) -> None:
    first = env.start("first", env.agent("print('one')"))
    assert env.wait_exit(first).exit_code == 0
    server = spawn.FORK_SERVER._proc
    assert server is not None and server.poll() is None
    server.kill()
    server.wait()
    second = env.start("second", env.agent("print('two')"))
    assert env.wait_exit(second).exit_code == 0
    again = spawn.FORK_SERVER._proc
    assert again is not None and again.pid != server.pid
    assert (Path(second.run_dir) / "output.log").read_text() == "two\n"


def test_a_supervisor_that_cannot_start_says_why(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    ws = env.prepare("broken")
    request = env.start_request("broken", env.agent("print('never')"))
    # the worktree vanishes between the request's checks and the fork: the supervisor cannot
    # enter it, and the node reports the line it left in supervisor.log
    real = spawn.FORK_SERVER.ask

    def ask(req: dict[str, object], fds: list[int]) -> None:
        ws.rename(ws.with_name("moved"))
        real(req, fds)

    monkeypatch.setattr(spawn.FORK_SERVER, "ask", ask)
    response = env.respond(request)
    monkeypatch.undo()
    assert not response.ok and response.failure is not None
    assert "failed to start" in response.failure.error
    assert "FileNotFoundError" in response.failure.error, response.failure.error
    ws.with_name("moved").rename(ws)  # the server is unharmed: the next start works
    after = env.start("after", env.agent("print('ok')"))
    assert env.wait_exit(after).exit_code == 0
    assert read_json(str(Path(after.run_dir) / PID_JSON)) is not None
