"""Runs whose supervisor died after the agent ended: what they left, and ``finish-run``.

The agent's end is recorded (``agent-exit.json``) before the supervisor commits and runs the
checks; a supervisor killed during them leaves that record, and ``finish-run`` does the rest in
a finisher: the commit of what is still uncommitted (never a second one), the checks, and
``exit.json`` marked recovered. An output holding the agent's final result (a result event) is
the same evidence where the end was not recorded.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from reconciler.node import procs
from reconciler.node.files import AGENT_EXIT, EXIT_JSON, PID_JSON, read_json
from reconciler.node.spawn import RUN_MARKER
from reconciler.protocol import (
    AgentRef,
    ExitInfo,
    FinishRunRequest,
    ObserveRequest,
    ObserveResult,
    RunObs,
)
from tests.node.node_support import Env
from tests.support.git import git
from tests.support.waiting import wait_for

CLAUDE_FIXTURES = Path(__file__).parent / "agents_fixtures" / "claude"

EDITS = "from pathlib import Path\nPath('feature.txt').write_text('new\\n')\nprint('edited')\n"

# A check that hangs on its first ``argv[2]`` calls (counted in the file ``argv[1]``) and passes
# after: the supervisor (and then a finisher) is killed while it hangs.
HANGS_FIRST = (
    "import sys, time\n"
    "from pathlib import Path\n"
    "count = Path(sys.argv[1])\n"
    "calls = len(count.read_text()) if count.exists() else 0\n"
    "count.write_text('x' * (calls + 1))\n"
    "if calls < int(sys.argv[2]):\n"
    "    time.sleep(120)\n"
)


def observe(env: Env, key: str) -> RunObs:
    req = ObserveRequest(lane=env.lane, inspect=[key])
    task, _, run = key.partition("/")
    [found] = [
        r
        for r in ObserveResult.model_validate(env.call(req)).runs
        if (r.task, f"{r.attempt}.{r.iteration}") == (task, run)
    ]
    return found


def calls(path: Path) -> int:
    return len(path.read_text()) if path.exists() else 0


def kill_run(env: Env, key: str, run_dir: str) -> None:
    """SIGKILL every process of the run: the supervisor or finisher ``pid.json`` names, and the
    check it waits on (which carries the run's marker)."""
    record = read_json(str(Path(run_dir) / PID_JSON)) or {}
    supervisor = procs.fingerprint(int(str(record["pid"])))
    # The supervisor first: a check killed first would let it go on to write exit.json.
    if supervisor is not None and supervisor.start_time == record["start_time"]:
        os.kill(supervisor.pid, signal.SIGKILL)
    for pid in procs.pids_with_env(RUN_MARKER, run_dir):
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not observe(env, key).alive, f"run {key} to be gone")


def unrecord_end(run: RunObs, *names: str) -> None:
    """Make an ended run look as though its supervisor died before writing ``names``."""
    supervisor = run.supervisor
    assert supervisor is not None
    wait_for(lambda: not procs.is_alive(supervisor), "the supervisor to exit")
    for name in names:
        (Path(run.run_dir) / name).unlink()


def finish(env: Env, task: str, exit_code: int = 0) -> RunObs:
    req = FinishRunRequest(lane=env.lane, task=task, attempt=1, iteration=1, exit_code=exit_code)
    return RunObs.model_validate(env.call(req))


def ahead(env: Env, task: str) -> int:
    return int(git(env.workspace(task), "rev-list", "--count", "origin/main..HEAD"))


def test_a_run_killed_in_its_checks_is_finished_once_with_one_commit(env: Env) -> None:
    count = env.tmp / "check-calls"
    check = [*env.script("check.py", HANGS_FIRST), str(count), "2"]
    agent = AgentRef(kind="command", command=env.script("edits.py", EDITS), commits="reconciler")
    run = env.start("done", agent, checks=[check])
    # The supervisor committed the agent's changes, then hangs in the check: kill it there.
    wait_for(lambda: calls(count) == 1, "the first check to start")
    assert ahead(env, "done") == 1
    kill_run(env, "done/1.1", run.run_dir)

    seen = observe(env, "done/1.1")
    assert seen.exit is None and not seen.alive
    assert seen.left is not None and seen.left.agent_end is not None
    assert (seen.left.agent_end.exit_code, seen.left.agent_end.presumed) == (0, False)
    assert seen.left.finishes == 0
    assert seen.left.final_result is None  # a command's output tells no end; its record does
    assert seen.commits_ahead == 1

    # A finisher takes the run over (alive again, its agent's deadlines over) and is killed in
    # the check in turn: the run is as it was, one finish further.
    taken = finish(env, "done")
    assert taken.alive and taken.exit is None and taken.finishing_since is not None
    wait_for(lambda: calls(count) == 2, "the finisher's check to start")
    kill_run(env, "done/1.1", run.run_dir)
    again = observe(env, "done/1.1")
    assert again.left is not None and again.left.finishes == 1 and again.exit is None

    finish(env, "done")
    info = env.wait_exit(run)
    assert info.recovered == "recorded"
    assert info.exit_code == 0 and info.signal is None
    assert [c.exit_code for c in info.checks] == [0]
    assert info.commit is None  # the changes were committed already: nothing left to commit
    assert ahead(env, "done") == 1
    ended = observe(env, "done/1.1")
    assert ended.result is not None and ended.result.ok and ended.left is None
    assert "finishing the run" in (Path(run.run_dir) / "checks.log").read_text()

    # Finishing an ended run does nothing: no new exit record, no commit, no check.
    before = (Path(run.run_dir) / EXIT_JSON).read_bytes()
    assert finish(env, "done").exit == info
    assert (Path(run.run_dir) / EXIT_JSON).read_bytes() == before
    assert ahead(env, "done") == 1 and calls(count) == 3


def test_changes_left_uncommitted_are_committed_by_the_finish(env: Env) -> None:
    """Killed after the agent's end was recorded and before its commit: the finish commits."""
    agent = AgentRef(kind="command", command=env.script("edits.py", EDITS), commits="reconciler")
    run = env.start("late", agent)
    env.wait_exit(run)
    # As a supervisor killed before its commit leaves it: the agent's end, no commit, no exit.
    git(env.workspace("late"), "reset", "-q", "HEAD~1", "--mixed")
    unrecord_end(run, EXIT_JSON)
    assert ahead(env, "late") == 0
    # ... and killed inside `git commit`, which leaves the worktree's index locked
    lock = env.workspace("late") / git(
        env.workspace("late"), "rev-parse", "--git-path", "index.lock"
    )
    lock.write_text("")

    finish(env, "late")
    info = env.wait_exit(run)
    assert info.commit is not None and info.commit.exit_code == 0
    assert info.recovered == "recorded"
    assert ahead(env, "late") == 1
    assert git(env.workspace("late"), "status", "--porcelain") == ""
    assert not lock.exists()


def test_a_commit_made_before_its_index_was_written_is_not_made_again(env: Env) -> None:
    """Killed inside `git commit` after the branch moved, before the new index replaced the old:
    the worktree matches HEAD, the index does not; the finish commits nothing."""
    agent = AgentRef(kind="command", command=env.script("edits.py", EDITS), commits="reconciler")
    run = env.start("torn", agent)
    env.wait_exit(run)
    unrecord_end(run, EXIT_JSON)
    git(env.workspace("torn"), "read-tree", "HEAD~1")
    assert git(env.workspace("torn"), "status", "--porcelain") != ""

    finish(env, "torn")
    info = env.wait_exit(run)
    assert info.commit is None and info.recovered == "recorded"
    assert ahead(env, "torn") == 1
    assert git(env.workspace("torn"), "status", "--porcelain") == ""


def test_an_end_not_recorded_is_presumed_from_the_request(env: Env) -> None:
    run = env.start("presumed", env.agent("print('TASK_COMPLETE')"))
    env.wait_exit(run)
    unrecord_end(run, EXIT_JSON, AGENT_EXIT)  # a supervisor killed as the agent exited
    seen = observe(env, "presumed/1.1")
    assert seen.left is not None and seen.left.agent_end is None

    finish(env, "presumed", exit_code=0)
    info = env.wait_exit(run)
    assert info.recovered == "presumed" and info.exit_code == 0
    end = read_json(str(Path(run.run_dir) / AGENT_EXIT))
    assert end is not None and end["presumed"] is True


def test_a_run_that_is_alive_or_never_started_is_not_finished(env: Env) -> None:
    run = env.start("busy", env.agent("import time\nprint('ready', flush=True)\ntime.sleep(60)"))
    assert finish(env, "busy").supervisor == run.supervisor  # the live supervisor is left alone
    assert not (Path(run.run_dir) / AGENT_EXIT).exists()
    response = env.respond(FinishRunRequest(lane=env.lane, task="nothing", attempt=1, iteration=1))
    assert not response.ok and response.failure is not None
    assert "does not exist" in response.failure.error


def dead_run(env: Env, task: str, agent: AgentRef, output: bytes) -> str:
    """A run directory as a run whose every process died leaves it: no exit record."""
    workspace = env.prepare(task)
    run_dir = env.root / ".runs" / task / "1.1"
    run_dir.mkdir(parents=True)
    spec = {
        "task": env.task(task).model_dump(mode="json"),
        "attempt": 1,
        "iteration": 1,
        "generation": "g1",
        "agent": agent.model_dump(mode="json"),
        "workspace": str(workspace),
        "started_at": 1.0,
        "argv": ["true"],
        "agent_env": {},
    }
    (run_dir / "run.json").write_text(json.dumps(spec))
    dead = {"boot_id": procs.boot_id(), "pid": os.getpid(), "start_time": 0, "agent_pid": None}
    (run_dir / PID_JSON).write_text(json.dumps(dead))
    (run_dir / "output.log").write_bytes(output)
    return str(run_dir)


def test_an_output_holding_the_agents_final_result_is_reported(env: Env) -> None:
    claude = AgentRef(kind="claude")
    success = (CLAUDE_FIXTURES / "success.jsonl").read_bytes()
    dead_run(env, "finished", claude, success)
    left = observe(env, "finished/1.1").left
    assert left is not None and left.final_result is not None
    assert left.final_result.ok and left.final_result.subtype == "success"

    failed = (CLAUDE_FIXTURES / "max_turns.jsonl").read_bytes()
    dead_run(env, "gave-up", claude, failed)
    left = observe(env, "gave-up/1.1").left
    assert left is not None and left.final_result is not None and not left.final_result.ok

    cut = (CLAUDE_FIXTURES / "cut_off.jsonl").read_bytes()
    dead_run(env, "cut", claude, cut)
    left = observe(env, "cut/1.1").left
    assert left is not None and left.final_result is None  # killed mid-work: no result

    dead_run(env, "command", env.agent("print(1)"), b"all done\n")
    left = observe(env, "command/1.1").left
    assert left is not None and left.final_result is None and left.agent_end is None


def test_the_supervisor_records_the_agents_end_before_its_checks(env: Env) -> None:
    run = env.start("recorded", env.agent("import sys\nsys.exit(3)"), checks=[["true"]])
    info: ExitInfo = env.wait_exit(run)
    end = read_json(str(Path(run.run_dir) / AGENT_EXIT))
    assert end is not None
    assert (end["exit_code"], end["presumed"]) == (3, False)
    assert end["ended_at"] == info.ended_at and info.recovered is None
