"""The gemini adapter: argv, environment, and verdicts read from recorded Gemini CLI streams.

The node tests start real runs of a fake ``gemini`` (agents_fixtures/gemini/fake_gemini.py) that
checks the argv, stdin, working directory and environment it gets, then replays a stream
recorded in Gemini CLI's ``--output-format stream-json`` format and exits as the real CLI would.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from reconciler.node.agents import ADAPTERS, Launch
from reconciler.node.agents.gemini import pin_settings, settings_path, settings_pins
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

FIXTURES = Path(__file__).parent / "agents_fixtures" / "gemini"
FAKE = FIXTURES / "fake_gemini.py"
DEFAULT_SESSION = "5d2c61c8-4b7e-4f0e-9a57-1f3b1c0f2a11"  # what the fake reports unasked
SESSION = "0b9e4a52-7c1d-4e38-8f6a-2d5b7c9e1f03"
ARGS = ["--approval-mode=yolo", "--model", "gemini-2.5-pro"]
PROMPT = (
    "Fix the flaky test in tests/test_clock.py.\n"
    "Quotes \"'`$(echo no)` & ünïcødé ✓ stay bytes; -p and --resume are prompt text.\n"
)
FINAL = (
    "The test now advances the fake clock instead of sleeping, so it no longer depends on "
    "timing. All 48 tests pass.\n\nTASK_COMPLETE"
)
API_ERROR = "[API Error: got status: 429 Too Many Requests."
TURN_LIMIT = "Reached max session turns for this session."

gemini = ADAPTERS["gemini"]


def agent_ref(
    *,
    stream: str,
    argv_tail: list[str],
    exit_code: int = 0,
    prompt: str = PROMPT,
    stderr: str = "",
    env: dict[str, str] | None = None,
) -> AgentRef:
    """A gemini Agent running the fake, told what it must receive and what to replay."""
    fields: dict[str, object] = {
        "kind": "gemini",
        "command": [sys.executable, str(FAKE)],
        "args": list(ARGS),
        "env": {
            "FAKE_GEMINI_ARGV": json.dumps(argv_tail),
            "FAKE_GEMINI_PROMPT": prompt,
            "FAKE_GEMINI_STREAM": stream,
            "FAKE_GEMINI_EXIT": str(exit_code),
            "FAKE_GEMINI_STDERR": stderr,
            **(env or {}),
        },
    }
    return AgentRef.model_validate(fields)


def fresh_argv(session: str = SESSION) -> list[str]:
    return ["--output-format", "stream-json", "--session-id", session, *ARGS]


def resume_argv(session: str) -> list[str]:
    return ["--output-format", "stream-json", "--resume", session, *ARGS]


def finish(env: Env, run: RunObs, exit_code: int) -> AgentResult:
    """Wait for the run, check the fake accepted how it was started, and return the verdict
    the node reads when it inspects the ended run."""
    info = env.wait_exit(run)
    stderr = (Path(run.run_dir) / "stderr.log").read_text(errors="replace")
    assert "fake gemini:" not in stderr, stderr
    assert info.exit_code == exit_code, stderr
    key = f"{run.task}/{run.attempt}.{run.iteration}"
    observed = ObserveResult.model_validate(env.call(ObserveRequest(lane=env.lane, inspect=[key])))
    [seen] = [
        r
        for r in observed.runs
        if (r.task, r.attempt, r.iteration) == (run.task, run.attempt, run.iteration)
    ]
    assert seen.result is not None
    parsed = gemini.parse(str(Path(run.run_dir) / "output.log"), info)
    # Gemini reports no cost: the node prices the tokens of its result (estimated), and counts
    # the tool calls in the stream.
    assert seen.result.cost_estimated is (seen.result.cost_usd is not None)
    metered: dict[str, object] = {"cost_usd": None, "cost_estimated": False, "tool_calls": None}
    if parsed.num_turns is None:  # the stream had no turn: the node says 0
        assert seen.result.num_turns == 0
        metered["num_turns"] = None
    assert seen.result.model_copy(update=metered) == parsed
    return seen.result


# ------------------------------------------------------------------------- real runs


def test_success_is_ok_with_session_tokens_and_final_text(env: Env) -> None:
    agent = agent_ref(stream="success.jsonl", argv_tail=fresh_argv())
    run = env.start("ok", agent, PROMPT, session_id=SESSION)
    assert run.session_id == SESSION
    result = finish(env, run, 0)
    assert result == AgentResult(
        ok=True,
        subtype="success",
        session_id=SESSION,
        # priced at gemini-2.5-pro's 1.25 (input) and 10 (output) USD per million tokens
        cost_usd=round((17210 * 1.25 + 1132 * 10) / 1e6, 9),
        cost_estimated=True,
        input_tokens=17210,
        output_tokens=1132,
        num_turns=4,
        tool_calls=3,
        final_text=FINAL,
    )
    assert decide(run, exit=env.wait_exit(run), result=result) == "complete"


def test_api_error_exit_1_is_error_with_the_message(env: Env) -> None:
    agent = agent_ref(stream="api_error.jsonl", argv_tail=fresh_argv(), exit_code=1)
    result = finish(env, env.start("api", agent, PROMPT, session_id=SESSION), 1)
    assert not result.ok
    assert result.subtype == "error"
    assert result.session_id == SESSION
    assert (result.input_tokens, result.output_tokens) == (5980, 140)
    assert result.final_text.startswith("Let me look at the failing test first.\n")
    assert API_ERROR in result.final_text
    assert "Retrying after 429" not in result.final_text  # a warning is not the error


def test_input_error_exit_42(env: Env) -> None:
    agent = agent_ref(stream="input_error.jsonl", argv_tail=fresh_argv(), exit_code=42)
    result = finish(env, env.start("input", agent, PROMPT, session_id=SESSION), 42)
    assert not result.ok
    assert result.subtype == "input_error"
    assert result.session_id == SESSION
    assert (result.input_tokens, result.output_tokens) == (0, 0)
    assert result.num_turns == 0  # the model never answered
    assert result.final_text == "Exiting due to an error processing the @ command."


def test_unknown_session_exit_42_before_any_event(env: Env) -> None:
    """A session that cannot be resumed: gemini exits 42 with nothing on stdout."""
    agent = agent_ref(
        stream="empty.jsonl",
        argv_tail=resume_argv("gone"),
        exit_code=42,
        stderr='Error resuming session: Invalid session identifier "gone".\n',
    )
    run = env.start("gone", agent, PROMPT, iteration=2, resume_session="gone")
    result = finish(env, run, 42)
    # no turn: the planner starts the next iteration afresh instead of resuming "gone" again
    assert result == AgentResult(ok=False, subtype="input_error", num_turns=0, final_text="")
    assert decide(run, exit=env.wait_exit(run), result=result) == "iterate"


def test_turn_limit_exit_53(env: Env) -> None:
    agent = agent_ref(stream="turn_limit.jsonl", argv_tail=fresh_argv(), exit_code=53)
    run = env.start("turns", agent, PROMPT, session_id=SESSION)
    result = finish(env, run, 53)
    assert not result.ok
    assert result.subtype == "turn_limit"
    assert result.session_id == SESSION
    assert (result.input_tokens, result.output_tokens) == (40012, 1865)
    assert result.num_turns == 2
    assert result.final_text.startswith("I'll run the test first to reproduce the failure.\n")
    assert TURN_LIMIT in result.final_text
    info = env.wait_exit(run)
    assert decide(run, exit=info, result=result) == f"iterate resume={SESSION}"
    assert decide(run, exit=info, result=result, attempt=3, iteration=3) == "failed"


def test_stream_cut_off_mid_line_is_no_verdict(env: Env) -> None:
    """Exit 0 but the result line never completed: not ok, whatever the text says."""
    agent = agent_ref(stream="cut_off.jsonl", argv_tail=fresh_argv())
    result = finish(env, env.start("cut", agent, PROMPT, session_id=SESSION), 0)
    assert not result.ok
    assert result.subtype is None
    assert result.session_id == SESSION
    assert (result.input_tokens, result.output_tokens) == (None, None)
    assert result.final_text == FINAL


def test_garbage_lines_are_skipped(env: Env) -> None:
    agent = agent_ref(stream="garbage.jsonl", argv_tail=fresh_argv())
    result = finish(env, env.start("noise", agent, PROMPT, session_id=SESSION), 0)
    assert result.ok
    assert result.subtype == "success"
    assert result.session_id == SESSION
    assert (result.input_tokens, result.output_tokens) == (17210, 1132)
    assert result.final_text == FINAL


def test_second_iteration_resumes_the_session_from_the_same_worktree(env: Env) -> None:
    first = env.start(
        "resume",
        agent_ref(stream="success.jsonl", argv_tail=fresh_argv()),
        PROMPT,
        session_id=SESSION,
    )
    returned = finish(env, first, 0).session_id
    assert returned == SESSION
    again = PROMPT + "\n---\n\nFix the following and try again:\n"
    second = env.start(
        "resume",
        agent_ref(stream="success.jsonl", argv_tail=resume_argv(returned), prompt=again),
        again,
        iteration=2,
        resume_session=returned,
    )
    assert second.workspace == first.workspace  # the fake also checks its cwd is this worktree
    assert second.session_id == SESSION
    assert finish(env, second, 0).session_id == SESSION


def test_ide_companion_variables_never_reach_the_agent(env: Env) -> None:
    env.lane = env.lane.model_copy(
        update={"env": {**env.lane.env, "GEMINI_CLI_IDE_WORKSPACE_PATH": "/home/op/src"}}
    )
    agent = agent_ref(
        stream="success.jsonl",
        argv_tail=fresh_argv(),
        env={"GEMINI_CLI_IDE_SERVER_PORT": "41231", "GEMINI_CLI_IDE_AUTH_TOKEN": "t0k"},
    )
    run = env.start("ide", agent, PROMPT, session_id=SESSION)
    assert finish(env, run, 0).ok  # the fake refuses to run with any of them set
    recorded = json.loads((Path(run.run_dir) / "env.json").read_text())
    assert not any(name.startswith("GEMINI_CLI_IDE_") for name in recorded)


def test_the_worktree_is_trusted_unless_the_lane_says_otherwise(env: Env, tmp_path: Path) -> None:
    agent = agent_ref(stream="success.jsonl", argv_tail=fresh_argv())
    run = env.start("trusted", agent, PROMPT, session_id=SESSION)
    assert finish(env, run, 0).ok  # the fake exits 55 as the CLI does in an untrusted folder
    recorded = json.loads((Path(run.run_dir) / "env.json").read_text())
    assert recorded["GEMINI_CLI_TRUST_WORKSPACE"] == "true"
    # The run's settings: usage statistics off, and nothing else (no endpoint in this lane).
    settings = json.loads((tmp_path / "home" / ".gemini" / "settings.json").read_text())
    assert settings == {"privacy": {"usageStatisticsEnabled": False}}

    env.lane = env.lane.model_copy(
        update={"env": {**env.lane.env, "GEMINI_CLI_TRUST_WORKSPACE": "false"}}
    )
    run = env.start("untrusted", agent, PROMPT, session_id=SESSION)
    result = finish(env, run, 55)
    assert result == AgentResult(
        ok=False, subtype="untrusted_workspace", num_turns=0, final_text=""
    )


# ------------------------------------------------------------------------- argv


def test_argv_fresh_resumed_and_without_session() -> None:
    agent = AgentRef(kind="gemini", args=["-m", "x"])
    yolo = "--approval-mode=yolo"
    argv, on_stdin = gemini.build(agent, Launch("/runs/p.md", "sid-1"))
    assert argv == [
        *("gemini", "--output-format", "stream-json", "--session-id", "sid-1", yolo, "-m", "x")
    ]
    assert on_stdin
    # Resuming wins: the CLI refuses --session-id together with --resume.
    argv, _ = gemini.build(agent, Launch("/runs/p.md", "sid-2", "old"))
    assert argv == ["gemini", "--output-format", "stream-json", "--resume", "old", yolo, "-m", "x"]
    argv, _ = gemini.build(agent, Launch("/runs/p.md"))
    assert argv == ["gemini", "--output-format", "stream-json", yolo, "-m", "x"]
    custom = agent.model_copy(update={"command": ["npx", "@google/gemini-cli"]})
    argv, _ = gemini.build(custom, Launch("/runs/p.md"))
    assert argv[:4] == ["npx", "@google/gemini-cli", "--output-format", "stream-json"]
    assert "/runs/p.md" not in argv  # the prompt goes on stdin, never as an argument
    assert gemini.sessions


@pytest.mark.parametrize(
    "args",
    [
        ["--approval-mode", "auto_edit"],
        ["--approval-mode=plan"],
        ["--yolo"],
        ["-y", "-m", "x"],
    ],
)
def test_args_that_choose_the_approval_mode_get_no_other(args: list[str]) -> None:
    argv, _ = gemini.build(AgentRef(kind="gemini", args=args), Launch("/runs/p.md"))
    assert argv == ["gemini", "--output-format", "stream-json", *args]


def test_env_defaults_trust_the_worktree() -> None:
    assert dict(gemini.env_defaults) == {"GEMINI_CLI_TRUST_WORKSPACE": "true"}


# ------------------------------------------------------------------------- user settings

KEY = {"GEMINI_API_KEY": "k", "GOOGLE_GEMINI_BASE_URL": "http://127.0.0.1:9"}
QUIET = {"privacy": {"usageStatisticsEnabled": False}}
API_KEY = {"security": {"auth": {"selectedType": "gemini-api-key"}}}


def test_settings_pins_follow_what_the_cli_would_infer() -> None:
    usage = ("privacy", "usageStatisticsEnabled")
    auth = ("security", "auth", "selectedType")
    assert settings_pins({}) == {usage: False}
    assert settings_pins({"GEMINI_API_KEY": "k"}) == {usage: False}  # the CLI picks the key
    assert settings_pins(KEY) == {usage: False, auth: "gemini-api-key"}  # it would pick gateway
    for chosen in ("GOOGLE_GENAI_USE_VERTEXAI", "GOOGLE_GENAI_USE_GCA"):
        assert settings_pins({**KEY, chosen: "true"}) == {usage: False}
    assert settings_pins({**KEY, "GEMINI_API_KEY": ""}) == {usage: False}


def test_prepare_writes_the_missing_settings_once(tmp_path: Path) -> None:
    home = tmp_path / "lane-home"
    home.mkdir()
    launch = Launch("/runs/p.md", "sid", env={"HOME": str(home), **KEY})
    gemini.prepare(AgentRef(kind="gemini"), launch)
    path = home / ".gemini" / "settings.json"
    assert json.loads(path.read_text()) == {**API_KEY, **QUIET}
    assert path.stat().st_mode & 0o777 == 0o600
    assert (path.parent.stat().st_mode & 0o777) == 0o700
    before = path.stat().st_mtime_ns
    gemini.prepare(AgentRef(kind="gemini"), launch)
    assert path.stat().st_mtime_ns == before  # nothing missing: not rewritten
    assert settings_path({"HOME": "/h", "GEMINI_CLI_HOME": "/g"}) == "/g/.gemini/settings.json"
    assert settings_path({}) is None


def test_what_the_user_set_wins_and_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    mine = {
        "security": {"auth": {"selectedType": "oauth-personal"}},
        "privacy": {"usageStatisticsEnabled": True},
        "model": {"name": "gemini-2.5-pro"},
    }
    path.write_text(json.dumps(mine))
    path.chmod(0o640)
    assert pin_settings(str(path), settings_pins(KEY)) == []
    assert json.loads(path.read_text()) == mine
    path.write_text(json.dumps({"model": {"name": "m"}, "security": {"folderTrust": {}}}))
    assert pin_settings(str(path), settings_pins(KEY)) == [
        "privacy.usageStatisticsEnabled",
        "security.auth.selectedType",
    ]
    assert json.loads(path.read_text()) == {
        "model": {"name": "m"},
        "security": {"folderTrust": {}, "auth": {"selectedType": "gemini-api-key"}},
        **QUIET,
    }
    assert path.stat().st_mode & 0o777 == 0o640  # the file keeps its mode


@pytest.mark.parametrize(
    "text",
    [
        '{"model": {"name": "m"}} // comments are Gemini CLI settings, not JSON',
        "[]",
        "",
        '{"privacy": "off"}',
    ],
)
def test_settings_the_reconciler_cannot_read_are_left_alone(tmp_path: Path, text: str) -> None:
    path = tmp_path / "settings.json"
    path.write_text(text)
    pins: dict[tuple[str, ...], object] = {("privacy", "usageStatisticsEnabled"): False}
    assert pin_settings(str(path), pins) == []
    assert path.read_text() == text


def test_a_linked_settings_file_is_left_alone(tmp_path: Path) -> None:
    target = tmp_path / "dotfiles-settings.json"
    target.write_text("{}")
    link = tmp_path / "settings.json"
    link.symlink_to(target)
    assert pin_settings(str(link), settings_pins(KEY)) == []
    assert link.is_symlink()
    assert target.read_text() == "{}"


# ------------------------------------------------------------------------- parsing


OK = ExitInfo(exit_code=0, ended_at=1.0)
INIT = {"type": "init", "timestamp": "t", "session_id": "s-1", "model": "gemini-2.5-pro"}
STATS = {"total_tokens": 30, "input_tokens": 20, "output_tokens": 10, "tool_calls": 0}
RESULT = {"type": "result", "timestamp": "t", "status": "success", "stats": STATS}


def say(text: str, delta: bool | None = True) -> dict[str, object]:
    event: dict[str, object] = {"type": "message", "role": "assistant", "content": text}
    if delta is not None:
        event["delta"] = delta
    return event


def write(tmp_path: Path, *lines: object, tail: str = "") -> str:
    path = tmp_path / "output.log"
    text = "".join((json.dumps(x) if not isinstance(x, str) else x) + "\n" for x in lines)
    path.write_text(text + tail)
    return str(path)


@pytest.mark.parametrize(
    ("code", "signal", "subtype"),
    [
        (1, None, "error"),
        (41, None, "auth_error"),
        (42, None, "input_error"),
        (52, None, "config_error"),
        (53, None, "turn_limit"),
        (54, None, "tool_error"),
        (44, None, "sandbox_error"),
        (55, None, "untrusted_workspace"),
        (130, None, "cancelled"),
        (145, None, "auth_error"),  # an HTTP 401, cut to 8 bits
        (147, None, "auth_error"),  # 403
        (173, None, "rate_limited"),  # 429
        (144, None, "api_error"),  # 400
        (247, None, "api_error"),  # 503 after the retries
        (3, None, "error"),
        (None, 9, "error"),
    ],
)
def test_exit_codes_map_to_subtypes_and_are_never_ok(
    tmp_path: Path, code: int | None, signal: int | None, subtype: str
) -> None:
    exit_info = ExitInfo(exit_code=code, signal=signal, ended_at=1.0)
    result = gemini.parse(write(tmp_path, INIT, say("done"), RESULT), exit_info)
    assert not result.ok
    assert result.subtype == subtype
    assert result.session_id == "s-1"


def test_exit_0_with_an_error_result_is_not_ok(tmp_path: Path) -> None:
    """An invalid model stream ends with status error yet exit 0."""
    failed = {**RESULT, "status": "error"}
    result = gemini.parse(write(tmp_path, INIT, say("half"), failed), OK)
    assert not result.ok
    assert result.subtype == "error"
    assert (
        gemini.parse(write(tmp_path, INIT, say("x"), {**RESULT, "status": "odd"}), OK).ok is False
    )


def test_the_last_result_counts(tmp_path: Path) -> None:
    failed = {**RESULT, "status": "error", "error": {"type": "E", "message": "boom"}}
    result = gemini.parse(write(tmp_path, INIT, RESULT, failed), OK)
    assert not result.ok
    assert result.final_text == "boom"


def test_final_text_is_the_last_turn_or_the_last_that_spoke(tmp_path: Path) -> None:
    use = {"type": "tool_use", "tool_name": "t", "tool_id": "1", "parameters": {}}
    done = {"type": "tool_result", "tool_id": "1", "status": "success", "output": "o"}
    spoken = write(tmp_path, INIT, say("first "), say("turn"), use, done, say("last"), RESULT)
    result = gemini.parse(spoken, OK)
    assert result.final_text == "last"
    assert result.num_turns == 2
    # A last turn that only calls a tool: the last turn that said something.
    silent = write(tmp_path, INIT, say("said "), say("this"), use, done, use, done, RESULT)
    result = gemini.parse(silent, OK)
    assert result.final_text == "said this"
    assert result.num_turns == 2
    # Whole messages (no delta) replace, deltas append.
    whole = write(tmp_path, INIT, say("a"), say("b"), say("whole", None), say("!"), RESULT)
    assert gemini.parse(whole, OK).final_text == "whole!"


def test_tolerates_camel_case_and_per_model_token_counts(tmp_path: Path) -> None:
    init = {"type": "init", "sessionId": "camel", "model": "m"}
    flat = {**RESULT, "stats": {"inputTokens": 7, "outputTokens": 3}}
    result = gemini.parse(write(tmp_path, init, say("hi"), flat), OK)
    assert (result.session_id, result.input_tokens, result.output_tokens) == ("camel", 7, 3)
    models = {
        "gemini-2.5-pro": {"tokens": {"prompt": 100, "candidates": 10, "total": 110}},
        "gemini-2.5-flash": {"input_tokens": 5, "output_tokens": 1},
        "broken": "not a dict",
    }
    nested = {**RESULT, "stats": {"models": models, "tool_calls": 1}}
    result = gemini.parse(write(tmp_path, INIT, say("hi"), nested), OK)
    assert (result.input_tokens, result.output_tokens) == (105, 11)
    junk = {**RESULT, "stats": {"input_tokens": "12", "output_tokens": True}}
    result = gemini.parse(write(tmp_path, INIT, say("hi"), junk), OK)
    assert (result.input_tokens, result.output_tokens) == (None, None)
    assert gemini.parse(write(tmp_path, INIT, say("hi"), {**RESULT, "stats": []}), OK).ok


def test_output_that_is_not_a_stream_gives_the_tail(tmp_path: Path) -> None:
    path = write(tmp_path, "Loaded cached credentials.", "Error: no auth method configured")
    result = gemini.parse(path, ExitInfo(exit_code=41, ended_at=1.0))
    assert result == AgentResult(
        ok=False,
        subtype="auth_error",
        final_text="Loaded cached credentials.\nError: no auth method configured\n",
    )
    missing = gemini.parse(str(tmp_path / "absent.log"), OK)
    assert missing == AgentResult(ok=False, subtype=None, final_text="")


def test_huge_output_reads_the_tail_and_finds_the_session_at_the_head(tmp_path: Path) -> None:
    path = tmp_path / "output.log"
    use = {"type": "tool_use", "tool_name": "read_file", "tool_id": "1", "parameters": {}}
    filler = (json.dumps(use) + "\n").encode()
    with path.open("wb") as f:
        f.write((json.dumps(INIT) + "\n").encode())
        f.write((json.dumps({**RESULT, "status": "error"}) + "\n").encode())
        f.write(filler * (9 * 1024 * 1024 // len(filler)))
        f.write((json.dumps(say("finally")) + "\n" + json.dumps(RESULT) + "\n").encode())
    result = gemini.parse(str(path), OK)
    assert result.ok
    assert result.session_id == "s-1"
    assert result.final_text == "finally"


def test_final_text_is_capped(tmp_path: Path) -> None:
    big = say("x" * 100_000 + "ünï END")
    result = gemini.parse(write(tmp_path, INIT, big, RESULT), OK)
    assert len(result.final_text.encode()) <= 64 * 1024
    assert result.final_text.endswith("ünï END")
