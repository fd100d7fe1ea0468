"""The meter: what a run has spent so far, read incrementally from its output, and priced."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reconciler.node.agents.meter import METER_JSON, Spend, spend
from reconciler.node.agents.pricing import model_in, price_of
from reconciler.protocol import AgentRef, Pricing

SONNET = "claude-sonnet-4-5-20250929"


def message(
    ident: str, tokens_in: int, tokens_out: int, *, model: str = SONNET, **cache: int
) -> str:
    usage = {"input_tokens": tokens_in, "output_tokens": tokens_out, **cache}
    event = {
        "type": "assistant",
        "message": {"id": ident, "model": model, "content": [], "usage": usage},
    }
    return json.dumps(event) + "\n"


def write(run_dir: Path, text: str) -> None:
    with open(run_dir / "output.log", "a", encoding="utf-8") as handle:
        handle.write(text)


CLAUDE = AgentRef(kind="claude")


def test_claude_usage_is_counted_once_per_message_and_priced_by_its_model(tmp_path: Path) -> None:
    # A message streamed as two events (text, then a tool call) repeats its usage: once.
    write(tmp_path, message("m1", 1000, 200) + message("m1", 1000, 200) + "noise\n")
    write(tmp_path, message("m2", 3000, 500, cache_read_input_tokens=10_000))
    found = spend(CLAUDE, str(tmp_path))
    assert (found.input_tokens, found.output_tokens) == (4000, 700)
    # sonnet 4.5: 3 in, 15 out, 0.30 cache read (USD per million tokens)
    assert found.cost_usd == pytest.approx((4000 * 3 + 700 * 15 + 10_000 * 0.3) / 1e6)
    assert found.estimated


def test_claude_codes_own_synthetic_messages_are_no_turn_and_cost_nothing(tmp_path: Path) -> None:
    # Claude Code writes an API error's text as an assistant message of model "<synthetic>"
    write(tmp_path, message("m1", 1000, 100) + message("s1", 0, 0, model="<synthetic>"))
    found = spend(CLAUDE, str(tmp_path))
    assert found.turns == 1
    assert found.cost_usd == pytest.approx((1000 * 3 + 100 * 15) / 1e6)  # still priced


def test_the_meter_reads_only_what_was_written_since_the_last_pass(tmp_path: Path) -> None:
    write(tmp_path, message("m1", 1000, 100) + message("m2", 1000, 100)[:40])  # m2 is cut
    assert spend(CLAUDE, str(tmp_path)).tokens == 1100
    kept = json.loads((tmp_path / METER_JSON).read_text())
    assert kept["offset"] == len(message("m1", 1000, 100).encode())  # whole lines only
    write(tmp_path, message("m2", 1000, 100)[40:] + message("m3", 500, 50))
    assert spend(CLAUDE, str(tmp_path)).tokens == 2750
    # A replaced output (shorter than what was read) is read again from its start.
    (tmp_path / "output.log").write_text(message("x", 10, 1))
    assert spend(CLAUDE, str(tmp_path)).tokens == 11


def test_claude_result_cost_wins_over_the_estimate(tmp_path: Path) -> None:
    result = {
        "type": "result",
        "subtype": "success",
        "total_cost_usd": 0.0421,
        "usage": {"input_tokens": 1200, "output_tokens": 300},
    }
    write(tmp_path, message("m1", 1000, 200) + json.dumps(result) + "\n")
    found = spend(CLAUDE, str(tmp_path), final=True)
    last = "── result success: $0.0421"  # as `logs` shows a result without num_turns
    assert found == Spend(
        1200, 300, 0.0421, False, 1, 0, len((tmp_path / "output.log").read_bytes()), last
    )


def test_an_unknown_model_has_tokens_but_no_cost_unless_the_agent_prices_it(
    tmp_path: Path,
) -> None:
    write(tmp_path, message("m1", 1000, 1000, model="claude-unreleased-9"))
    found = spend(CLAUDE, str(tmp_path))
    assert (found.tokens, found.cost_usd, found.estimated) == (2000, None, False)
    priced = AgentRef(kind="claude", pricing=Pricing(input=2.0, output=8.0))
    assert spend(priced, str(tmp_path)).cost_usd == pytest.approx((2000 + 8000) / 1e6)


def test_aider_reports_its_session_cost_as_it_goes(tmp_path: Path) -> None:
    aider = AgentRef(kind="aider")
    write(
        tmp_path,
        "Aider v0.86\nTokens: 2.3k sent, 150 received. Cost: $0.01 message, $0.01 session.\n",
    )
    text = "Aider v0.86\nTokens: 2.3k sent, 150 received. Cost: $0.01 message, $0.01 session.\n"
    assert spend(aider, str(tmp_path)) == Spend(
        2300, 150, 0.01, False, turns=1, event_end=len(text), last_event=text.splitlines()[1]
    )
    # rich wraps a long report over two lines; it is read whole
    write(
        tmp_path,
        "Applied edit to a.py\nTokens: 12k sent, 1,204 received. Cost: $0.05 message,\n$0.06 session.\n",
    )
    found = spend(aider, str(tmp_path))
    assert (found.input_tokens, found.output_tokens, found.cost_usd, found.turns) == (
        14300,
        1354,
        0.06,
        2,
    )
    assert found.last_event == "$0.06 session."  # every transcript line is progress


def test_codex_is_priced_from_its_running_total_with_cached_input_inside_input(
    tmp_path: Path,
) -> None:
    codex = AgentRef(kind="codex", args=["-m", "gpt-5-codex"])
    usage = {"input_tokens": 10_000, "cached_input_tokens": 8000, "output_tokens": 500}
    turn = json.dumps({"type": "turn.completed", "usage": usage}) + "\n"
    write(tmp_path, turn + turn)  # a running total: the last one counts, not the sum
    found = spend(codex, str(tmp_path))
    assert found.tokens == 10_500
    assert found.cost_usd == pytest.approx((2000 * 1.25 + 8000 * 0.125 + 500 * 10) / 1e6)


def test_turns_and_tool_calls_as_each_agent_reports_them(tmp_path: Path) -> None:
    def tool(ident: str) -> dict[str, object]:
        return {"type": "tool_use", "id": ident, "name": "Bash", "input": {"command": "ls"}}

    def claude_event(ident: str, *blocks: dict[str, object]) -> str:
        usage = {"input_tokens": 10, "output_tokens": 5}
        msg = {"id": ident, "model": SONNET, "content": list(blocks), "usage": usage}
        return json.dumps({"type": "assistant", "message": msg}) + "\n"

    claude_dir = tmp_path / "claude"
    claude_dir.mkdir()
    # m1 streamed as a text event then a tool event; some versions repeat earlier blocks
    write(claude_dir, claude_event("m1", {"type": "text", "text": "look"}))
    write(claude_dir, claude_event("m1", tool("t1")) + claude_event("m1", tool("t1"), tool("t2")))
    write(claude_dir, '{"type": "user", "message": {"content": []}}\n')
    write(claude_dir, claude_event("m2", {"type": "text", "text": "done"}))
    found = spend(CLAUDE, str(claude_dir))
    assert (found.turns, found.tool_calls, found.tokens) == (2, 2, 30)

    codex_dir = tmp_path / "codex"
    codex_dir.mkdir()
    items = [
        {"type": "item.completed", "item": {"type": "reasoning", "text": "hm"}},
        {"type": "item.completed", "item": {"type": "command_execution", "command": "ls"}},
        {"type": "item.completed", "item": {"type": "file_change", "changes": []}},
        {"type": "item.completed", "item": {"type": "agent_message", "text": "ok"}},
        {"type": "turn.completed", "usage": {"input_tokens": 5, "output_tokens": 1}},
    ]
    write(codex_dir, "".join(json.dumps(i) + "\n" for i in items))
    found = spend(AgentRef(kind="codex"), str(codex_dir))
    assert (found.turns, found.tool_calls, found.tokens, found.cost_usd) == (1, 2, 6, None)

    gemini_dir = tmp_path / "gemini"
    gemini_dir.mkdir()
    stream = [
        {"type": "init", "session_id": "s", "model": "gemini-2.5-flash"},
        {"type": "message", "role": "user", "content": "fix it"},
        {"type": "message", "role": "assistant", "content": "Let", "delta": True},
        {"type": "message", "role": "assistant", "content": " me", "delta": True},
        {"type": "tool_use", "tool_name": "read_file", "tool_id": "a"},
        {"type": "tool_use", "tool_name": "read_file", "tool_id": "b"},
        {"type": "tool_result", "tool_id": "a", "status": "success"},
        {"type": "tool_result", "tool_id": "b", "status": "success"},
        {"type": "message", "role": "assistant", "content": "Done.", "delta": True},
        {
            "type": "result",
            "status": "success",
            "stats": {"input_tokens": 900, "output_tokens": 100},
        },
    ]
    write(gemini_dir, "".join(json.dumps(e) + "\n" for e in stream))
    found = spend(AgentRef(kind="gemini"), str(gemini_dir))
    assert (found.turns, found.tool_calls, found.tokens) == (2, 2, 1000)
    assert found.cost_usd == pytest.approx((900 * 0.3 + 100 * 2.5) / 1e6)


def test_command_agents_report_no_spend_whatever_they_print(tmp_path: Path) -> None:
    write(tmp_path, "Tokens: 2.3k sent, 150 received.\n")
    said = spend(AgentRef(kind="command", command=["x"]), str(tmp_path))
    assert said == Spend(last_event="Tokens: 2.3k sent, 150 received.")


@pytest.mark.parametrize(
    ("model", "price_in"),
    [
        ("claude-opus-4-5-20251101", 5.0),
        ("claude-opus-4-20250514", 15.0),
        ("anthropic/claude-opus-4.1", 15.0),
        ("claude-haiku-5-5[1m]", 0.1),
        ("claude-sonnet-4-5@20250929", 3.0),
        ("gpt-5-2025-08-07", 1.25),
        ("gpt-5.1-codex-mini", 0.25),
        ("gemini-2.5-flash-preview-09-2025", 0.3),
        ("claude-opus-4-9", None),  # unknown: never priced as its older namesake
        ("my-local-model", None),
    ],
)
def test_model_prices(model: str, price_in: float | None) -> None:
    found = price_of(model)
    assert (found.input if found else None) == price_in


def test_the_model_an_agents_arguments_choose() -> None:
    assert model_in(["--model", "opus", "-p"]) == "opus"
    assert model_in(["--model=gpt-5"]) == "gpt-5"
    assert model_in(["-m", "gemini-2.5-pro"]) == "gemini-2.5-pro"
    assert model_in(["--", "--model", "x"]) is None
    assert model_in(["--verbose"]) is None


REAL_CLAUDE = Path(__file__).parent / "agents_fixtures" / "claude"


def test_claude_mid_run_spend_is_the_final_figure_before_the_result(tmp_path: Path) -> None:
    # Claude Code 2.1.197 with --include-partial-messages against the scripted API: each
    # assistant event repeats message_start's usage (1 output token); message_delta carries
    # the whole output. Metered before the result arrives, the run has spent what the result
    # then reports.
    lines = (REAL_CLAUDE / "real-2.1.197-partial.jsonl").read_text().splitlines(keepends=True)
    result = json.loads(lines[-1])
    assert result["type"] == "result"
    write(tmp_path, "".join(lines[:-1]))
    mid = spend(CLAUDE, str(tmp_path))
    assert mid.estimated  # priced from tokens: no result yet
    assert (mid.input_tokens, mid.output_tokens) == (
        result["usage"]["input_tokens"],
        result["usage"]["output_tokens"],
    )
    assert mid.cost_usd == pytest.approx(result["total_cost_usd"], rel=0.02)
    write(tmp_path, lines[-1])
    final = spend(CLAUDE, str(tmp_path), final=True)
    assert (final.cost_usd, final.estimated) == (round(result["total_cost_usd"], 6), False)


def test_a_budget_stopped_claude_run_keeps_its_tokens(tmp_path: Path) -> None:
    # error_max_budget_usd results report usage all zero; the counts are in modelUsage
    result = {
        "type": "result",
        "subtype": "error_max_budget_usd",
        "is_error": True,
        "total_cost_usd": 0.0312,
        "usage": {"input_tokens": 0, "output_tokens": 0},
        "modelUsage": {
            "claude-opus-4-8": {"inputTokens": 2400, "outputTokens": 600, "costUSD": 0.027},
            "claude-haiku-4-5": {"inputTokens": 100, "outputTokens": 20, "costUSD": 0.0042},
        },
    }
    write(tmp_path, json.dumps(result) + "\n")
    found = spend(CLAUDE, str(tmp_path), final=True)
    assert (found.input_tokens, found.output_tokens, found.cost_usd) == (2500, 620, 0.0312)


def test_api_retries_are_what_the_run_is_on_not_progress(tmp_path: Path) -> None:
    # Claude Code 2.1.197 with a rejected key: one system/api_retry event per retry
    write(tmp_path, (REAL_CLAUDE / "real-2.1.197-api-retry.jsonl").read_text())
    found = spend(CLAUDE, str(tmp_path))
    first_line = (REAL_CLAUDE / "real-2.1.197-api-retry.jsonl").read_bytes().split(b"\n")[0]
    assert found.event_end == len(first_line) + 1  # the init event: nothing since
    assert found.last_event == "retrying: 401 authentication_failed (attempt 6 of 10)"


def test_codex_reconnecting_is_not_progress(tmp_path: Path) -> None:
    started = '{"type":"thread.started","thread_id":"t-1"}\n{"type":"turn.started"}\n'
    write(tmp_path, started)
    for n in (1, 2):
        message = f"Reconnecting... {n}/5 (stream disconnected before completion)"
        write(tmp_path, json.dumps({"type": "error", "message": message}) + "\n")
    found = spend(AgentRef(kind="codex"), str(tmp_path))
    assert found.event_end == len(started.splitlines()[0]) + 1
    assert found.last_event == (
        "retrying: Reconnecting... 2/5 (stream disconnected before completion)"
    )


REAL_AIDER = Path(__file__).parent / "agents_fixtures" / "aider" / "real-0.86.2"


def test_aider_retrying_its_model_is_not_progress(tmp_path: Path) -> None:
    # aider 0.86.2 against a failing endpoint: minutes of error, explanation and "Retrying in"
    # lines after its banner, all no progress; what it is on is the retried error
    text = (REAL_AIDER / "unreachable.out").read_text()
    write(tmp_path, text)
    found = spend(AgentRef(kind="aider"), str(tmp_path))
    banner = text.index("Repo-map: using 1024 tokens, auto refresh\n")
    assert found.event_end == len(text[:banner].encode()) + len(
        "Repo-map: using 1024 tokens, auto refresh\n"
    )
    assert found.last_event == (
        "retrying: litellm.InternalServerError: InternalServerError: OpenAIException - Connection"
    )


def test_aider_after_a_retried_error_progresses_again(tmp_path: Path) -> None:
    text = (REAL_AIDER / "overloaded-then-edit.out").read_text()
    write(tmp_path, text)
    found = spend(AgentRef(kind="aider"), str(tmp_path))
    assert found.event_end == len(text.encode())
    assert found.last_event is not None and found.last_event.startswith("Commit ")


def test_gemini_is_priced_per_model_it_routed_to(tmp_path: Path) -> None:
    # Gemini CLI 0.61.0 against the scripted API: init says model "auto"; the result's stats
    # name the router's model and the model that answered, each 1200 in / 300 out per call
    stream = Path(__file__).parent / "agents_fixtures" / "gemini" / "real-0.61.0-routed.jsonl"
    write(tmp_path, stream.read_text())
    gemini = AgentRef(kind="gemini", pricing=Pricing(input=1.0, output=4.0))
    found = spend(gemini, str(tmp_path), final=True)
    assert (found.input_tokens, found.output_tokens) == (3600, 900)
    assert found.cost_usd == pytest.approx((3600 * 1.0 + 900 * 4.0) / 1e6)
    unpriced = spend(AgentRef(kind="gemini"), str(tmp_path), final=True)
    assert unpriced.cost_usd is None  # models the built-in table does not know: no guess


def test_gemini_retrying_on_stderr_is_what_the_run_is_on(tmp_path: Path) -> None:
    # Gemini CLI 0.61 prints its retries on stderr only (stdout waits for the result)
    gemini = AgentRef(kind="gemini")
    write(tmp_path, '{"type":"init","session_id":"s","model":"auto"}\n')
    assert spend(gemini, str(tmp_path)).last_event == "── session s (auto)"
    with open(tmp_path / "stderr.log", "a") as err:
        err.write(
            "Attempt 2 failed with status 503. Retrying with backoff... _ApiError: "
            '{"error":{"code":503,"message":"overloaded"}}\n    at stack (x.js:1:1)\n'
        )
    found = spend(gemini, str(tmp_path))
    assert found.last_event == (
        'retrying: 503 _ApiError: {"error":{"code":503,"message":"overloaded"}} (attempt 2)'
    )
    assert found.event_end == len('{"type":"init","session_id":"s","model":"auto"}\n')
    # the agent moves on: its event is what it is on again, the old notice stays behind
    write(tmp_path, '{"type":"message","role":"assistant","content":"hi","delta":true}\n')
    assert spend(gemini, str(tmp_path)).last_event == "assistant: hi"


FIXTURES = Path(__file__).parent / "agents_fixtures"
RETRY_503 = b"Attempt 2 failed with status 503. Retrying with backoff... overloaded\n"
THREAD = "0199a213-81c0-7800-8aa1-bbab2a035a53"  # of codex/success.jsonl and codex/resumed.jsonl


@pytest.mark.parametrize(
    ("agent", "output", "cut", "upto", "stderr"),
    [
        (CLAUDE, "claude/real-2.1.197-partial.jsonl", 6, None, b""),
        (AgentRef(kind="codex", args=["-m", "gpt-5-codex"]), "codex/resumed.jsonl", 7, None, b""),
        (AgentRef(kind="gemini"), "gemini/real-0.61.0-routed.jsonl", 3, None, RETRY_503),
        # the next line is aider's "Retrying in …": still the error the tally saw
        (AgentRef(kind="aider"), "aider/real-0.86.2/overloaded-then-edit.out", 10, 11, b""),
    ],
)
def test_a_tally_in_the_first_shape_still_counts(
    tmp_path: Path, agent: AgentRef, output: str, cut: int, upto: int | None, stderr: bytes
) -> None:
    # A run metered before an upgrade goes on after it: the tally it left (see
    # agents_fixtures/meter_v1) is read on from where it stopped, with what only it knows.
    lines = (FIXTURES / output).read_bytes().splitlines(keepends=True)
    seen, rest = b"".join(lines[:cut]), b"".join(lines[cut:upto])

    def run(name: str, head: bytes, tally: bytes | None) -> Path:
        task = tmp_path / name
        earlier = task / "1.1"  # the run whose codex thread the run resumes
        earlier.mkdir(parents=True)
        (earlier / "output.log").write_bytes((FIXTURES / "codex/success.jsonl").read_bytes())
        (earlier / "run.json").write_text(json.dumps({"session_id": THREAD}))
        here = task / "2.1"
        here.mkdir()
        (here / "output.log").write_bytes(head + rest)
        (here / "stderr.log").write_bytes(stderr)
        if tally is not None:
            (here / METER_JSON).write_bytes(tally)
        return here

    def metered(here: Path) -> Spend:
        return spend(
            agent, str(here), final=True, resumed=THREAD if agent.kind == "codex" else None
        )

    whole = metered(run("whole", seen, None))
    # What the tally already counted is blanked out: only the tally can tell it now.
    blank = b"\n" * len(seen)
    old = (FIXTURES / "meter_v1" / f"{agent.kind}.json").read_bytes()
    assert metered(run("upgraded", blank, old)) == whole
    assert metered(run("lost", blank, None)) != whole


def test_an_unmetered_agent_tells_what_it_printed_last_and_nothing_of_spend(
    tmp_path: Path,
) -> None:
    write(tmp_path, "building…\n\nrunning 41 tests\n   \n")
    said = spend(AgentRef(kind="command", command=["make"]), str(tmp_path))
    assert said == Spend(last_event="running 41 tests")
    assert spend(AgentRef(kind="command", command=["make"]), str(tmp_path / "none")) == Spend()
    write(tmp_path, "x" * 300 + "\n")
    assert spend(AgentRef(kind="command"), str(tmp_path)).last_event == "x" * 200
