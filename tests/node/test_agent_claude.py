"""The claude adapter: real runs of a fake ``claude`` through the node, and what the reconciler
decides about each.

The fake (agents_fixtures/claude/fake_claude.py) checks the argv, stdin, working directory and
environment it gets, exits 2 on anything wrong, then replays a stream recorded in Claude Code's
``-p --output-format stream-json --verbose`` format and exits as the real CLI would (1 when the
result is an error). Each run is observed the way the control plane observes it (inspected after
its end) and handed to the pure planner (``decide``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.node.agents import ADAPTERS, Launch
from reconciler.protocol import (
    AgentRef,
    AgentResult,
    ExitInfo,
    ObserveRequest,
    ObserveResult,
    RunObs,
)
from tests.node.node_support import Env
from tests.support.decide import decide

FIXTURES = Path(__file__).parent / "agents_fixtures" / "claude"
FAKE = FIXTURES / "fake_claude.py"
SESSION = "3f6c2a1e-8b4d-4c7a-9e15-6d2b0f8a4c91"
ARGS = ["--model", "claude-sonnet-4-5-20250929", "--dangerously-skip-permissions"]
PROMPT = (
    "Fix the flaky test in tests/test_clock.py, commit, and say TASK_COMPLETE when done.\n"
    "Quotes \"'`$(echo no)` & ünïcødé ✓ stay bytes; -p and --resume are prompt text.\n"
)
FINAL = (
    "`test_tick` slept for real time, so it failed whenever the machine was busy. It now "
    "advances the fake clock instead, and the whole suite passes (48 tests).\n\nTASK_COMPLETE"
)
API_ERROR = (
    'API Error: 529 {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"},'
    '"request_id":null}'
)
HEAD = ["-p", "--output-format", "stream-json", "--verbose", "--include-partial-messages"]

claude = ADAPTERS["claude"]


def fake_agent(
    stream: str,
    argv_tail: list[str],
    *,
    exit: str = "0",
    args: list[str] = ARGS,
    prompt: str = PROMPT,
    record: Path | None = None,
    env: dict[str, str] | None = None,
    max_budget_usd: float | None = None,
) -> AgentRef:
    """A claude Agent running the fake, told what it must receive and what to replay."""
    fake_env = {
        "FAKE_CLAUDE_ARGV": json.dumps(argv_tail),
        "FAKE_CLAUDE_PROMPT": prompt,
        "FAKE_CLAUDE_STREAM": stream,
        "FAKE_CLAUDE_EXIT": exit,
        **({"FAKE_CLAUDE_RECORD": str(record)} if record else {}),
        **(env or {}),
    }
    return AgentRef(
        kind="claude",
        command=[sys.executable, str(FAKE)],
        args=list(args),
        env=fake_env,
        max_budget_usd=max_budget_usd,
    )


def fresh_argv(session: str = SESSION, args: list[str] = ARGS) -> list[str]:
    return [*HEAD, "--session-id", session, *args]


def resume_argv(session: str, args: list[str] = ARGS) -> list[str]:
    return [*HEAD, "--resume", session, *args]


def finished(env: Env, run: RunObs, exit_code: int | None = 0) -> RunObs:
    """Wait for the run to end, check the fake accepted how it was started, and return the run
    as the control plane observes it (with the verdict the node reads from the output)."""
    info = env.wait_exit(run)
    stderr = (Path(run.run_dir) / "stderr.log").read_text(errors="replace")
    assert info.exit_code != 2, f"the fake claude rejected the run: {stderr}"
    assert info.exit_code == exit_code, stderr
    key = f"{run.task}/{run.attempt}.{run.iteration}"
    observed = ObserveResult.model_validate(env.call(ObserveRequest(lane=env.lane, inspect=[key])))
    [seen] = [
        r
        for r in observed.runs
        if (r.task, r.attempt, r.iteration) == (run.task, run.attempt, run.iteration)
    ]
    assert seen.exit == info
    assert seen.result is not None
    # The node's verdict is the adapter's, with the tool calls it counts in the stream.
    parsed = claude.parse(str(Path(run.run_dir) / "output.log"), info)
    if parsed.subtype is not None:  # claude's result reports tokens, cost and turns itself
        assert seen.result == parsed.model_copy(update={"tool_calls": seen.result.tool_calls})
    return seen


def verdict(seen: RunObs) -> AgentResult:
    assert seen.result is not None
    return seen.result


# ------------------------------------------------------------------- runs through the node


def test_success(env: Env) -> None:
    run = env.start("flaky", fake_agent("success.jsonl", fresh_argv()), PROMPT, session_id=SESSION)
    assert run.session_id == SESSION
    seen = finished(env, run)
    assert verdict(seen) == AgentResult(
        ok=True,
        subtype="success",
        session_id=SESSION,
        cost_usd=0.0837618,  # claude's own total_cost_usd: not an estimate
        cost_estimated=False,
        input_tokens=27,  # the result's usage: uncached input only
        output_tokens=1432,
        num_turns=9,  # claude's count, not the 5 assistant messages of the stream
        tool_calls=4,  # Bash, Edit, Bash, Bash
        final_text=FINAL,
    )
    assert decide(seen) == "complete"


def test_error_during_execution(env: Env) -> None:
    run = env.start(
        "migrate", fake_agent("failure.jsonl", fresh_argv(), exit="1"), PROMPT, session_id=SESSION
    )
    seen = finished(env, run, 1)
    assert verdict(seen) == AgentResult(
        ok=False,
        subtype="error_during_execution",
        error="Error: Request was aborted.",
        session_id=SESSION,
        cost_usd=0.0366621,
        input_tokens=12,
        output_tokens=611,
        num_turns=5,
        tool_calls=2,
        final_text="",  # an error result carries no result text
    )
    assert decide(seen) == f"iterate resume={SESSION}"
    assert decide(seen, iteration=3) == "retry"
    assert decide(seen, attempt=3, iteration=3) == "failed"


def test_max_turns(env: Env) -> None:
    args = [*ARGS, "--max-turns", "3"]
    agent = fake_agent("max_turns.jsonl", fresh_argv(args=args), exit="1", args=args)
    seen = finished(env, env.start("dates", agent, PROMPT, session_id=SESSION), 1)
    assert verdict(seen) == AgentResult(
        ok=False,
        subtype="error_max_turns",
        error="error_max_turns",
        session_id=SESSION,
        cost_usd=0.0404928,
        input_tokens=9,
        output_tokens=503,
        num_turns=3,
        tool_calls=3,  # the last Edit was asked for, never run: still a call
        final_text="",
    )
    # Out of turns, not out of luck: the next iteration continues the same session.
    assert decide(seen) == f"iterate resume={SESSION}"
    assert decide(seen, max_iterations=5, iteration=4) == f"iterate resume={SESSION}"
    assert decide(seen, max_iterations=5, iteration=5) == "retry"
    assert decide(seen, attempt=2, iteration=3, max_attempts=2) == "failed"


def test_api_error_reported_as_success_with_is_error(env: Env) -> None:
    agent = fake_agent("api_error.jsonl", fresh_argv(), exit="1")
    seen = finished(env, env.start("overload", agent, PROMPT, session_id=SESSION), 1)
    result = verdict(seen)
    assert not result.ok  # subtype success, but is_error (and exit 1)
    assert result == AgentResult(
        ok=False,
        subtype="success",
        error=API_ERROR,
        session_id=SESSION,
        cost_usd=0.0213999,
        input_tokens=4,
        output_tokens=87,
        num_turns=2,
        tool_calls=1,
        final_text=API_ERROR,
    )
    assert decide(seen) == f"iterate resume={SESSION}"
    assert decide(seen, iteration=3) == "retry"
    assert decide(seen, attempt=3, iteration=3) == "failed"


def test_stream_cut_off_mid_line(env: Env) -> None:
    """Killed while writing an event: no result, so the node prices the usage of the assistant
    messages it did write (each counted once, however many events streamed it)."""
    agent = fake_agent("cut_off.jsonl", fresh_argv(), exit="SIGKILL")
    run = env.start("killed", agent, PROMPT, session_id=SESSION)
    seen = finished(env, run, None)
    assert seen.exit is not None
    assert seen.exit.signal == signal.SIGKILL
    written = (FIXTURES / "cut_off.jsonl").read_text()
    written = written.replace("@SESSION_ID@", SESSION).replace("@CWD@", run.workspace)
    assert (Path(run.run_dir) / "output.log").read_text() == written
    assert not written.endswith("\n")
    # claude-sonnet-4-5 per million tokens: input 3, output 15, cache read 0.30, cache write 3.75
    inp, out, cache_read, cache_write = 5 + 3, 141 + 64, 11843 + 18117, 6274 + 902
    estimate = round((inp * 3 + out * 15 + cache_read * 0.3 + cache_write * 3.75) / 1e6, 9)
    assert estimate == 0.038997
    assert verdict(seen) == AgentResult(
        ok=False,
        subtype=None,
        session_id=SESSION,  # from the init event: the stream never got to its result
        cost_usd=estimate,
        cost_estimated=True,
        input_tokens=inp,
        output_tokens=out,
        num_turns=2,  # the assistant messages that began
        tool_calls=1,  # the Edit on the cut line never arrived
        final_text=written,  # no result: the tail of the output
    )
    assert seen.session_id == SESSION
    assert decide(seen) == "retry"  # marked crashed, then a new attempt
    assert decide(seen, attempt=3) == "failed"


def test_garbage_lines_interleaved(env: Env) -> None:
    agent = fake_agent("garbage.jsonl", fresh_argv())
    seen = finished(env, env.start("noisy", agent, PROMPT, session_id=SESSION))
    assert verdict(seen) == AgentResult(
        ok=True,
        subtype="success",
        session_id=SESSION,
        cost_usd=0.06146025,
        input_tokens=19,
        output_tokens=1206,
        num_turns=7,
        tool_calls=2,  # not the Bash of the forged result in a JSON array, nor of a cut line
        final_text=(
            "Rendering now reuses the compiled template: `test_render` takes 0.4s instead of "
            "12s.\n\nTASK_COMPLETE"
        ),
    )
    assert decide(seen) == "complete"
    assert decide(seen, commits_ahead=0) == f"iterate resume={SESSION}"  # nothing committed


def test_second_iteration_resumes_the_session_from_the_same_worktree(
    env: Env, tmp_path: Path
) -> None:
    record = tmp_path / "claude-calls.jsonl"
    first = env.start(
        "resume",
        fake_agent("max_turns.jsonl", fresh_argv(), exit="1", record=record),
        PROMPT,
        session_id=SESSION,
    )
    seen = finished(env, first, 1)
    assert verdict(seen).session_id == SESSION
    decision = decide(seen)
    assert decision == f"iterate resume={SESSION}"
    returned = decision.removeprefix("iterate resume=")
    # apply sends no fresh session id when it resumes one
    second = env.start(
        "resume",
        fake_agent("resumed.jsonl", resume_argv(returned), record=record),
        PROMPT,
        iteration=2,
        resume_session=returned,
    )
    assert second.session_id == SESSION  # the run records the session it resumed
    again = finished(env, second)
    assert verdict(again) == AgentResult(
        ok=True,
        subtype="success",
        session_id=SESSION,
        cost_usd=0.04975275,
        input_tokens=14,
        output_tokens=734,
        num_turns=6,
        tool_calls=2,
        final_text=(
            "The remaining failure was the timezone of the fake clock; it is UTC now and all 48 "
            "tests pass.\n\nTASK_COMPLETE"
        ),
    )
    assert decide(again) == "complete"
    calls = [json.loads(line) for line in record.read_text().splitlines()]
    assert [c["argv"] for c in calls] == [fresh_argv(), resume_argv(SESSION)]
    workspace = str(env.workspace("resume"))
    assert calls[0]["cwd"] == calls[1]["cwd"] == workspace == first.workspace == second.workspace
    assert calls[0]["stdin"] == calls[1]["stdin"] == PROMPT
    prompts = [Path(r.run_dir, "prompt.md").read_bytes() for r in (first, second)]
    assert prompts == [PROMPT.encode(), PROMPT.encode()]


def test_the_runs_budget_becomes_max_budget_usd(env: Env, tmp_path: Path) -> None:
    record = tmp_path / "claude-calls.jsonl"
    argv = [*HEAD, "--session-id", SESSION, "--max-budget-usd", "0.5", *ARGS]
    agent = fake_agent("success.jsonl", argv, record=record, max_budget_usd=0.5)
    seen = finished(env, env.start("capped", agent, PROMPT, session_id=SESSION))
    assert verdict(seen).ok
    [call] = [json.loads(line) for line in record.read_text().splitlines()]
    assert call["argv"] == argv


def test_outer_claude_code_variables_never_reach_the_agent(env: Env) -> None:
    env.lane = env.lane.model_copy(update={"env": {**env.lane.env, "CLAUDECODE": "1"}})
    agent = fake_agent("success.jsonl", fresh_argv(), env={"CLAUDE_CODE_ENTRYPOINT": "cli"})
    run = env.start("nested", agent, PROMPT, session_id=SESSION)
    assert verdict(finished(env, run)).ok  # the fake refuses to run with either set
    recorded = json.loads((Path(run.run_dir) / "env.json").read_text())
    assert "CLAUDECODE" not in recorded
    assert "CLAUDE_CODE_ENTRYPOINT" not in recorded


# ------------------------------------------------------------------------ the fake itself


def test_the_fake_rejects_a_wrong_command_line(tmp_path: Path) -> None:
    """What makes the runs above worth something: a wrong command line exits 2 with a reason,
    before any output."""
    prompt = tmp_path / "prompt.md"
    prompt.write_text(PROMPT)
    base = {
        k: v for k, v in os.environ.items() if k not in ("CLAUDECODE", "CLAUDE_CODE_ENTRYPOINT")
    }
    good = fresh_argv()
    env = {
        **base,
        "RECONCILER_PROMPT_FILE": str(prompt),
        "RECONCILER_WORKSPACE": str(tmp_path),
        "FAKE_CLAUDE_ARGV": json.dumps(good),
        "FAKE_CLAUDE_PROMPT": PROMPT,
        "FAKE_CLAUDE_STREAM": "success.jsonl",
    }

    def call(
        argv: list[str], stdin: str = PROMPT, **extra: str
    ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [sys.executable, str(FAKE), *argv],
            input=stdin.encode(),
            env={**env, **extra},
            cwd=tmp_path,
            capture_output=True,
            check=False,
        )

    wrong = {
        "missing --verbose": ["-p", "--output-format", "stream-json", "--session-id", SESSION],
        "not print mode": ["--output-format", "stream-json", "--verbose", "--session-id", SESSION],
        "plain json": ["-p", "--output-format", "json", "--verbose", "--session-id", SESSION],
        "prompt as an argument": [*good, "Fix the flaky test"],
        "resume and session id": [*HEAD, "--resume", SESSION, "--session-id", SESSION, *ARGS],
        "session id not a uuid": [*HEAD, "--session-id", "sid-1", *ARGS],
        "unknown option": [*good, "--bogus"],
        "option twice": [*good, "--model", "opus"],
        "args before the session": [*HEAD, *ARGS, "--session-id", SESSION],
        "budget not a number": [*HEAD, "--session-id", SESSION, "--max-budget-usd", "lots"],
    }
    for what, argv in wrong.items():
        proc = call(argv)
        assert proc.returncode == 2, what
        assert proc.stderr.startswith(b"error: "), what
        assert proc.stdout == b"", what
    assert b"requires --verbose" in call(wrong["missing --verbose"]).stderr
    assert b"--fork-session" in call(wrong["resume and session id"]).stderr
    assert b"on stdin" in call(wrong["prompt as an argument"]).stderr
    for name in ("CLAUDECODE", "CLAUDE_CODE_ENTRYPOINT"):
        leaked = call(good, **{name: "1"})
        assert leaked.returncode == 2, name
        assert b"inside another Claude Code session" in leaked.stderr
    for stdin in ("another prompt", ""):
        assert call(good, stdin).returncode == 2, stdin
    assert call(good, RECONCILER_WORKSPACE=str(tmp_path / "elsewhere")).returncode == 2
    ok = call(good)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith(b'{"type":"system","subtype":"init"')
    assert SESSION.encode() in ok.stdout
    assert b"@SESSION_ID@" not in ok.stdout


def test_a_headless_run_may_use_its_tools_unless_the_agent_says_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Nobody answers a permission prompt: without a mode every Bash call (git commit too) is
    # denied. The lane user is the boundary; Claude refuses bypassPermissions as root.
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    argv, _ = claude.build(AgentRef(kind="claude"), Launch("/p.md", SESSION))
    assert argv[-2:] == ["--permission-mode", "bypassPermissions"]
    for chosen in (
        ["--permission-mode", "acceptEdits"],
        ["--permission-mode=plan"],
        ["--allowedTools", "Bash(git commit:*)"],
        ["--dangerously-skip-permissions"],
    ):
        argv, _ = claude.build(AgentRef(kind="claude", args=chosen), Launch("/p.md", SESSION))
        assert "bypassPermissions" not in argv, chosen
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    argv, _ = claude.build(AgentRef(kind="claude"), Launch("/p.md", SESSION))
    assert "--permission-mode" not in argv


def test_a_budget_under_a_cent_is_still_a_positive_cap() -> None:
    for budget, shown in ((0.5, "0.5"), (0.013, "0.013"), (0.004, "0.004"), (1e-05, "0.0001")):
        agent = AgentRef(kind="claude", max_budget_usd=budget, args=ARGS)
        argv, _ = claude.build(agent, Launch("/p.md", SESSION))
        assert argv[argv.index("--max-budget-usd") + 1] == shown


def test_denied_tool_calls_are_named_in_the_final_text(tmp_path: Path) -> None:
    result = {
        "type": "result",
        "subtype": "success",
        "is_error": False,
        "result": "Done.",
        "session_id": SESSION,
        "permission_denials": [
            {"tool_name": "Bash", "tool_input": {"command": "git commit -m x"}},
        ],
    }
    out = tmp_path / "output.log"
    out.write_text(json.dumps(result) + "\n")
    parsed = claude.parse(str(out), ExitInfo(exit_code=0, ended_at=0.0))
    assert parsed.ok
    assert "Claude Code denied 1 tool call(s)" in parsed.final_text
    assert "Bash: git commit -m x" in parsed.final_text
