"""Runs with real agent processes: prompts, checks, signals, stop, idempotency, environment."""

from __future__ import annotations

import json
import os
import pwd
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler import gitfiles
from reconciler.node import files, procs, spawn
from reconciler.node import runs as node_runs
from reconciler.node.files import EXIT_JSON, PID_JSON, read_json
from reconciler.node.runs import agent_env
from reconciler.protocol import (
    AgentRef,
    Fingerprint,
    LogResult,
    ObserveRequest,
    ObserveResult,
    PrunedResult,
    PruneRunsRequest,
    ReadLogRequest,
    RunObs,
    StopResult,
    StopRunRequest,
)
from tests.node.node_support import SETTLED_NS, Env, older_than_window
from tests.support.git import commit, git
from tests.support.waiting import wait_for

TRICKY = (
    "He said \"don't\" & it's $HOME `uname` $(echo pwned) \\n; rm -rf / #\n"
    "second line\twith tab\n"
    "ünïcødé ✓ 日本語 🚀\n"
    "no trailing newline"
)

ECHO_STDIN = "import sys\nsys.stdout.buffer.write(sys.stdin.buffer.read())\n"
ECHO_FILE = (
    "import sys\n"
    "data = open(sys.argv[1], 'rb').read()\n"
    "rest = sys.stdin.buffer.read()\n"
    "sys.stdout.buffer.write(data)\n"
    "sys.stderr.write(f'stdin had {len(rest)} bytes')\n"
)
SLEEP = "import sys, time\nprint('ready', flush=True)\ntime.sleep(60)\n"


def observe(env: Env, *inspect: str) -> ObserveResult:
    req = ObserveRequest(lane=env.lane, inspect=list(inspect))
    return ObserveResult.model_validate(env.call(req))


def run_obs(env: Env, key: str) -> RunObs:
    task, rest = key.split("/")
    a, i = (int(x) for x in rest.split("."))
    [run] = [r for r in observe(env, key).runs if (r.task, r.attempt, r.iteration) == (task, a, i)]
    return run


def wait_ready(run: RunObs) -> None:
    log = Path(run.run_dir) / "output.log"
    wait_for(lambda: b"ready" in log.read_bytes(), f"{run.task}'s agent to say it is ready")


def pid_record(run: RunObs) -> dict[str, object]:
    record = read_json(str(Path(run.run_dir) / PID_JSON))
    assert record is not None
    return record


def count_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths the node reads JSON from from now on (``files.read_json``, which run reads go
    through)."""
    reads: list[str] = []
    original = files.read_json

    def counting(path: str) -> dict[str, object] | None:
        reads.append(path)
        record: dict[str, object] | None = original(path)
        return record

    monkeypatch.setattr(files, "read_json", counting)
    return reads


def test_an_ended_run_is_read_once_and_again_only_when_its_exit_record_changes(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:

    started = env.start("once", AgentRef(kind="command", command=env.script("q.py", "print(1)")))
    env.wait_exit(started)
    supervisor = started.supervisor
    assert supervisor is not None
    wait_for(lambda: not procs.is_alive(supervisor), "the supervisor's exit")
    first = [r for r in observe(env).runs if r.task == "once"]
    assert [r.exit.exit_code for r in first if r.exit] == [0]
    reads = count_reads(monkeypatch)
    again = [r for r in observe(env).runs if r.task == "once"]
    assert again == first
    assert not [p for p in reads if started.run_dir in p]  # nothing of the ended run was read
    # an inspection reads it (the verdict and the worktree), and a changed exit record is read
    assert run_obs(env, "once/1.1").result is not None
    record = Path(started.run_dir) / EXIT_JSON
    data = json.loads(record.read_text())
    record.unlink()  # a new file: a new identity
    record.write_text(json.dumps({**data, "exit_code": 7}))
    changed = [r for r in observe(env).runs if r.task == "once"]
    assert [r.exit.exit_code for r in changed if r.exit] == [7]


def test_prompt_arrives_byte_exact_on_stdin(env: Env) -> None:
    run = env.start("stdin-prompt", env.agent(ECHO_STDIN), TRICKY)
    info = env.wait_exit(run)
    assert info.exit_code == 0
    assert info.signal is None
    assert (Path(run.run_dir) / "output.log").read_bytes() == TRICKY.encode("utf-8")
    prompt = Path(run.run_dir) / "prompt.md"
    assert prompt.read_bytes() == TRICKY.encode("utf-8")
    assert stat.S_IMODE(prompt.stat().st_mode) == 0o600
    assert stat.S_IMODE(Path(run.run_dir).stat().st_mode) == 0o700


def test_prompt_arrives_byte_exact_by_path(env: Env) -> None:
    agent = env.agent(ECHO_FILE, "{prompt_file}")
    run = env.start("file-prompt", agent, TRICKY)
    info = env.wait_exit(run)
    assert info.exit_code == 0
    assert (Path(run.run_dir) / "output.log").read_bytes() == TRICKY.encode("utf-8")
    # With the placeholder in the argv the prompt is not also fed on stdin.
    assert (Path(run.run_dir) / "stderr.log").read_text() == "stdin had 0 bytes"
    spec = json.loads((Path(run.run_dir) / "run.json").read_text())
    assert spec["argv"][-1] == str(Path(run.run_dir) / "prompt.md")
    assert "prompt" not in spec
    assert "lane" not in spec
    assert spec["workspace"] == str(env.workspace("file-prompt"))
    assert spec["repo"] == "webapp"


TMP_PROBE = """
import os, stat, sys
tmp = os.environ["TMPDIR"]
print(tmp, oct(stat.S_IMODE(os.stat(tmp).st_mode)))
open(os.path.join(tmp, "conversation.json"), "w").write("private")
"""


def test_each_run_has_its_own_private_tmpdir_removed_at_its_end(env: Env) -> None:
    # gemini writes the whole conversation to $TMPDIR on an API error, world-readable
    run = env.start("tmp", env.agent(TMP_PROBE))
    assert env.wait_exit(run).exit_code == 0
    tmp = Path(run.run_dir) / "tmp"
    assert (Path(run.run_dir) / "output.log").read_text() == f"{tmp} 0o700\n"
    assert not tmp.exists()  # what the agent left there is no record of the run


def test_checks_pass_fail_and_time_out(env: Env) -> None:
    checks = [
        [sys.executable, "-c", "import os; print('ok in', os.getcwd())"],
        [sys.executable, "-c", "import sys; print('bad'); sys.exit(3)"],
        [sys.executable, "-c", "import time; print('sleeping', flush=True); time.sleep(30)"],
        ["definitely-not-a-command-xyz"],
    ]
    run = env.start("checks", env.agent("print('done')"), checks=checks, check_timeout=1.0)
    info = env.wait_exit(run)
    assert info.exit_code == 0
    passed, failed, slow, missing = info.checks
    assert passed.exit_code == 0
    assert not passed.timed_out
    assert f"ok in {env.workspace('checks')}" in passed.output_tail
    assert failed.exit_code == 3
    assert "bad" in failed.output_tail
    assert slow.timed_out
    assert slow.exit_code is None
    assert 0.9 <= slow.duration < 10
    assert "sleeping" in slow.output_tail
    assert missing.exit_code is None
    assert "could not start" in missing.output_tail
    log = (Path(run.run_dir) / "checks.log").read_text()
    assert "ok in" in log
    assert "bad" in log


def test_agent_killed_by_signal_records_signal_and_skips_checks(env: Env) -> None:
    agent = env.agent("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n")
    run = env.start("self-kill", agent, checks=[["true"]])
    info = env.wait_exit(run)
    assert info.exit_code is None
    assert info.signal == 9
    assert info.checks == []


def test_killing_the_whole_group_leaves_no_exit_record(env: Env) -> None:
    run = env.start("group-kill", env.agent(SLEEP))
    assert run.supervisor is not None
    assert run.alive
    wait_ready(run)
    os.killpg(run.supervisor.pid, signal.SIGKILL)
    wait_for(lambda: not run_obs(env, "group-kill/1.1").alive, "the run to die")
    supervisor = run.supervisor
    wait_for(lambda: not procs.is_alive(supervisor), "the supervisor to die")  # or write exit.json
    seen = run_obs(env, "group-kill/1.1")
    assert seen.exit is None
    assert not (Path(run.run_dir) / EXIT_JSON).exists()


def test_an_agent_outliving_its_killed_supervisor_keeps_the_run_alive(env: Env) -> None:
    """Only the supervisor is killed: the agent works on in the worktree, so the run is not
    over (a new run beside it would be a second agent there) until a stop ends the agent."""
    run = env.start("orphan", env.agent(SLEEP))
    assert run.supervisor is not None
    wait_ready(run)
    agent_pid = pid_record(run)["agent_pid"]
    assert isinstance(agent_pid, int)
    os.kill(run.supervisor.pid, signal.SIGKILL)
    supervisor = run.supervisor
    wait_for(lambda: not procs.is_alive(supervisor), "the supervisor to die")
    seen = run_obs(env, "orphan/1.1")
    assert seen.alive and seen.exit is None
    read = ReadLogRequest(lane=env.lane, task="orphan", attempt=1, iteration=1)
    assert not LogResult.model_validate(env.call(read)).ended
    stop = StopRunRequest(lane=env.lane, task="orphan", attempt=1, iteration=1, grace=2)
    assert StopResult.model_validate(env.call(stop)).was_alive
    agent = procs.fingerprint(agent_pid)
    assert agent is None or not procs.is_alive(agent)  # gone, or a zombie nobody reaped yet
    seen = run_obs(env, "orphan/1.1")
    assert not seen.alive and seen.exit is not None and seen.exit.signal == signal.SIGKILL
    assert LogResult.model_validate(env.call(read)).ended


def test_stop_run_kills_a_hanging_agent_and_is_idempotent(env: Env) -> None:
    run = env.start("hang", env.agent(SLEEP))
    wait_ready(run)
    agent_pid = pid_record(run)["agent_pid"]
    assert isinstance(agent_pid, int)
    stop = StopRunRequest(lane=env.lane, task="hang", attempt=1, iteration=1, grace=5)
    assert StopResult.model_validate(env.call(stop)).was_alive
    info = env.wait_exit(run, timeout=2)
    assert info.signal == signal.SIGTERM
    assert info.checks == []
    assert procs.start_time(agent_pid) is None or not procs.group_members(agent_pid)
    assert not run_obs(env, "hang/1.1").alive
    assert not StopResult.model_validate(env.call(stop)).was_alive


def test_stop_run_escalates_to_kill_when_term_is_ignored(env: Env) -> None:
    code = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    run = env.start("stubborn", env.agent(code))
    wait_ready(run)
    stop = StopRunRequest(lane=env.lane, task="stubborn", attempt=1, iteration=1, grace=0.3)
    assert StopResult.model_validate(env.call(stop)).was_alive  # returns once the agent died
    seen = run_obs(env, "stubborn/1.1")
    assert not seen.alive
    assert seen.exit is not None
    assert seen.exit.signal == signal.SIGKILL


def test_stop_run_also_kills_children_that_left_the_group(env: Env) -> None:
    code = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'],"
        " start_new_session=True)\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    run = env.start("escape", env.agent(code))
    log = Path(run.run_dir) / "output.log"
    wait_for(lambda: log.read_text().strip().isdigit(), "the escaped child's pid")
    child = int(log.read_text())
    child_fp = procs.fingerprint(child)
    assert child_fp is not None
    stop = StopRunRequest(lane=env.lane, task="escape", attempt=1, iteration=1, grace=2)
    assert StopResult.model_validate(env.call(stop)).was_alive
    wait_for(lambda: not procs.is_alive(child_fp), "the escaped child to die", timeout=5)


def test_files_in_the_workspace_cannot_hijack_the_supervisor(env: Env) -> None:
    ws = env.prepare("hijack")
    for name in ("reconciler", "pydantic"):
        (ws / name).mkdir()
        (ws / name / "__init__.py").write_text("raise SystemExit('hijacked')\n")
    # modules the supervisor imports only once the agent runs, and site's own hook
    for name in ("subprocess", "shlex", "shutil", "traceback", "sitecustomize"):
        (ws / f"{name}.py").write_text("raise SystemExit('hijacked')\n")
    check = [sys.executable, "-c", "print('checked')"]
    run = env.start("hijack", env.agent("print('fine')"), checks=[check])
    info = env.wait_exit(run)
    assert info.exit_code == 0
    assert [c.exit_code for c in info.checks] == [0]
    assert (Path(run.run_dir) / "output.log").read_text() == "fine\n"


def test_the_agent_starts_as_a_fresh_process_would(env: Env) -> None:
    """Found on its own PATH, in its workspace, with the signals Python ignores at their default
    and no descriptor of the supervisor's (the pipe it tells the node through) but the three."""
    env.prepare("fresh")
    bindir = env.tmp / "agent-bin"
    bindir.mkdir()
    agent = bindir / "fresh-agent"
    # its stdio are files, so any pipe it holds is the supervisor's
    agent.write_text("#!/bin/sh\npwd; grep SigIgn /proc/self/status; ls -l /proc/self/fd\n")
    agent.chmod(0o755)
    ref = AgentRef(kind="command", command=["fresh-agent"], env={"PATH": f"{bindir}:/usr/bin:/bin"})
    run = env.start("fresh", ref)
    assert env.wait_exit(run).exit_code == 0
    cwd, ignored, *fds = (Path(run.run_dir) / "output.log").read_text().splitlines()
    assert cwd == str(env.workspace("fresh"))
    mask = int(ignored.split()[1], 16)
    for signum in (signal.SIGPIPE, signal.SIGXFSZ):
        assert not mask & (1 << (signum - 1)), f"{signum!r} is ignored in the agent"
    assert [line for line in fds if "pipe:" in line] == []
    assert len([line for line in fds if " -> " in line]) == 4, fds  # 0, 1, 2 and ls's listing


def test_start_run_twice_starts_one_process(env: Env) -> None:
    counter = env.tmp / "starts.txt"
    code = (
        f"open({str(counter)!r}, 'a').write('started\\n')\n"
        "import time\nprint('ready', flush=True)\ntime.sleep(60)\n"
    )
    agent = env.agent(code)
    first = env.start("twice", agent)
    second = env.start("twice", agent)
    assert first.supervisor == second.supervisor
    assert first.started_at == second.started_at
    wait_ready(first)
    assert counter.read_text() == "started\n"
    assert first.supervisor is not None
    members = procs.group_members(first.supervisor.pid)
    agent_pid = pid_record(first)["agent_pid"]
    assert isinstance(agent_pid, int)
    assert sorted(members) == sorted([first.supervisor.pid, agent_pid])


def test_supervisor_is_detached_and_leaves_no_zombie(env: Env) -> None:
    run = env.start("detached", env.agent(SLEEP))
    assert run.supervisor is not None
    pid = run.supervisor.pid
    assert os.getsid(pid) == pid  # its own session, so it outlives the reconciler's
    assert os.getpgid(pid) == pid
    server = spawn.FORK_SERVER._proc
    assert server is not None
    with open(f"/proc/{pid}/stat") as f:
        ppid = int(f.read().rpartition(")")[2].split()[1])
    # no descendant of the node: what ends the node's process tree (an ssh connection's end)
    # leaves the run going
    assert ppid not in (os.getpid(), server.pid)
    wait_for(lambda: not zombies_of({os.getpid(), server.pid}), "the middle child to be reaped")


def zombies_of(parents: set[int]) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if fields[0] == "Z" and int(fields[1]) in parents:
                found.append(int(entry))
    return found


def test_tampered_fingerprint_is_not_alive(env: Env) -> None:
    """A recorded pid now held by another process (a reused pid) is not the run: the start
    time does not match, and the process does not carry the run's marker."""
    run = env.start("tamper", env.agent(SLEEP))
    assert run_obs(env, "tamper/1.1").alive
    path = Path(run.run_dir) / PID_JSON
    record = json.loads(path.read_text())
    os.killpg(record["pid"], signal.SIGKILL)  # the run's own processes are gone…
    wait_for(lambda: not procs.group_members(record["pid"]), "the run's group to die")
    other = subprocess.Popen(["sleep", "60"])  # …and its pid went to someone else
    try:
        other_start = procs.start_time(other.pid)
        assert other_start is not None
        record.update(pid=other.pid, start_time=other_start + 1)
        path.write_text(json.dumps(record))
        seen = run_obs(env, "tamper/1.1")
        assert not seen.alive
        assert seen.supervisor is not None
        assert seen.supervisor.pid == other.pid
        assert procs.start_time(other.pid) is not None  # the process itself still runs
    finally:
        other.kill()
        other.wait()


def test_agent_environment_is_clean_and_recorded_redacted(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_SECRET_TOKEN", "must-not-leak")
    monkeypatch.setenv("CLAUDECODE", "1")
    code = "import json, os\nprint(json.dumps(dict(os.environ)))\n"
    agent = env.agent(code, env={"AGENT_API_KEY": "sekrit", "AGENT_MODE": "fast"})
    run = env.start("envcheck", agent, env={"RUN_MARK": "m1"}, attempt=2, iteration=3)
    env.wait_exit(run)
    seen = json.loads((Path(run.run_dir) / "output.log").read_text())
    user = pwd.getpwuid(os.getuid())
    assert "FAKE_SECRET_TOKEN" not in seen
    assert "CLAUDECODE" not in seen
    assert seen["HOME"] == os.path.expanduser("~")  # the lane's home, where ~ resolves
    assert seen["USER"] == user.pw_name
    from reconciler.node.loginenv import login_env

    assert seen["PATH"] == login_env().env["PATH"]  # the lane user's login PATH
    assert seen["LANG"] == "C.UTF-8"
    assert seen["NODE_ENV"] == "test"
    assert seen["AGENT_API_KEY"] == "sekrit"
    assert seen["RUN_MARK"] == "m1"
    assert seen["RECONCILER_TASK"] == "envcheck"
    assert seen["RECONCILER_ATTEMPT"] == "2"
    assert seen["RECONCILER_ITERATION"] == "3"
    assert seen["RECONCILER_RUN_DIR"] == run.run_dir
    assert seen["RECONCILER_WORKSPACE"] == str(env.workspace("envcheck"))
    assert seen["RECONCILER_PROMPT_FILE"] == str(Path(run.run_dir) / "prompt.md")
    recorded = json.loads((Path(run.run_dir) / "env.json").read_text())
    assert recorded["AGENT_API_KEY"] == "<redacted>"
    assert recorded["AGENT_MODE"] == "fast"
    assert recorded["NODE_ENV"] == "test"
    assert "sekrit" not in (Path(run.run_dir) / "env.json").read_text()
    assert set(recorded) == set(seen) - {"PWD"}  # PWD may be added by nothing but a shell


def test_claude_adapter_strips_its_nesting_variables() -> None:
    agent = AgentRef(kind="claude", env={"CLAUDECODE": "1", "SOME_PASSWORD": "x"})
    from reconciler.node.agents import ADAPTERS

    env = agent_env({"CLAUDE_CODE_ENTRYPOINT": "cli"}, agent, strip=ADAPTERS["claude"].strip_env)
    assert "CLAUDECODE" not in env
    assert "CLAUDE_CODE_ENTRYPOINT" not in env
    assert env["SOME_PASSWORD"] == "x"


def test_the_agent_gets_the_lane_users_git_identity_where_its_env_sets_none(env: Env) -> None:
    """As ``git config --get`` answers in its worktree (a key's last value), for each variable
    the agent's own environment leaves unset."""
    git(env.checkout, "config", "--add", "user.name", "Second Name")  # the last value counts
    code = (
        "import json, os; print(json.dumps({k: v for k, v in os.environ.items() if 'GIT_' in k}))"
    )
    agent = env.agent(code, env={"GIT_AUTHOR_EMAIL": "preset@example.invalid"})
    run = env.start("ident", agent)
    env.wait_exit(run)
    seen = json.loads((Path(run.run_dir) / "output.log").read_text())
    assert seen == {
        "GIT_AUTHOR_NAME": "Second Name",
        "GIT_COMMITTER_NAME": "Second Name",
        "GIT_AUTHOR_EMAIL": "preset@example.invalid",
        "GIT_COMMITTER_EMAIL": "lane@example.invalid",
    }


def test_missing_agent_binary_ends_with_127(env: Env) -> None:
    agent = AgentRef(kind="command", command=["no-such-agent-binary-xyz"])
    run = env.start("nobinary", agent)
    info = env.wait_exit(run)
    assert info.exit_code == 127
    assert "no-such-agent-binary-xyz" in (Path(run.run_dir) / "stderr.log").read_text()


def test_start_run_without_workspace_fails_clearly(env: Env) -> None:
    response = env.respond(env.start_request("noworkspace", env.agent("print(1)")))
    assert not response.ok
    assert response.failure is not None
    assert "prepare the workspace" in response.failure.error


def test_observe_inspects_an_ended_run(env: Env) -> None:
    code = (
        "import pathlib, subprocess\n"
        "pathlib.Path('feature.txt').write_text('new\\n')\n"
        "ident = ['-c', 'user.name=Agent', '-c', 'user.email=agent@example.invalid']\n"
        "subprocess.run(['git', *ident, 'add', 'feature.txt'], check=True)\n"
        "subprocess.run(['git', *ident, 'commit', '-q', '-m', 'feature'], check=True)\n"
        "pathlib.Path('junk.txt').write_text('junk')\n"
        "print('all done TASK_COMPLETE')\n"
    )
    run = env.start("inspected", env.agent(code))
    env.wait_exit(run)
    plain = run_obs_plain(env, "inspected")
    assert plain.result is None
    assert plain.commits_ahead is None
    seen = run_obs(env, "inspected/1.1")
    assert seen.exit is not None
    assert seen.exit.exit_code == 0
    assert seen.result is not None
    assert seen.result.ok
    assert "TASK_COMPLETE" in seen.result.final_text
    assert seen.commits_ahead == 1
    assert seen.dirty == ["?? junk.txt"]
    assert seen.output_bytes == len("all done TASK_COMPLETE\n")
    assert seen.last_output_at is not None
    assert seen.generation == "g1"
    assert seen.repo == "webapp"


def run_obs_plain(env: Env, task: str) -> RunObs:
    [run] = [r for r in observe(env).runs if r.task == task]
    return run


def test_read_log_streams_whole_characters(env: Env) -> None:
    text = "héllo wörld ✓\n" * 3
    run = env.start("logs", env.agent(f"print({text!r}, end='')"))
    env.wait_exit(run)
    data, offset, ended = "", 0, False
    while not ended:
        req = ReadLogRequest(
            lane=env.lane, task="logs", attempt=1, iteration=1, offset=offset, limit=5
        )
        chunk = LogResult.model_validate(env.call(req))
        assert "\ufffd" not in chunk.data  # never a split character
        assert chunk.offset > offset or chunk.ended
        data, offset, ended = data + chunk.data, chunk.offset, chunk.ended
    assert data == text
    assert offset == len(text.encode())


def test_read_log_of_a_running_run_is_not_ended(env: Env) -> None:
    run = env.start("livelog", env.agent(SLEEP))
    wait_ready(run)
    req = ReadLogRequest(lane=env.lane, task="livelog", attempt=1, iteration=1)
    chunk = LogResult.model_validate(env.call(req))
    assert chunk.data == "ready\n"
    assert not chunk.ended


def test_run_survives_the_fingerprint_of_its_supervisor(env: Env) -> None:
    run = env.start("fp", env.agent("print('x')"))
    assert isinstance(run.supervisor, Fingerprint)
    assert run.supervisor.boot_id == procs.boot_id()
    env.wait_exit(run)
    wait_for(lambda: not run_obs(env, "fp/1.1").alive, "the supervisor to exit")


def test_branches_and_worktrees_in_repo_observation(env: Env) -> None:
    ws = env.prepare("ahead")
    commit(ws, "a.txt", "a\n")
    commit(ws, "b.txt", "b\n")
    env.prepare("level")
    req = ObserveRequest(lane=env.lane)
    result = ObserveResult.model_validate(env.call(req))
    repo = result.repos["webapp"]
    assert repo.ok
    assert repo.branches["agent/level"] == git(env.checkout, "rev-parse", "main")
    assert set(repo.branches) == {"agent/ahead", "agent/level"}
    assert repo.branches["agent/ahead"] == git(ws, "rev-parse", "HEAD")
    assert {Path(w.path).name for w in repo.worktrees} == {"ahead", "level"}
    assert repo.prs == []


def test_settled_runs_are_left_out_unread_and_not_kept(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = AgentRef(kind="command", command=env.script("q.py", "print(1)"))
    ended = []
    for attempt in (1, 2, 3):
        run = env.start("hist", agent, attempt=attempt)
        env.wait_exit(run)
        ended.append(run)
    supervisors = [r.supervisor for r in ended if r.supervisor is not None]
    assert len(supervisors) == 3
    wait_for(lambda: not any(map(procs.is_alive, supervisors)), "the supervisors' exit")
    assert [(r.attempt, r.iteration) for r in observe(env).runs if r.task == "hist"] == [
        (1, 1),
        (2, 1),
        (3, 1),
    ]
    assert any(d.startswith(ended[0].run_dir) for d in node_runs._ENDED)
    reads = count_reads(monkeypatch)
    req = ObserveRequest(lane=env.lane, settled={"hist": (2, 1)})
    left = ObserveResult.model_validate(env.call(req)).runs
    assert [(r.attempt, r.iteration) for r in left if r.task == "hist"] == [(3, 1)]
    assert not [p for p in reads if p.startswith((ended[0].run_dir, ended[1].run_dir))]
    # what the node held of the settled runs is let go; their directories stay
    assert ended[0].run_dir not in node_runs._ENDED
    assert ended[1].run_dir not in node_runs._ENDED
    assert ended[2].run_dir in node_runs._ENDED
    assert all(os.path.isdir(r.run_dir) for r in ended)


def test_prune_removes_only_ended_runs_directories(env: Env) -> None:
    quick = AgentRef(kind="command", command=env.script("q.py", "print(1)"))
    done = env.start("old", quick)
    env.wait_exit(done)
    supervisor = done.supervisor
    assert supervisor is not None
    wait_for(lambda: not procs.is_alive(supervisor), "the supervisor's exit")
    live = env.start("busy", AgentRef(kind="command", command=env.script("s.py", SLEEP)))
    wait_ready(live)
    elsewhere = env.root / "precious"
    elsewhere.mkdir()
    req = PruneRunsRequest(lane=env.lane, runs=["old/1.1", "busy/1.1", "gone/3.1"])
    result = PrunedResult.model_validate(env.call(req))
    assert result.removed == ["old/1.1", "gone/3.1"]  # one gone already counts as removed
    assert result.kept == {"busy/1.1": "the run is not over"}
    assert not Path(done.run_dir).exists() and not Path(done.run_dir).parent.exists()
    assert Path(live.run_dir).is_dir() and elsewhere.is_dir()
    # a name that is no run is refused whole, and nothing outside the runs is touched
    bad = env.respond(PruneRunsRequest(lane=env.lane, runs=["../precious/1.1"]))
    assert not bad.ok and bad.failure is not None and "not of the form" in bad.failure.error
    assert elsewhere.is_dir()
    stop = StopRunRequest(lane=env.lane, task="busy", attempt=1, iteration=1, grace=2)
    env.call(stop)


def test_an_unchanged_task_directory_is_read_from_what_was_listed(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pass lists each task's directory only when it changed: a settled one is known from
    its last listing, and a run added or removed since is seen at once."""
    monkeypatch.setattr(gitfiles, "RACY_NS", SETTLED_NS)
    agent = env.agent("print('done')")
    env.prepare("t")
    first = env.start("t", agent)
    env.wait_exit(first)
    task_dir = str(Path(first.run_dir).parent)
    wait_for(lambda: older_than_window(Path(task_dir)), "the task's directory to settle")
    listed: list[str] = []
    real = os.listdir

    def counted(path: str) -> list[str]:
        listed.append(os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "listdir", counted)
    assert [r.iteration for r in observe(env).runs] == [1]  # listed once more, and kept
    listed.clear()
    assert [r.iteration for r in observe(env).runs] == [1]
    assert task_dir not in listed
    monkeypatch.setattr(gitfiles, "RACY_NS", 3600 * 10**9)  # every change is young
    second = env.start("t", agent, iteration=2)
    env.wait_exit(second)
    for _ in range(2):  # changed within the racy window: listed every time until it settles
        listed.clear()
        assert [r.iteration for r in observe(env).runs] == [1, 2]
        assert task_dir in listed
    monkeypatch.setattr(gitfiles, "RACY_NS", SETTLED_NS)
    wait_for(lambda: older_than_window(Path(task_dir)), "the task's directory to settle")
    observe(env)
    listed.clear()
    assert [r.iteration for r in observe(env).runs] == [1, 2] and task_dir not in listed
    # run 1.1 settled: the listing kept holds what is reported, not the task's history
    settled = ObserveRequest(lane=env.lane, settled={"t": (1, 1)})
    assert [r.iteration for r in ObserveResult.model_validate(env.call(settled)).runs] == [2]
    assert task_dir not in listed
    assert [n[:2] for n in node_runs._LISTED[task_dir][2]] == [(1, 2)]
    # a reconciler that lost its state names nothing settled: listed anew, 1.1 reported again
    assert [r.iteration for r in observe(env).runs] == [1, 2] and task_dir in listed
    pruned = env.call(PruneRunsRequest(lane=env.lane, runs=["t/1.1"]))
    assert pruned["removed"] == ["t/1.1"]
    assert [r.iteration for r in observe(env).runs] == [2]
