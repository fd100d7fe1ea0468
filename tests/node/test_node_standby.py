"""The standby queue with real supervisors: a run prepared ahead, started by the supervisor of the
lane's next run to end, withdrawn by a pass, or started by one; exactly one of them takes it."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from reconciler.node import procs, standby, supervisor
from reconciler.node.files import EXIT_JSON, HANDOFF, PID_JSON, read_json
from reconciler.protocol import (
    AgentRef,
    ObserveRequest,
    ObserveResult,
    QueuedResult,
    QueueRunRequest,
    RunObs,
    StopResult,
    StopRunRequest,
    WithdrawResult,
    WithdrawRunRequest,
)
from tests.node.node_support import Env
from tests.support.waiting import wait_for

# Ends once the file its first argument names exists.
UNTIL = (
    "import os, sys, time\n"
    "print('ready', flush=True)\n"
    "while not os.path.exists(sys.argv[1]):\n"
    "    time.sleep(0.01)\n"
)
# Notes whether the supervisor whose pid.json its first argument names was still running when
# this agent started: a standby run's agent must start only once the last one's is gone.
NOTE = (
    "import json, os, sys\n"
    "pid = json.load(open(sys.argv[1]))['pid']\n"
    "try:\n"
    "    state = open(f'/proc/{pid}/stat').read().rpartition(')')[2].split()[0]\n"
    "except OSError:\n"
    "    state = 'gone'\n"
    "print('before me:', 'running' if state not in ('Z', 'X', 'gone') else 'gone', flush=True)\n"
)


def queue(env: Env, name: str, agent: AgentRef, order: str = "1") -> bool:
    env.prepare(name)
    request = QueueRunRequest(run=env.start_request(name, agent), order=order)
    return QueuedResult.model_validate(env.call(request)).queued


def withdraw(env: Env, name: str) -> WithdrawResult:
    request = WithdrawRunRequest(lane=env.lane, task=name, attempt=1, iteration=1)
    return WithdrawResult.model_validate(env.call(request))


def observe(env: Env) -> ObserveResult:
    return ObserveResult.model_validate(env.call(ObserveRequest(lane=env.lane)))


def runs_root(env: Env) -> str:
    return str(env.root / ".runs")


def test_a_queued_run_is_prepared_whole_reported_as_standby_and_not_as_a_run(env: Env) -> None:
    assert queue(env, "later", env.agent("print('hi')"), order="2")
    assert queue(env, "sooner", env.agent("print('hi')"), order="1")
    assert queue(env, "later", env.agent("print('hi')"), order="2")  # idempotent: still one
    seen = observe(env)
    assert [(s.task, s.attempt, s.iteration, s.order) for s in seen.standby] == [
        ("sooner", 1, 1, "1"),
        ("later", 1, 1, "2"),
    ]
    assert seen.runs == []
    [entry] = [e for e in standby.entries(runs_root(env)) if e.task == "later"]
    prepared = env.root / ".runs" / standby.STANDBY_DIR / entry.name
    spec = read_json(str(prepared / "run.json"))
    assert spec is not None
    # written for the place it will run in: its prompt and markers name the run's directory
    final = env.root / ".runs" / "later" / "1.1"
    assert spec["prompt_file"] == str(final / "prompt.md")
    assert (prepared / "prompt.md").read_text() == "do it"
    assert not (prepared / PID_JSON).exists()
    assert not final.exists()


def test_a_withdrawn_run_leaves_nothing_and_a_second_withdrawal_finds_nothing(env: Env) -> None:
    assert queue(env, "gone", env.agent("print('hi')"))
    first = withdraw(env, "gone")
    assert (first.withdrawn, first.started) == (True, False)
    assert observe(env).standby == []
    assert os.listdir(standby.queue_dir(runs_root(env))) == []
    second = withdraw(env, "gone")
    assert (second.withdrawn, second.started) == (False, False)


def test_a_start_of_a_queued_run_takes_it_from_the_queue(env: Env) -> None:
    agent = env.agent("print('started by a pass')")
    assert queue(env, "direct", agent)
    run = RunObs.model_validate(env.call(env.start_request("direct", agent)))
    assert run.supervisor is not None and run.claimed_from is None
    assert observe(env).standby == []
    env.wait_exit(run)
    assert "started by a pass" in (Path(run.run_dir) / "output.log").read_text()
    # once started, the run cannot be queued again, and a withdrawal says it started
    assert not queue(env, "direct", agent)
    assert withdraw(env, "direct").started


def test_exactly_one_of_a_claim_and_a_withdrawal_takes_an_entry(env: Env) -> None:
    assert queue(env, "raced", env.agent("print('hi')"))
    [entry] = standby.entries(runs_root(env))
    taken = standby.take(runs_root(env), entry)
    assert taken is not None
    target, lock = taken
    os.close(lock)
    assert target == str(env.root / ".runs" / "raced" / "1.1")
    result = withdraw(env, "raced")
    assert (result.withdrawn, result.started) == (False, True)
    # the other way round: withdrawn first, the claim finds nothing to take
    assert queue(env, "other", env.agent("print('hi')"))
    [entry] = standby.entries(runs_root(env))
    assert withdraw(env, "other").withdrawn
    assert standby.take(runs_root(env), entry) is None
    assert standby.claim(runs_root(env)) is None


def test_a_claim_passes_over_an_entry_whose_run_exists(env: Env) -> None:
    assert queue(env, "stale", env.agent("print('hi')"), order="1")
    assert queue(env, "fresh", env.agent("print('hi')"), order="2")
    (env.root / ".runs" / "stale" / "1.1").mkdir(parents=True)
    taken = standby.claim(runs_root(env))
    assert taken is not None
    os.close(taken[1])
    assert taken[0].endswith("/fresh/1.1")
    assert [e.task for e in standby.entries(runs_root(env))] == ["stale"]  # left to withdraw


def test_an_agent_that_ends_hands_its_slot_to_the_first_standby_run(env: Env) -> None:
    go = env.tmp / "go"
    first = env.start("first", env.agent(UNTIL, str(go)))
    first_pid = env.root / ".runs" / "first" / "1.1" / PID_JSON
    assert queue(env, "second", env.agent(NOTE, str(first_pid)), order="1")
    assert queue(env, "third", env.agent(NOTE, str(first_pid)), order="2")
    go.touch()
    env.wait_exit(first)
    second_dir = env.root / ".runs" / "second" / "1.1"
    wait_for((second_dir / EXIT_JSON).exists, "the standby run to start and end")
    # the first run's supervisor took the lowest entry, said where its slot went, and went
    # before the new supervisor (another process, of its own session) started the agent
    assert json.loads((Path(first.run_dir) / HANDOFF).read_text()) == {"run": "second/1.1"}
    record = read_json(str(second_dir / PID_JSON))
    assert record is not None
    first_record = read_json(str(first_pid))
    assert first_record is not None
    assert record["claimed_from"] == "first/1.1" and record["pid"] != first_record["pid"]
    assert "before me: gone" in (second_dir / "output.log").read_text()
    # the second run's own end hands over in turn: the third runs, after the second's end
    third_dir = env.root / ".runs" / "third" / "1.1"
    wait_for((third_dir / EXIT_JSON).exists, "the next standby run to start and end")
    assert (read_json(str(third_dir / PID_JSON)) or {})["claimed_from"] == "second/1.1"
    seen = {r.task: r for r in observe(env).runs}
    assert seen["first"].handed_to == "second/1.1" and not seen["first"].alive
    assert seen["second"].claimed_from == "first/1.1"
    exit_info = seen["first"].exit
    assert exit_info is not None and seen["second"].started_at >= exit_info.ended_at
    assert seen["second"].exit is not None and seen["second"].exit.exit_code == 0
    assert observe(env).standby == []


def test_a_stopped_run_hands_nothing_over(env: Env) -> None:
    go = env.tmp / "never"
    first = env.start("stopped", env.agent(UNTIL, str(go)))
    assert queue(env, "waiting", env.agent("print('hi')"))
    stop = StopRunRequest(lane=env.lane, task="stopped", attempt=1, iteration=1, grace=5)
    assert StopResult.model_validate(env.call(stop)).was_alive
    info = env.wait_exit(first)
    assert info.signal is not None
    # the stop freed the slot for the pass that made it: the standby run stays queued
    assert [s.task for s in observe(env).standby] == ["waiting"]
    assert not (Path(first.run_dir) / HANDOFF).exists()
    assert not (env.root / ".runs" / "waiting").exists()


def test_the_new_supervisor_starts_the_agent_only_once_the_old_one_is_gone(env: Env) -> None:
    # The old supervisor is a process the test holds: the new one waits for it, not for time.
    old = subprocess.Popen(["sleep", "3600"])
    try:
        started = procs.start_time(old.pid)
        assert started is not None
        old_pid = env.tmp / "old-pid.json"
        old_pid.write_text(json.dumps({"pid": old.pid}))
        assert queue(env, "next", env.agent(NOTE, str(old_pid)))
        taken = standby.claim(runs_root(env))
        assert taken is not None
        target, lock = taken
        child = os.fork()
        if child == 0:  # as a supervisor forks its successor
            code = 1
            try:
                code = supervisor._take_over(target, lock, (old.pid, started), "old/1.1")
            finally:
                os._exit(code)
        os.close(lock)
        log = Path(target) / "supervisor.log"
        said = b"started at the end of run old/1.1"
        wait_for(lambda: log.exists() and said in log.read_bytes(), "the fork to say it waits")
        assert not (Path(target) / PID_JSON).exists()
        old.kill()
        old.wait()
        wait_for((Path(target) / EXIT_JSON).exists, "the agent to start and end")
        assert "before me: gone" in (Path(target) / "output.log").read_text()
        assert os.waitpid(child, 0)[1] == 0
    finally:
        old.kill()
        old.wait()


def test_what_a_run_says_of_another_run_is_reported_only_as_a_run_s_name(env: Env) -> None:
    """A run's ``pid.json`` and ``handoff.json`` are the lane user's files: what they say of
    another run reaches the reconciler's events and logs, so only a run's name passes."""
    run = env.start("said", env.agent("print('hi')"))
    env.wait_exit(run)
    hostile = "\x1b[2J\x1b]0;pwned\x07other/1.1"
    (Path(run.run_dir) / HANDOFF).write_text(json.dumps({"run": hostile}))
    pid = Path(run.run_dir) / PID_JSON
    pid.write_text(json.dumps({**json.loads(pid.read_text()), "claimed_from": hostile}))
    os.utime(Path(run.run_dir) / EXIT_JSON)  # read anew, not as the ended run kept
    [seen] = observe(env).runs
    assert (seen.handed_to, seen.claimed_from) == (None, None)
    (Path(run.run_dir) / HANDOFF).write_text(json.dumps({"run": "other/1.1"}))
    os.utime(Path(run.run_dir) / EXIT_JSON, ns=(1, 1))
    [seen] = observe(env).runs
    assert seen.handed_to == "other/1.1"
