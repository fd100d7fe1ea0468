"""The codex adapter: its command lines, and real runs of a fake ``codex`` through the node.

The fake (``agents_fixtures/codex/fake_codex.py``) parses its argv with the grammar of
``codex exec``, checks stdin and the environment, and exits 2 on anything wrong, so a bad
command line fails these tests; then it replays a recorded ``exec --json`` stream.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path

import pytest

from reconciler.node.agents import ADAPTERS, Launch
from reconciler.node.agents.codex import CodexAdapter, retry_notice
from reconciler.node.errors import NodeError
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

FIXTURES = Path(__file__).parent / "agents_fixtures" / "codex"
FAKE = FIXTURES / "fake_codex.py"
THREAD = "0199a213-81c0-7800-8aa1-bbab2a035a53"
OK = ExitInfo(exit_code=0, ended_at=1.0)
FAILED = ExitInfo(exit_code=1, ended_at=1.0)
PROMPT = "Fix the flaky clock test.\nWhen done, say TASK_COMPLETE.\n"
SUCCESS_TEXT = (
    "Froze the clock in `tests/test_clock.py`; the test passes 50 times in a row. TASK_COMPLETE"
)
codex = ADAPTERS["codex"]
# What every run gets unless its args choose otherwise: no analytics, no update check, and a
# failing turn (not "Reconnecting..." forever) when the model API cannot be reached.
DEFAULTS = [
    "-c",
    "analytics.enabled=false",
    "-c",
    "check_for_update_on_startup=false",
    "--disable",
    "unbounded_connection_retries",
]


def fake_agent(
    stream: str,
    *,
    exit: str = "0",
    resume: str | None = None,
    args: list[str] | None = None,
    sandbox: str = "workspace-write",
    record: Path | None = None,
    env: dict[str, str] | None = None,
) -> AgentRef:
    expect = {"resume": resume, "sandbox": sandbox, "args": args or [], "prompt": PROMPT}
    fake_env = {
        "FAKE_CODEX_STREAM": str(FIXTURES / stream),
        "FAKE_CODEX_EXIT": exit,
        "FAKE_CODEX_EXPECT": json.dumps(expect),
        **({"FAKE_CODEX_RECORD": str(record)} if record else {}),
        **(env or {}),
    }
    return AgentRef(
        kind="codex", command=[sys.executable, str(FAKE)], args=args or [], env=fake_env
    )


def finished(env: Env, run: RunObs) -> tuple[ExitInfo, AgentResult]:
    """Wait for the run to end, then read its verdict the way the control plane does."""
    info = env.wait_exit(run)
    key = f"{run.task}/{run.attempt}.{run.iteration}"
    observed = ObserveResult.model_validate(env.call(ObserveRequest(lane=env.lane, inspect=[key])))
    [seen] = [
        r
        for r in observed.runs
        if (r.task, r.attempt, r.iteration) == (run.task, run.attempt, run.iteration)
    ]
    assert seen.result is not None
    if info.exit_code == 2:  # the fake refused its command line
        stderr = (Path(run.run_dir) / "stderr.log").read_text()
        raise AssertionError(f"the fake codex rejected the run: {stderr}")
    return info, seen.result


# ------------------------------------------------------------------------------ command lines


def test_argv_first_run_puts_the_prompt_on_stdin() -> None:
    agent = AgentRef(kind="codex", args=["--model", "gpt-5-codex"])
    argv, on_stdin = codex.build(agent, Launch("/runs/p.md", "5f0c-session"))
    assert argv == [
        "codex",
        "exec",
        "--json",
        "--sandbox",
        "workspace-write",
        *DEFAULTS,
        "--model",
        "gpt-5-codex",
        "-",
    ]
    assert on_stdin
    assert codex.sessions


def test_argv_resume_keeps_every_option_before_the_subcommand() -> None:
    agent = AgentRef(kind="codex", command=["~/.local/bin/codex"], args=["-m", "o4-mini"])
    argv, on_stdin = codex.build(agent, Launch("/runs/p.md", None, THREAD))
    assert argv == [
        "~/.local/bin/codex",
        "exec",
        "--json",
        "--sandbox",
        "workspace-write",
        *DEFAULTS,
        "-m",
        "o4-mini",
        "resume",
        THREAD,
        "-",
    ]
    assert on_stdin


@pytest.mark.parametrize(
    "args",
    [
        ["--sandbox", "danger-full-access"],
        ["--sandbox=read-only"],
        ["-s", "read-only"],
        ["-sread-only"],
        ["--dangerously-bypass-approvals-and-sandbox"],
        ["--yolo"],
        ["-c", 'sandbox_mode="danger-full-access"'],
        ["--config=sandbox_mode=read-only"],
    ],
)
def test_argv_leaves_the_sandbox_to_args_that_choose_one(args: list[str]) -> None:
    argv, _ = codex.build(AgentRef(kind="codex", args=args), Launch("/p"))
    assert argv == ["codex", "exec", "--json", *DEFAULTS, *args, "-"]


def test_argv_does_not_repeat_json_or_read_option_values_as_sandbox() -> None:
    args = ["--json", "-c", "model_reasoning_effort=high", "--", "--sandbox"]
    argv, _ = codex.build(AgentRef(kind="codex", args=args), Launch("/p"))
    assert argv == ["codex", "exec", "--sandbox", "workspace-write", *DEFAULTS, *args, "-"]
    # The args of the manifest in docs/agents.md: other sandbox_* settings are no choice.
    args = ["-c", "sandbox_workspace_write.network_access=true", "--add-dir", "/srv/x/data"]
    argv, _ = codex.build(AgentRef(kind="codex", args=args), Launch("/p"))
    sandbox = ["--sandbox", "workspace-write"]
    assert argv == ["codex", "exec", "--json", *sandbox, *DEFAULTS, *args, "-"]


def test_the_git_dir_is_never_offered_to_the_sandbox() -> None:
    """Codex 0.171 keeps every .git read-only under workspace-write, --add-dir or not: the
    reconciler commits for codex (AgentSpec.commits) and the git dir stays out of reach."""
    agent = AgentRef(kind="codex", commits="reconciler")
    argv = codex.build(agent, Launch("/p", git_dir="/src/app/.git"))[0]
    assert "/src/app/.git" not in argv
    assert "--add-dir" not in argv


@pytest.mark.parametrize(
    ("args", "left_out"),
    [
        (["-c", "analytics.enabled=true"], ["-c", "analytics.enabled=false"]),
        (["--config", "analytics={enabled=true}"], ["-c", "analytics.enabled=false"]),
        (["-ccheck_for_update_on_startup=true"], ["-c", "check_for_update_on_startup=false"]),
        (["--enable", "unbounded_connection_retries"], DEFAULTS[-2:]),
        (["--disable=unbounded_connection_retries"], DEFAULTS[-2:]),
        (["-c", "features.unbounded_connection_retries=true"], DEFAULTS[-2:]),
        (["-c", "features={unbounded_connection_retries=true}"], DEFAULTS[-2:]),
    ],
)
def test_args_that_make_a_default_choice_replace_it(args: list[str], left_out: list[str]) -> None:
    """Each default is the adapter's only while ``args`` say nothing about it."""
    argv, _ = codex.build(AgentRef(kind="codex", args=args), Launch("/p"))
    prefix = ["codex", "exec", "--json", "--sandbox", "workspace-write"]
    kept = [*DEFAULTS]
    at = next(i for i in range(len(kept)) if kept[i : i + 2] == left_out)
    del kept[at : at + 2]
    assert argv == [*prefix, *kept, *args, "-"]


def test_other_settings_in_args_keep_the_defaults() -> None:
    args = ["-c", "features.plugins=false", "--disable", "plugins", "-c", "analytics_x=1"]
    argv, _ = codex.build(AgentRef(kind="codex", args=args), Launch("/p"))
    assert argv == [
        "codex",
        "exec",
        "--json",
        "--sandbox",
        "workspace-write",
        *DEFAULTS,
        *args,
        "-",
    ]


def _provider(argv: list[str]) -> dict[str, object]:
    """The ``-c`` settings of ``argv`` about the model provider, parsed as codex parses them."""
    values = [argv[i + 1] for i, a in enumerate(argv) if a == "-c"]
    found = {}
    for value in values:
        key, _, raw = value.partition("=")
        if key.startswith("model_provider"):
            found[key] = tomllib.loads(f"v = {raw}")["v"]
    return found


def test_openai_base_url_becomes_a_model_provider() -> None:
    """Codex ignores OPENAI_BASE_URL: the adapter configures a provider with it, so that an
    admin only exports the URL and a key in the lane user's profile."""
    env = {"OPENAI_BASE_URL": "http://127.0.0.1:8080/v1", "OPENAI_API_KEY": "sk-x"}
    argv, _ = codex.build(AgentRef(kind="codex", args=["-m", "o4"]), Launch("/p", env=env))
    assert _provider(argv) == {
        "model_provider": "reconciler",
        "model_providers.reconciler": {
            "name": "OPENAI_BASE_URL",
            "base_url": "http://127.0.0.1:8080/v1",
            "env_key": "OPENAI_API_KEY",
            "wire_api": "responses",
        },
    }
    assert argv[-3:] == ["-m", "o4", "-"]  # before the args, which may still override it
    # codex's own variable wins over OpenAI's when both are set
    both = {**env, "CODEX_API_KEY": "sk-y"}
    argv, _ = codex.build(AgentRef(kind="codex"), Launch("/p", None, THREAD, env=both))
    assert _provider(argv)["model_providers.reconciler"]["env_key"] == "CODEX_API_KEY"  # type: ignore[index]
    assert argv[-3:] == ["resume", THREAD, "-"]
    # any URL arrives intact, as a TOML string
    odd = 'http://gw.example/v1?team="a\\b"&x=\u00e9'
    argv, _ = codex.build(AgentRef(kind="codex"), Launch("/p", env={"OPENAI_BASE_URL": odd}))
    table = _provider(argv)["model_providers.reconciler"]
    assert table["base_url"] == odd  # type: ignore[index]
    assert table["env_key"] == "OPENAI_API_KEY"  # type: ignore[index]  # none set: codex says so


@pytest.mark.parametrize(
    "args",
    [
        ["-c", 'model_provider="azure"'],
        ["--config=model_provider=ollama"],
        ["--oss"],
        ["--local-provider", "lmstudio"],
    ],
)
def test_a_provider_chosen_in_args_is_kept(args: list[str]) -> None:
    env = {"OPENAI_BASE_URL": "http://127.0.0.1:8080/v1"}
    argv, _ = codex.build(AgentRef(kind="codex", args=args), Launch("/p", env=env))
    assert "model_providers.reconciler" not in " ".join(argv)
    assert argv[-1 - len(args) : -1] == args


def test_no_provider_without_openai_base_url() -> None:
    for env in ({}, {"OPENAI_BASE_URL": " "}, {"OPENAI_API_KEY": "sk-x"}):
        argv, _ = codex.build(AgentRef(kind="codex"), Launch("/p", env=env))
        assert _provider(argv) == {}


@pytest.mark.parametrize("bad", ["--dangerously-bypass-approvals-and-sandbox", "-", "a b", ""])
def test_resume_refuses_what_is_not_a_thread_id(bad: str) -> None:
    if not bad:  # an empty resume is no resume
        argv, _ = codex.build(AgentRef(kind="codex"), Launch("/p", None, bad))
        assert "resume" not in argv
        return
    with pytest.raises(NodeError, match="not a thread id"):
        codex.build(AgentRef(kind="codex"), Launch("/p", None, bad))


def test_strip_env_names_what_codex_sets_for_its_children() -> None:
    assert codex.strip_env == {
        "CODEX_SANDBOX",
        "CODEX_SANDBOX_NETWORK_DISABLED",
        "CODEX_THREAD_ID",
    }
    assert isinstance(codex, CodexAdapter)


def test_the_fake_rejects_a_wrong_command_line(tmp_path: Path) -> None:
    """What makes the node tests below worth something: a wrong argv exits 2 with a reason."""
    prompt = tmp_path / "prompt.md"
    prompt.write_text(PROMPT)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("CODEX_", "OPENAI_"))}
    expect = {"resume": THREAD, "prompt": PROMPT}
    env = {**base, "RECONCILER_PROMPT_FILE": str(prompt), "FAKE_CODEX_EXPECT": json.dumps(expect)}
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    flags = ["exec", "--json", "--sandbox", "workspace-write"]
    wrong = {
        "sandbox after resume": ["exec", "--json", "resume", "--sandbox", "workspace-write"],
        "prompt as an argument": [*flags, "resume", THREAD, "fix it"],
        "no --json": ["exec", "--sandbox", "workspace-write", "resume", THREAD, "-"],
        "two sandboxes": [*flags, "--yolo", "resume", THREAD, "-"],
        "resume missing": [*flags, "-"],
        "another thread": [*flags, "resume", "0199ffff-0000-7000-8000-000000000000", "-"],
        "sandbox twice": [*flags, "-s", "read-only", "resume", THREAD, "-"],
        "not exec": ["--json", "exec", "-"],
    }

    def fake(
        argv: list[str], stdin: str = PROMPT, run_env: dict[str, str] = env
    ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [sys.executable, str(FAKE), *argv],
            input=stdin.encode(),
            env=run_env,
            cwd=repo,
            capture_output=True,
            check=False,
        )

    for what, argv in wrong.items():
        proc = fake(argv)
        assert proc.returncode == 2, what
        assert proc.stderr.startswith(b"error: "), what
        assert proc.stdout == b"", what
    good = [*flags, "resume", THREAD, "-"]
    for stdin, code in ((PROMPT, 0), ("another prompt", 2), ("", 2)):
        proc = fake(good, stdin)
        assert proc.returncode == code, (stdin, proc.stderr)
    proc = fake(good, run_env={**env, "CODEX_THREAD_ID": "outer"})
    assert proc.returncode == 2
    assert b"outer Codex session" in proc.stderr
    # OPENAI_BASE_URL alone is ignored by codex: the run needs a provider that uses it.
    url = {**env, "OPENAI_BASE_URL": "http://127.0.0.1:9/v1", "OPENAI_API_KEY": "sk-x"}
    table = 'model_providers.p={base_url="%s", env_key="OPENAI_API_KEY", wire_api="responses"}'
    for provider, code in (
        ([], 2),
        (["-c", 'model_provider="p"', "-c", table % "http://127.0.0.1:9/v1"], 0),
        (["-c", 'model_provider="p"', "-c", table % "https://api.openai.com/v1"], 2),
    ):
        proc = fake([*flags, *provider, "resume", THREAD, "-"], run_env=url)
        assert proc.returncode == code, (provider, proc.stderr)


# ------------------------------------------------------------------- runs through the node


def test_success(env: Env) -> None:
    # Variables an outer Codex session sets must not reach the agent (the fake checks).
    outer = {"CODEX_SANDBOX": "seatbelt", "CODEX_SANDBOX_NETWORK_DISABLED": "1"}
    agent = fake_agent("success.jsonl", args=["--model", "gpt-5-codex"], env=outer)
    run = env.start("flaky", agent, PROMPT)
    info, result = finished(env, run)
    assert info.exit_code == 0
    assert result.ok
    assert result.subtype == "success"
    assert result.session_id == THREAD
    assert result.input_tokens == 24763  # cached_input_tokens (24448) are part of it
    assert result.output_tokens == 1220
    # Codex reports no cost: it is priced from the tokens, at gpt-5-codex's prices per MTok
    # (1.25 uncached input, 0.125 cached input, 10 output).
    assert result.cost_usd == pytest.approx((315 * 1.25 + 24448 * 0.125 + 1220 * 10) / 1e6)
    assert result.cost_estimated
    assert result.num_turns == 1
    assert result.final_text == SUCCESS_TEXT
    assert decide(run, exit=info, result=result) == "complete"


def test_turn_failed(env: Env) -> None:
    run = env.start("broken-stream", fake_agent("turn_failed.jsonl", exit="1"), PROMPT)
    info, result = finished(env, run)
    assert info.exit_code == 1
    assert not result.ok
    assert result.subtype == "turn_failed"
    assert result.session_id == "0199a4c8-3f10-7d32-b6a1-5c0e9d2f7a11"
    assert result.final_text.startswith("stream disconnected before completion")
    assert result.input_tokens is None
    assert result.output_tokens is None
    assert result.num_turns == 0
    # no turn completed: nothing worth resuming, the next iteration starts afresh
    assert decide(run, exit=info, result=result) == "iterate"


@pytest.mark.parametrize("exit", ["1", "0"])
def test_api_error_event(env: Env, exit: str) -> None:
    """An error event ends the turn: not ok, even when the process says 0."""
    run = env.start(f"unauthorized-{exit}", fake_agent("api_error.jsonl", exit=exit), PROMPT)
    info, result = finished(env, run)
    assert info.exit_code == int(exit)
    assert not result.ok
    assert result.subtype == "error"
    assert result.session_id == "0199a4d0-77aa-7c01-9e55-0a1b2c3d4e5f"
    assert "401 Unauthorized" in result.final_text
    assert result.num_turns == 0


def test_unauthorized_fails_the_turn_after_five_retries(env: Env) -> None:
    """Codex 0.171 on a 401 (recorded): five "Reconnecting... n/5" notices, then the cause as
    an error and a failed turn, exit 1. The notices are not the verdict; the cause is."""
    run = env.start("bad-key", fake_agent("unauthorized.jsonl", exit="1"), PROMPT)
    info, result = finished(env, run)
    assert info.exit_code == 1
    assert not result.ok
    assert result.subtype == "turn_failed"
    assert result.session_id == "01a24410-aace-7342-b2c1-f38952d0e03c"
    assert result.final_text.startswith("unexpected status 401 Unauthorized: Incorrect API key")
    assert result.num_turns == 0
    assert decide(run, exit=info, result=result) == "iterate"


def test_stopped_while_reconnecting(env: Env) -> None:
    """Codex 0.171 with unbounded retries and no route to the API (recorded): "Reconnecting...
    waiting for network" until it is stopped (SIGTERM: exit 143). The run ended mid-retry:
    subtype retrying, with what codex was retrying, and the thread still resumable."""
    run = env.start("offline", fake_agent("reconnecting.jsonl", exit="143"), PROMPT)
    info, result = finished(env, run)
    assert info.exit_code == 143
    assert not result.ok
    assert result.subtype == "retrying"
    assert result.session_id == "01a24410-ce76-7fa0-8627-06ec2c64cbc4"
    assert result.final_text == (
        "ended while codex was retrying the model API: Reconnecting... waiting for network "
        "(Connection failed: error sending request)"
    )
    assert result.input_tokens is None
    assert result.num_turns == 0


def test_openai_base_url_reaches_codex_as_its_provider(env: Env) -> None:
    """The fake, like codex, ignores OPENAI_BASE_URL unless a provider uses it (it checks)."""
    endpoint = {"OPENAI_BASE_URL": "http://127.0.0.1:9/v1", "CODEX_API_KEY": "sk-test"}
    run = env.start("gateway", fake_agent("success.jsonl", env=endpoint), PROMPT)
    _info, result = finished(env, run)
    assert result.ok


def test_context_window_exhausted_is_a_failed_turn(env: Env) -> None:
    """Codex has no --max-turns; a turn that runs out of context window is its nearest."""
    run = env.start("too-big", fake_agent("context_window.jsonl", exit="1"), PROMPT)
    info, result = finished(env, run)
    assert not result.ok
    assert result.subtype == "turn_failed"
    assert "context window" in result.final_text
    assert "TASK_COMPLETE" not in result.final_text
    # the turn never completed (num_turns 0): the next iteration starts a new thread, as the
    # error asks, instead of resuming the full one
    assert decide(run, exit=info, result=result) == "iterate"
    assert decide(run, exit=info, result=result, attempt=3, iteration=3) == "failed"


def test_transient_error_then_completed_turn_is_success(env: Env) -> None:
    run = env.start("reconnected", fake_agent("recovered.jsonl"), PROMPT)
    _info, result = finished(env, run)
    assert result.ok
    assert result.subtype == "success"
    assert result.final_text == SUCCESS_TEXT


def test_stream_cut_off_mid_line(env: Env) -> None:
    run = env.start("killed", fake_agent("cut_off.jsonl", exit="SIGKILL"), PROMPT)
    info, result = finished(env, run)
    assert info.exit_code is None
    assert info.signal == signal.SIGKILL
    assert not result.ok
    assert result.subtype is None  # no turn ended in the output
    assert result.session_id == THREAD  # still resumable
    assert result.input_tokens is None
    assert result.final_text == SUCCESS_TEXT  # the last message it did write
    assert decide(run, exit=info, result=result) == "retry"  # marked crashed, a new attempt


def test_garbage_lines_interleaved(env: Env) -> None:
    run = env.start("noisy", fake_agent("garbage.jsonl"), PROMPT)
    _info, result = finished(env, run)
    assert result.ok
    assert result.subtype == "success"
    assert result.session_id == THREAD  # not the forged "--dangerously-…" thread id
    assert result.input_tokens == 24763
    assert result.output_tokens == 1220
    assert result.num_turns == 1
    assert result.final_text == SUCCESS_TEXT


def test_sandbox_from_args_is_not_doubled(env: Env) -> None:
    args = ["--dangerously-bypass-approvals-and-sandbox", "-c", "model_reasoning_effort=high"]
    agent = fake_agent("success.jsonl", args=args, sandbox="bypass")
    run = env.start("trusted-lane", agent, PROMPT)
    _info, result = finished(env, run)
    assert result.ok


def test_resume_on_the_next_iteration_from_the_same_worktree(env: Env, tmp_path: Path) -> None:
    record = tmp_path / "codex-calls.jsonl"
    args = ["--model", "gpt-5-codex"]
    first = env.start(
        "review",
        fake_agent("success.jsonl", args=args, record=record),
        PROMPT,
        session_id="8c9a4f1e-2b3d-4e5f-8a6b-7c8d9e0f1a2b",  # what apply sends; codex ignores it
    )
    _info, result = finished(env, first)
    assert result.ok
    assert result.session_id == THREAD
    # The planner resumes the next iteration with the session the first run reported.
    second = env.start(
        "review",
        fake_agent("resumed.jsonl", args=args, resume=result.session_id, record=record),
        PROMPT,
        iteration=2,
        resume_session=result.session_id,
    )
    _info, resumed = finished(env, second)
    assert resumed.ok
    assert resumed.session_id == THREAD
    assert resumed.final_text.endswith("TASK_COMPLETE")
    # Codex's usage is the thread's running total (51020 in, 1804 out): the first run's
    # totals are taken out, so a resumed run counts only what it spent itself.
    assert (resumed.input_tokens, resumed.output_tokens) == (51020 - 24763, 1804 - 1220)
    calls = [json.loads(line) for line in record.read_text().splitlines()]
    assert len(calls) == 2
    assert "resume" not in calls[0]["argv"]
    argv = calls[1]["argv"]
    assert argv[argv.index("resume") : argv.index("resume") + 3] == ["resume", THREAD, "-"]
    assert argv[-1] == "-"
    workspace = str(env.workspace("review"))
    assert calls[0]["cwd"] == calls[1]["cwd"] == workspace == first.workspace == second.workspace
    assert calls[0]["stdin"] == calls[1]["stdin"] == PROMPT
    assert second.session_id == THREAD  # the run records the thread it resumed


def test_a_fresh_run_records_no_session_codex_never_had(env: Env) -> None:
    made_up = "8c9a4f1e-2b3d-4e5f-8a6b-7c8d9e0f1a2b"
    run = env.start("fresh", fake_agent("success.jsonl"), PROMPT, session_id=made_up)
    finished(env, run)
    assert run.session_id != made_up


# ------------------------------------------------------------------ parsing recorded output


def write(tmp_path: Path, data: bytes) -> str:
    path = tmp_path / "output.log"
    path.write_bytes(data)
    return str(path)


def test_parse_truncated_line_after_a_completed_turn_is_still_success(tmp_path: Path) -> None:
    data = (FIXTURES / "success.jsonl").read_bytes() + b'{"type":"item.comp'
    result = codex.parse(write(tmp_path, data), OK)
    assert result.ok
    assert result.final_text == SUCCESS_TEXT


def test_parse_completed_turn_with_bad_exit_is_not_ok(tmp_path: Path) -> None:
    path = write(tmp_path, (FIXTURES / "success.jsonl").read_bytes())
    result = codex.parse(path, FAILED)
    assert not result.ok
    assert result.subtype == "success"
    killed = codex.parse(path, ExitInfo(exit_code=None, signal=15, ended_at=1.0))
    assert not killed.ok


def test_parse_takes_the_running_total_of_the_last_completed_turn(tmp_path: Path) -> None:
    turns = [
        {"type": "thread.started", "thread_id": THREAD},
        {"type": "turn.started"},
        {"type": "item.completed", "item": {"id": "a", "type": "agent_message", "text": "one"}},
        {"type": "turn.completed", "usage": {"input_tokens": 100, "output_tokens": 10}},
        {"type": "turn.started"},
        {"type": "turn.completed", "usage": {"input_tokens": 250, "output_tokens": 30}},
    ]
    data = b"".join(json.dumps(t).encode() + b"\n" for t in turns)
    result = codex.parse(write(tmp_path, data), OK)
    assert result.ok
    assert result.num_turns == 2
    assert (result.input_tokens, result.output_tokens) == (250, 30)
    assert result.final_text == ""  # the last turn said nothing; "one" was the turn before


def test_parse_error_after_a_completed_turn_is_not_ok(tmp_path: Path) -> None:
    data = (FIXTURES / "success.jsonl").read_bytes() + b'{"type":"error","message":"boom"}\n'
    result = codex.parse(write(tmp_path, data), OK)
    assert not result.ok
    assert result.subtype == "error"
    assert result.final_text == "boom"


def _jsonl(*events: Mapping[str, object]) -> bytes:
    return b"".join(json.dumps(e).encode() + b"\n" for e in events)


def test_retry_notices_are_not_the_end_of_a_turn(tmp_path: Path) -> None:
    notice = {"type": "error", "message": "Reconnecting... 2/5 (stream disconnected)"}
    assert retry_notice(notice) == "Reconnecting... 2/5 (stream disconnected)"
    assert retry_notice({**notice, "message": "Reconnecting… 1/5 (x)"}) is not None
    assert retry_notice({"type": "error", "message": "unexpected status 401"}) is None
    assert retry_notice({"type": "turn.failed", "message": "Reconnecting... 1/5"}) is None
    assert retry_notice({"type": "error", "message": None}) is None
    start = {"type": "thread.started", "thread_id": THREAD}
    done = {"type": "turn.completed", "usage": {"input_tokens": 9, "output_tokens": 2}}
    said = {"type": "item.completed", "item": {"type": "agent_message", "text": "hi"}}
    # a later turn that retried and then was stopped: retrying, with the earlier turn's usage
    stopped = codex.parse(
        write(tmp_path, _jsonl(start, said, done, {"type": "turn.started"}, notice)), OK
    )
    assert not stopped.ok
    assert stopped.subtype == "retrying"
    assert stopped.final_text.endswith("Reconnecting... 2/5 (stream disconnected)")
    assert (stopped.input_tokens, stopped.output_tokens, stopped.num_turns) == (9, 2, 1)
    # retried, then went on: the retry is forgotten
    item = {"type": "item.started", "item": {"type": "command_execution"}}
    cut = codex.parse(write(tmp_path, _jsonl(start, notice, item)), FAILED)
    assert cut.subtype is None
    recovered = codex.parse(write(tmp_path, _jsonl(start, notice, said, done)), OK)
    assert recovered.ok
    assert recovered.final_text == "hi"


def test_parse_without_events_gives_the_tail(tmp_path: Path) -> None:
    data = b"Error: Not inside a trusted directory and --skip-git-repo-check was not specified.\n"
    result = codex.parse(write(tmp_path, data), FAILED)
    assert not result.ok
    assert result.subtype is None
    assert result.session_id is None
    assert "trusted directory" in result.final_text
    missing = codex.parse(str(tmp_path / "absent.log"), FAILED)
    assert not missing.ok
    assert missing.final_text == ""


def test_parse_reads_only_the_tail_but_finds_the_thread_at_the_head(tmp_path: Path) -> None:
    path = tmp_path / "output.log"
    item = {
        "type": "item.completed",
        "item": {"id": "x", "type": "command_execution", "aggregated_output": "y" * 4000},
    }
    filler = (json.dumps(item) + "\n").encode()
    early = {"type": "item.completed", "item": {"id": "e", "type": "agent_message", "text": "e"}}
    with path.open("wb") as f:
        f.write(json.dumps({"type": "thread.started", "thread_id": THREAD}).encode() + b"\n")
        f.write(b'{"type":"turn.started"}\n' + json.dumps(early).encode() + b"\n")
        f.write(filler * (9 * 1024 * 1024 // len(filler)))
        f.write((FIXTURES / "success.jsonl").read_bytes().split(b"\n", 2)[2])
    result = codex.parse(str(path), OK)
    assert result.ok
    assert result.session_id == THREAD
    assert result.final_text == SUCCESS_TEXT


def test_final_text_is_capped(tmp_path: Path) -> None:
    big = {
        "type": "item.completed",
        "item": {"type": "agent_message", "text": "x" * 100_000 + "END"},
    }
    done = {"type": "turn.completed", "usage": {"input_tokens": 1, "output_tokens": 1}}
    data = b"".join(json.dumps(e).encode() + b"\n" for e in (big, done))
    result = codex.parse(write(tmp_path, data), OK)
    assert len(result.final_text.encode()) <= 64 * 1024
    assert result.final_text.endswith("END")
