"""Adapters: argv building and parsing of recorded agent output."""

from __future__ import annotations

import json
from pathlib import Path

from reconciler.node.agents import ADAPTERS, Launch
from reconciler.protocol import AgentRef, ExitInfo

OK = ExitInfo(exit_code=0, ended_at=1.0)
FAILED = ExitInfo(exit_code=1, ended_at=1.0)

INIT = {"type": "system", "subtype": "init", "session_id": "abc-123", "tools": ["Bash"]}
ASSISTANT = {
    "type": "assistant",
    "message": {"role": "assistant", "content": [{"type": "text", "text": "Working on it"}]},
    "session_id": "abc-123",
}
RESULT = {
    "type": "result",
    "subtype": "success",
    "is_error": False,
    "duration_ms": 12345,
    "num_turns": 7,
    "result": "Fixed the flaky test. TASK_COMPLETE",
    "session_id": "abc-123",
    "total_cost_usd": 0.4213,
    "usage": {"input_tokens": 1200, "output_tokens": 345, "cache_read_input_tokens": 9000},
}


def write(tmp_path: Path, *lines: object, tail: str = "") -> str:
    path = tmp_path / "output.log"
    text = "".join((json.dumps(x) if not isinstance(x, str) else x) + "\n" for x in lines)
    path.write_text(text + tail)
    return str(path)


def test_claude_argv_with_session_and_resume() -> None:
    claude = ADAPTERS["claude"]
    agent = AgentRef(kind="claude", args=["--model", "sonnet"])
    argv, on_stdin = claude.build(agent, Launch("/p.md", "sid-1"))
    assert argv == [
        "claude",
        "-p",
        "--output-format",
        "stream-json",
        "--verbose",
        "--include-partial-messages",
        "--session-id",
        "sid-1",
        "--model",
        "sonnet",
    ]
    assert on_stdin
    argv, _ = claude.build(
        agent.model_copy(update={"command": ["/opt/claude"]}), Launch("/p", "s", "old")
    )
    assert argv[0] == "/opt/claude"
    assert argv[6:8] == ["--resume", "old"]
    assert "--session-id" not in argv
    argv, _ = claude.build(agent, Launch("/p.md"))
    assert "--session-id" not in argv
    assert "--resume" not in argv


def test_command_argv_substitutes_the_prompt_file_inside_elements() -> None:
    command = ADAPTERS["command"]
    agent = AgentRef(
        kind="command", command=["aider"], args=["--message-file={prompt_file}", "{x}"]
    )
    argv, on_stdin = command.build(agent, Launch("/runs/p.md"))
    assert argv == ["aider", "--message-file=/runs/p.md", "{x}"]
    assert not on_stdin
    argv, on_stdin = command.build(AgentRef(kind="command", command=["cat"]), Launch("/p"))
    assert argv == ["cat"]
    assert on_stdin


def test_claude_parse_success(tmp_path: Path) -> None:
    result = ADAPTERS["claude"].parse(write(tmp_path, INIT, ASSISTANT, RESULT), OK)
    assert result.ok
    assert result.subtype == "success"
    assert result.session_id == "abc-123"
    assert result.cost_usd == 0.4213
    assert result.input_tokens == 1200
    assert result.output_tokens == 345
    assert result.num_turns == 7
    assert result.final_text == "Fixed the flaky test. TASK_COMPLETE"


def test_claude_parse_tolerates_garbage_blank_and_truncated_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "npm WARN something",
        INIT,
        "",
        "{not json",
        '["a", "list"]',
        RESULT,
        "   ",
        tail='{"type": "result", "subtype": "error_during_exec',  # cut mid-write
    )
    result = ADAPTERS["claude"].parse(path, OK)
    assert result.ok
    assert result.final_text.endswith("TASK_COMPLETE")


def test_claude_parse_uses_the_last_result(tmp_path: Path) -> None:
    later = {**RESULT, "subtype": "error_max_turns", "result": "ran out"}
    result = ADAPTERS["claude"].parse(write(tmp_path, RESULT, later), OK)
    assert not result.ok
    assert result.subtype == "error_max_turns"
    assert result.final_text == "ran out"


def test_claude_parse_is_error_or_bad_exit_is_not_ok(tmp_path: Path) -> None:
    api_error = {**RESULT, "is_error": True, "result": "API Error: 529 overloaded"}
    result = ADAPTERS["claude"].parse(write(tmp_path, INIT, api_error), FAILED)
    assert not result.ok
    assert result.subtype == "success"
    assert "529" in result.final_text
    result = ADAPTERS["claude"].parse(write(tmp_path, RESULT), FAILED)
    assert not result.ok
    result = ADAPTERS["claude"].parse(
        write(tmp_path, RESULT), ExitInfo(exit_code=None, signal=15, ended_at=1)
    )
    assert not result.ok


def test_claude_parse_without_result_gives_the_tail(tmp_path: Path) -> None:
    path = write(tmp_path, INIT, ASSISTANT, "Error: authentication failed")
    result = ADAPTERS["claude"].parse(path, FAILED)
    assert not result.ok
    assert result.subtype is None
    assert result.session_id == "abc-123"  # from the stream, though it never ended
    assert "authentication failed" in result.final_text
    missing = ADAPTERS["claude"].parse(str(tmp_path / "absent.log"), FAILED)
    assert not missing.ok
    assert missing.final_text == ""


def test_claude_parse_reads_only_the_tail_of_huge_output(tmp_path: Path) -> None:
    path = tmp_path / "output.log"
    filler = json.dumps(ASSISTANT) + "\n"
    with path.open("w") as f:
        f.write(json.dumps({**RESULT, "result": "early"}) + "\n")
        f.write(filler * (10 * 1024 * 1024 // len(filler)))
        f.write(json.dumps(RESULT) + "\n")
    result = ADAPTERS["claude"].parse(str(path), OK)
    assert result.ok
    assert result.final_text.endswith("TASK_COMPLETE")


def test_claude_final_text_is_capped(tmp_path: Path) -> None:
    big = {**RESULT, "result": "x" * 100_000 + "END"}
    result = ADAPTERS["claude"].parse(write(tmp_path, big), OK)
    assert len(result.final_text.encode()) <= 64 * 1024
    assert result.final_text.endswith("END")


def test_command_parse_is_exit_code_and_tail(tmp_path: Path) -> None:
    path = tmp_path / "output.log"
    path.write_bytes(b"a" * 70_000 + b"\xff tail TASK_COMPLETE\n")
    result = ADAPTERS["command"].parse(str(path), OK)
    assert result.ok
    assert result.final_text.endswith("tail TASK_COMPLETE\n")
    assert "\ufffd" in result.final_text
    assert len(result.final_text) <= 64 * 1024
    assert not ADAPTERS["command"].parse(str(path), FAILED).ok


def test_claude_gets_the_runs_spending_cap() -> None:
    claude = ADAPTERS["claude"]
    capped = AgentRef(kind="claude", max_budget_usd=0.375)
    argv, _ = claude.build(capped, Launch("/p.md", "sid"))
    assert argv[argv.index("--max-budget-usd") + 1] == "0.375"  # never rounded past the budget
    own = capped.model_copy(update={"args": ["--max-budget-usd", "5"]})
    argv, _ = claude.build(own, Launch("/p.md", "sid"))
    assert argv.count("--max-budget-usd") == 1  # the agent's own flag wins
    argv, _ = claude.build(AgentRef(kind="claude"), Launch("/p.md", "sid"))
    assert "--max-budget-usd" not in argv
