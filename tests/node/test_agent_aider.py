"""The aider adapter: the command line it builds, what it reads from aider's plain output, and
real runs through the node against a fake ``aider`` that checks its argv and replays aider's
output (tests/node/agents_fixtures/aider/fake_aider.py)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from reconciler.manifests.models import AgentSpec
from reconciler.node.agents import ADAPTERS, Launch
from reconciler.node.agents.aider import count
from reconciler.node.files import OUTPUT_LOG, STDERR_LOG
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
from tests.support.git import git

FAKE = Path(__file__).parent / "agents_fixtures" / "aider" / "fake_aider.py"
REAL = Path(__file__).parent / "agents_fixtures" / "aider" / "real-0.86.2"
DOC = Path(__file__).resolve().parents[2] / "docs" / "agents.md"
OK = ExitInfo(exit_code=0, ended_at=1.0)
FAILED = ExitInfo(exit_code=1, ended_at=1.0)
KILLED = ExitInfo(exit_code=None, signal=15, ended_at=1.0)
FIXED = [
    "--yes-always",
    "--no-pretty",
    "--no-stream",
    "--no-check-update",
    "--no-show-release-notes",
    "--no-analytics",
    "--no-gitignore",
    "--no-show-model-warnings",
    "--no-detect-urls",
]
PROMPT = (
    "--model gpt-4 is not an option here: it is prompt text.\n"
    "He said \"don't\" & it's $HOME `uname` $(echo pwned) {prompt_file} \\n; rm -rf / #\n"
    "ünïcødé ✓ 日本語 🚀\tTASK_COMPLETE when done\n"
    "no trailing newline"
)

aider = ADAPTERS["aider"]


def aider_ref(
    command: list[str] | None = None, args: list[str] | None = None, **env: str
) -> AgentRef:
    return AgentRef(kind="aider", command=command, args=args or [], env=env)


def fake(scenario: str = "success", args: list[str] | None = None, **env: str) -> AgentRef:
    return aider_ref([sys.executable, str(FAKE)], args, FAKE_AIDER_SCENARIO=scenario, **env)


def write(tmp_path: Path, text: str | bytes) -> str:
    path = tmp_path / "output.log"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return str(path)


def finish(env: Env, run: RunObs, code: int = 0) -> AgentResult:
    """Wait for the run's end, check its exit status (showing the fake's complaint otherwise)
    and return the adapter's verdict on its output."""
    info = env.wait_exit(run)
    stderr = (Path(run.run_dir) / STDERR_LOG).read_text()
    assert info.exit_code == code, f"exit {info.exit_code}, stderr: {stderr}"
    return aider.parse(str(Path(run.run_dir) / OUTPUT_LOG), info)


def commits_ahead(env: Env, name: str) -> int:
    return int(git(env.workspace(name), "rev-list", "--count", "origin/main..HEAD"))


# ------------------------------------------------------------------------------ command line


def test_argv_with_defaults() -> None:
    argv, on_stdin = aider.build(aider_ref(), Launch("/r/1.1/prompt.md"))
    assert argv == [
        "aider",
        "--message-file",
        "/r/1.1/prompt.md",
        *FIXED,
        "--auto-commits",
        "--chat-history-file",
        "/r/1.1/aider.chat.history.md",
        "--input-history-file",
        "/r/1.1/aider.input.history",
    ]
    assert not on_stdin
    assert aider.sessions is False
    assert aider.strip_env == frozenset()
    # litellm's price-list download at every start, off (aider's own has no switch)
    assert aider.env_defaults == {"LITELLM_LOCAL_MODEL_COST_MAP": "True"}


def test_argv_keeps_the_command_and_puts_args_last() -> None:
    agent = aider_ref(["~/.local/bin/aider"], ["--model", "sonnet", "--stream"])
    argv, _ = aider.build(agent, Launch("/r/p.md", "sid", "old-session"))
    assert argv[:3] == ["~/.local/bin/aider", "--message-file", "/r/p.md"]
    assert argv[-3:] == ["--model", "sonnet", "--stream"]  # last wins over --no-stream
    assert "sid" not in argv
    assert "old-session" not in argv  # no sessions: nothing to resume


@pytest.mark.parametrize(
    "args",
    [
        ["--no-auto-commits"],
        ["--auto-commits"],
        ["--auto-commits=1"],  # configargparse style, still the user's choice
    ],
)
def test_argv_leaves_commits_to_args_when_they_say(args: list[str]) -> None:
    argv, _ = aider.build(aider_ref(args=args), Launch("/r/p.md"))
    assert [a for a in argv if "auto-commits" in a] == args


def test_argv_leaves_history_files_to_args_when_they_say() -> None:
    args = ["--chat-history-file=/elsewhere/chat.md", "--input-history-file", "/elsewhere/in"]
    argv, _ = aider.build(aider_ref(args=args), Launch("/r/p.md"))
    assert [a for a in argv if "history" in a] == [args[0], args[1]]
    assert argv[-3:] == args


# ----------------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("text", "value"),
    [("0", 0), ("672", 672), ("1,204", 1204), ("2.3k", 2300), ("12k", 12000), ("1.5M", 1_500_000)],
)
def test_count(text: str, value: int) -> None:
    assert count(text) == value


SUCCESS = """\
Aider v0.86.2
Main model: anthropic/claude-sonnet-4-20250514 with diff edit format, infinite output
Git repo: .git with 12 files
Repo-map: using 4096 tokens, auto refresh

I'll fix the flaky test.

Tokens: 2.3k sent, 120 received. Cost: $0.01 message, $0.01 session.
Applied edit to tests/test_login.py
Commit 3f2a1bc fix: Wait for the login form before submitting
Tokens: 3.2k sent, 1.0k cache write, 2.1k cache hit, 80 received.
Cost: $0.02 message, $0.03 session.
Fixed. TASK_COMPLETE
"""


@pytest.mark.parametrize(
    ("capture", "ok", "tokens", "cost"),
    [
        # one edit in the whole format, committed; a model without prices: no cost
        ("edit-no-price", True, (1200, 300), None),
        # the same with the model's prices in ~/.aider.model.metadata.json
        ("edit-with-price", True, (1200, 300), 0.0081),
        # two 529s (litellm.APIError, "Retrying in 0.2 seconds..."), then the edit
        ("overloaded-then-edit", True, (1200, 300), None),
        # 401: one litellm.AuthenticationError, no retry, exit 0
        ("rejected-key", False, (None, None), None),
        # 500 every time: 9 litellm.InternalServerError over ~76 s, the last without a retry
        ("server-error", False, (None, None), None),
        # nothing listening: the same, "Connection error." wrapped onto the next line
        ("unreachable", False, (None, None), None),
    ],
)
def test_parse_what_aider_0_86_2_printed(
    capture: str, ok: bool, tokens: tuple[int | None, int | None], cost: float | None
) -> None:
    """Output of the real aider 0.86.2 against the scripted model API (1200 input and 300
    output tokens per call); see agents_fixtures/aider/real-0.86.2/README.md."""
    path = REAL / f"{capture}.out"
    result = aider.parse(str(path), OK)
    assert result.ok is ok
    assert result.subtype == (None if ok else "api_error")
    assert (result.input_tokens, result.output_tokens) == tokens
    assert result.cost_usd == cost
    assert result.final_text == path.read_text()
    errors = {
        "rejected-key": "litellm.AuthenticationError: AuthenticationError: OpenAIException - "
        "invalid key",
        "server-error": "litellm.InternalServerError: InternalServerError: OpenAIException - "
        "invalid key",
        "unreachable": "litellm.InternalServerError: InternalServerError: OpenAIException - "
        "Connection error.",  # rich wrapped it; the error is read whole
    }
    assert result.error == errors.get(capture)


def test_parse_sums_tokens_and_takes_the_session_cost(tmp_path: Path) -> None:
    result = aider.parse(write(tmp_path, SUCCESS), OK)
    assert result == AgentResult(
        ok=True,
        subtype=None,
        session_id=None,
        cost_usd=0.03,
        input_tokens=5500,
        output_tokens=200,
        num_turns=None,
        final_text=SUCCESS,
    )


def test_parse_reads_reports_wrapped_by_rich(tmp_path: Path) -> None:
    wrapped = (
        "Tokens: 12k sent, 3.4k cache hit, 1.2k received. Cost: $0.0123 message, $0.4567\n"
        "session.\n"
    )
    result = aider.parse(write(tmp_path, wrapped), OK)
    assert (result.input_tokens, result.output_tokens, result.cost_usd) == (12000, 1200, 0.4567)


def test_parse_reads_the_older_report_format(tmp_path: Path) -> None:
    old = "Tokens: 1,234 sent, 56 received. Cost: $0.0012 request, $0.0040 session.\n"
    result = aider.parse(write(tmp_path, old), OK)
    assert (result.input_tokens, result.output_tokens, result.cost_usd) == (1234, 56, 0.004)


def test_parse_tokens_without_cost_and_no_report_at_all(tmp_path: Path) -> None:
    result = aider.parse(write(tmp_path, "Tokens: 672 sent, 23 received.\nApplied edit to a\n"), OK)
    assert (result.ok, result.input_tokens, result.output_tokens, result.cost_usd) == (
        True,
        672,
        23,
        None,
    )
    result = aider.parse(write(tmp_path, "Aider v0.86.2\nNo changes made.\n"), OK)
    assert result.ok
    assert (result.input_tokens, result.output_tokens, result.cost_usd) == (None, None, None)


def test_parse_ignores_reports_inside_a_line(tmp_path: Path) -> None:
    quoted = "The log said: Tokens: 9k sent, 9k received. Cost: $9.00 message, $9.00 session.\n"
    result = aider.parse(write(tmp_path, quoted + "Tokens: 1k sent, 2 received.\n"), OK)
    assert (result.input_tokens, result.output_tokens) == (1000, 2)


def test_parse_a_model_error_after_the_last_report_is_not_ok(tmp_path: Path) -> None:
    no_report = (
        "Aider v0.86.2\nlitellm.AuthenticationError: AnthropicException - invalid x-api-key\n"
    )
    result = aider.parse(write(tmp_path, no_report), OK)
    assert not result.ok
    assert result.subtype == "api_error"
    assert "invalid x-api-key" in result.final_text
    late = SUCCESS + "litellm.RateLimitError: rate limited\nRetrying in 8.0 seconds...\n"
    result = aider.parse(write(tmp_path, late), OK)
    assert not result.ok
    assert result.subtype == "api_error"
    assert result.cost_usd == 0.03  # what was spent before still counts


def test_parse_a_failed_commit_message_call_is_ok(tmp_path: Path) -> None:
    weak = (
        "Tokens: 2.3k sent, 120 received. Cost: $0.01 message, $0.01 session.\n"
        "Applied edit to feature.txt\n"
        "litellm.APIConnectionError: Connection error.\n"
        "Commit 3f2a1bc (no commit message provided)\n"
    )
    result = aider.parse(write(tmp_path, weak), OK)
    assert result.ok
    assert result.subtype is None


def test_parse_a_retried_model_error_is_ok(tmp_path: Path) -> None:
    retried = "litellm.InternalServerError: Overloaded\nRetrying in 0.2 seconds...\n" + SUCCESS
    result = aider.parse(write(tmp_path, retried), OK)
    assert result.ok
    assert result.subtype is None
    mentioned = SUCCESS.replace("Fixed.", "Handled litellm.RateLimitError: in the client.")
    assert aider.parse(write(tmp_path, mentioned), OK).ok  # not at the start of a line


def test_parse_exit_status_decides_otherwise(tmp_path: Path) -> None:
    path = write(tmp_path, SUCCESS)
    assert not aider.parse(path, FAILED).ok
    assert not aider.parse(path, KILLED).ok
    assert aider.parse(path, FAILED).cost_usd == 0.03
    missing = aider.parse(str(tmp_path / "absent.log"), FAILED)
    assert (missing.ok, missing.final_text, missing.input_tokens) == (False, "", None)
    assert aider.parse(str(tmp_path / "absent.log"), OK).ok


def test_parse_huge_output_keeps_the_tail_and_the_reports_in_it(tmp_path: Path) -> None:
    path = tmp_path / "output.log"
    with path.open("wb") as f:
        f.write(b"Tokens: 1k sent, 1 received. Cost: $1.00 message, $1.00 session.\n")
        f.write(("é" * 50 + "\n").encode() * (9 * 1024 * 1024 // 101))  # past the read window
        f.write(SUCCESS.encode())
    result = aider.parse(str(path), OK)
    assert result.ok
    assert len(result.final_text.encode()) <= 64 * 1024
    assert result.final_text.endswith("Fixed. TASK_COMPLETE\n")
    assert not result.final_text.startswith("\ufffd")  # no half character at the window start
    assert (result.input_tokens, result.output_tokens, result.cost_usd) == (5500, 200, 0.03)


# ------------------------------------------------------------------- real runs through the node


def test_success_run_through_the_node(env: Env) -> None:
    record = env.tmp / "received"
    agent = fake(
        args=["--model", "sonnet"], FAKE_AIDER_RECORD=str(record), FAKE_AIDER_MODEL="sonnet"
    )
    run = env.start("aider-ok", agent, PROMPT)
    result = finish(env, run)
    assert record.read_bytes() == PROMPT.encode("utf-8")  # byte-exact through --message-file
    argv = json.loads(Path(str(record) + ".argv").read_text())
    assert argv[:2] == ["--message-file", str(Path(run.run_dir) / "prompt.md")]
    assert result.ok
    assert result.subtype is None
    assert result.session_id is None
    assert result.cost_usd == 0.03
    assert (result.input_tokens, result.output_tokens) == (5500, 200)
    assert result.num_turns is None
    assert "TASK_COMPLETE" in result.final_text
    assert re.search(r"^Commit [0-9a-f]{7} feat: Add feature.txt$", result.final_text, re.M)
    # aider committed (auto-commits); its transcript is in the run directory, not the worktree
    assert commits_ahead(env, "aider-ok") == 1
    assert git(env.workspace("aider-ok"), "status", "--porcelain", "--untracked-files=all") == ""
    history = (Path(run.run_dir) / "aider.chat.history.md").read_text()
    assert PROMPT.split("\n", 1)[0] in history
    assert not list(env.workspace("aider-ok").glob(".aider*"))
    assert run.session_id is None  # no session recorded for an adapter without sessions
    assert decide(run, exit=env.wait_exit(run), result=result) == "complete"


def test_failed_run_through_the_node(env: Env) -> None:
    run = env.start("aider-fail", fake("failure"))
    result = finish(env, run, code=1)
    assert not result.ok
    assert result.subtype is None
    assert (result.input_tokens, result.output_tokens, result.cost_usd) == (1204, 56, 0.004)
    assert "No space left" in (Path(run.run_dir) / STDERR_LOG).read_text()
    info = env.wait_exit(run)
    assert decide(run, exit=info, result=result) == "iterate"  # no session to resume
    assert decide(run, exit=info, result=result, attempt=3, iteration=3) == "failed"


def test_run_without_a_cost_line_through_the_node(env: Env) -> None:
    run = env.start("aider-nocost", fake("nocost"))
    result = finish(env, run)
    assert result.ok
    assert (result.input_tokens, result.output_tokens, result.cost_usd) == (672, 23, None)
    assert commits_ahead(env, "aider-nocost") == 1


def test_api_error_with_exit_zero_through_the_node(env: Env) -> None:
    run = env.start("aider-key", fake("api-error"))
    result = finish(env, run)
    assert not result.ok
    assert result.subtype == "api_error"
    assert "authentication_error" in result.final_text
    assert (result.input_tokens, result.cost_usd) == (None, None)
    assert commits_ahead(env, "aider-key") == 0


def test_retried_api_error_through_the_node(env: Env) -> None:
    result = finish(env, env.start("aider-retry", fake("retried")))
    assert result.ok
    assert (result.input_tokens, result.output_tokens, result.cost_usd) == (12000, 345, 0.04)


def test_huge_output_through_the_node(env: Env) -> None:
    run = env.start("aider-huge", fake("huge"))
    result = finish(env, run)
    assert (Path(run.run_dir) / OUTPUT_LOG).stat().st_size > 200_000
    assert result.ok
    assert len(result.final_text.encode()) <= 64 * 1024
    assert result.final_text.endswith("END-OF-OUTPUT\n")
    assert (result.input_tokens, result.output_tokens, result.cost_usd) == (45000, 2500, 0.85)


def test_no_auto_commits_leaves_the_edit_uncommitted(env: Env) -> None:
    agent = fake("nocost", ["--no-auto-commits"], FAKE_AIDER_AUTO_COMMITS="0")
    result = finish(env, env.start("aider-nocommit", agent))
    assert result.ok
    assert commits_ahead(env, "aider-nocommit") == 0
    assert git(env.workspace("aider-nocommit"), "status", "--porcelain") == "?? feature.txt"


def test_the_fake_rejects_a_wrong_command_line(env: Env) -> None:
    # The fake is strict: an option aider does not know is a usage error (exit 2), and a run
    # that does not turn auto-commits off when it was expected to is refused.
    run = env.start("aider-bogus", fake(args=["--bogus"]))
    result = finish(env, run, code=2)
    assert not result.ok
    assert "unrecognized arguments: --bogus" in (Path(run.run_dir) / STDERR_LOG).read_text()
    run = env.start("aider-commits", fake(FAKE_AIDER_AUTO_COMMITS="0"))
    finish(env, run, code=2)
    assert "--auto-commits is True, expected False" in (Path(run.run_dir) / STDERR_LOG).read_text()


def test_the_fake_rejects_a_prompt_on_stdin(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "prompt.md").write_text("hi")
    argv, _ = aider.build(
        aider_ref([sys.executable, str(FAKE)]), Launch(str(run_dir / "prompt.md"))
    )
    proc = subprocess.run(
        argv,
        input=b"the prompt again",
        capture_output=True,
        cwd=tmp_path,
        env={
            **aider.env_defaults,
            "RECONCILER_RUN_DIR": str(run_dir),
            "RECONCILER_WORKSPACE": str(tmp_path),
        },
        check=False,
    )
    assert proc.returncode == 2
    assert b"stdin is not empty" in proc.stderr


def test_observe_reads_the_verdict_of_an_aider_run(env: Env) -> None:
    run = env.start("aider-seen", fake())
    env.wait_exit(run)
    observed = ObserveResult.model_validate(
        env.call(ObserveRequest(lane=env.lane, inspect=["aider-seen/1.1"]))
    )
    [seen] = [r for r in observed.runs if r.task == "aider-seen"]
    assert seen.result is not None
    assert seen.result.ok
    assert seen.result.cost_usd == 0.03
    assert seen.commits_ahead == 1
    assert seen.dirty == []


# ------------------------------------------------------------------------------------- docs


def test_the_documented_manifest_is_valid_and_builds_the_documented_command() -> None:
    doc_text = DOC.read_text()
    text = doc_text[doc_text.index("## Aider") :]  # the Aider section of docs/agents.md
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", text, re.S) if "kind: aider" in b)
    doc = YAML(typ="safe").load(block)
    assert (doc["apiVersion"], doc["kind"]) == ("reconciler/v1", "Agent")
    spec = AgentSpec.model_validate(doc["spec"])
    assert spec.kind == "aider"
    agent = aider_ref(spec.command, list(spec.args), **spec.env)
    argv, _ = aider.build(agent, Launch("/run/prompt.md"))
    assert argv[0] == "~/.local/bin/aider"
    assert argv[-3:] == ["--model", "sonnet", "--no-suggest-shell-commands"]
    assert spec.env == {"COLUMNS": "1000"}
    for flag in [*FIXED, "--auto-commits", "--chat-history-file", "--input-history-file"]:
        assert flag in argv
        assert f"{flag} " in text or f"{flag}`" in text or f"{flag}\n" in text
