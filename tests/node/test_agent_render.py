"""`reconciler logs` renders agents' event streams as readable lines; --raw shows them as is."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from reconciler.node.agents.render import render_line
from reconciler.protocol import AgentRef, LogResult, ReadLogRequest
from tests.node.node_support import Env

STREAM = [
    {"type": "system", "subtype": "init", "session_id": "s-42", "model": "claude-sonnet"},
    {"type": "assistant", "message": {"content": [{"type": "text", "text": "Looking at it."}]}},
    {
        "type": "assistant",
        "message": {
            "content": [{"type": "tool_use", "name": "Bash", "input": {"command": "pytest -q"}}]
        },
    },
    {"type": "user", "message": {"content": [{"type": "tool_result", "content": "3 passed"}]}},
    {
        "type": "result",
        "subtype": "success",
        "is_error": False,
        "num_turns": 3,
        "total_cost_usd": 0.0123,
        "result": "Fixed. TASK_COMPLETE",
        "session_id": "s-42",
    },
]


def test_a_claude_stream_reads_as_turns_tools_and_a_result(env: Env, tmp_path: Path) -> None:
    lines = "".join(json.dumps(e) + "\n" for e in STREAM) + "not json: a warning\n"
    script = tmp_path / "fake_claude.py"
    script.write_text(f"import sys\nsys.stdin.read()\nsys.stdout.write({lines!r})\n")
    run = env.start("render", AgentRef(kind="claude", command=[sys.executable, str(script)]))
    env.wait_exit(run)

    def read(render: bool) -> str:
        req = ReadLogRequest(
            lane=env.lane, task="render", attempt=1, iteration=1, offset=0, render=render
        )
        return LogResult.model_validate(env.call(req)).data

    assert read(False) == lines  # --raw
    assert read(True).splitlines() == [
        "── session s-42 (claude-sonnet)",
        "assistant: Looking at it.",
        "  tool Bash: pytest -q",
        "── result success: 3 turns, $0.0123",
        "Fixed. TASK_COMPLETE",
        "not json: a warning",
    ]


def test_codex_and_gemini_events_and_other_agents_output() -> None:
    codex = [
        {"type": "thread.started", "thread_id": "t-1"},
        {"type": "item.started", "item": {"type": "command_execution", "command": "ls"}},
        {"type": "item.completed", "item": {"type": "command_execution", "exit_code": 0}},
        {"type": "item.completed", "item": {"type": "agent_message", "text": "Done."}},
        {"type": "turn.completed", "usage": {"input_tokens": 10, "output_tokens": 2}},
        {"type": "turn.failed", "error": {"message": "quota"}},
    ]
    shown = [out for e in codex for out in render_line("codex", json.dumps(e))]
    assert shown == [
        "── thread t-1",
        "  $ ls",
        "    exit 0",
        "assistant: Done.",
        "── turn done: 10 in, 2 out",
        "── turn failed: quota",
    ]
    gemini = [
        {"type": "init", "session_id": "g-1", "model": "gemini-2.5-pro"},
        {"type": "message", "role": "user", "content": "do it"},
        {"type": "message", "role": "assistant", "content": "On it.", "delta": True},
        {"type": "tool_use", "tool_name": "replace", "parameters": {"file_path": "a.py"}},
        {"type": "result", "status": "success", "stats": {"total_tokens": 99}},
    ]
    shown = [out for e in gemini for out in render_line("gemini", json.dumps(e))]
    assert shown == [
        "── session g-1 (gemini-2.5-pro)",
        "assistant: On it.",
        "  tool replace: a.py",
        "── result success: 99 tokens",
    ]
    assert render_line("command", '{"type": "result"}') == ['{"type": "result"}']
    assert render_line("codex", '{"type": "thread.sta') == ['{"type": "thread.sta']  # cut off


def test_progress_is_the_last_agent_event_not_the_last_byte(tmp_path: Path) -> None:
    from reconciler.node.agents.meter import spend

    events = "".join(json.dumps(e) + "\n" for e in STREAM[:3])
    usage = {
        "type": "assistant",
        "message": {
            "content": [{"type": "text", "text": "more"}],
            "usage": {"input_tokens": 100, "output_tokens": 20},
        },
    }
    events += json.dumps(usage) + "\n"
    path = tmp_path / "output.log"
    path.write_text(
        events + "heartbeat\n" * 50 + '{"type": "system", "subtype": "ping"}\n' + '{"type": "assi'
    )
    found = spend(AgentRef(kind="claude"), str(tmp_path))
    assert found.event_end == len(events.encode())  # heartbeats, a silent event, a cut line: no
    assert found.last_event == "assistant: more"
    plain = spend(AgentRef(kind="command", command=["x"]), str(tmp_path))
    # no events: progress is output growth, and what it printed last is its last line
    assert (plain.event_end, plain.last_event) == (None, '{"type": "assi')


def test_heartbeats_never_move_the_progress_offset(tmp_path: Path) -> None:
    from reconciler.node.agents.meter import spend

    path = tmp_path / "output.log"
    path.write_text("heartbeat\n" * 1000)
    assert spend(AgentRef(kind="claude"), str(tmp_path)).event_end == 0  # no event yet
    with path.open("a") as handle:
        handle.write(json.dumps(STREAM[1]) + "\n")
    moved = spend(AgentRef(kind="claude"), str(tmp_path)).event_end
    assert moved == path.stat().st_size
    with path.open("a") as handle:
        handle.write("heartbeat\n" * 100_000)  # more than a MiB of them
    # the offset stays put, so the stall clock is not reset
    found = spend(AgentRef(kind="claude"), str(tmp_path))
    assert found.event_end == moved and found.last_event is not None
