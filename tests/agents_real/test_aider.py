"""Aider (the pinned PyPI release) through the whole reconciler, against the scripted OpenAI
Chat Completions API, with the defaults: an Agent of kind ``aider`` with no ``args``, and the
endpoint, key and model exported in the lane user's ``~/.profile`` as an admin would.

Every other connection aider tries goes to a local proxy that refuses it and records it, so
nothing leaves the machine and the test sees what would have."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from tests.agents_real.egress import Egress
from tests.agents_real.real_support import CHECK, Scenario
from tests.support import real_agents
from tests.support.model_api import ModelServer
from tests.support.model_api.openai_chat import commit_message
from tests.support.model_api.server import Request

# A model aider has no metadata for, as behind any private endpoint: aider edits in its
# "whole" format, and knows no price (tokens, no cost).
MODEL = "openai/scripted"
# aider downloads litellm's model price list itself at every start while it has no copy of
# it younger than a day (its own, not litellm's: the adapter turns that one off); no switch
# turns it off. Refused here, it is tried again by every run.
PRICE_LIST = "CONNECT raw.githubusercontent.com:443"


def configure(scenario: Scenario, egress: Egress) -> None:
    """What an admin writes: the lane user's endpoint, key and model; an Agent ``kind: aider``."""
    scenario.profile(
        {
            "OPENAI_API_BASE": f"{scenario.api.url}/v1",
            "OPENAI_API_KEY": "sk-test",
            "AIDER_MODEL": MODEL,
            **egress.env,
        }
    )
    scenario.manifests("aider", real_agents.cli("aider"))


def model_calls(api: ModelServer) -> tuple[list[Request], list[Request]]:
    """The chat completions aider asked for: its edits, and its auto-commits' messages."""
    posted = api.posted("/chat/completions")
    edits = [r for r in posted if commit_message(r.body) is None]
    return edits, [r for r in posted if commit_message(r.body) is not None]


def user_text(request: Request) -> str:
    return "\n".join(str(m["content"]) for m in request.body["messages"] if m["role"] == "user")


def recorded_tokens(scenario: Scenario) -> list[tuple[int, int, int | None, int | None]]:
    """(attempt, iteration, input, output) of each run, as the state database holds them."""
    db = scenario.control.state / "state.db"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute(
            "SELECT attempt, iteration, input_tokens, output_tokens FROM runs"
            " WHERE task = 'feature' ORDER BY attempt, iteration"
        ).fetchall()
    return [tuple(row) for row in rows]


def first_run(scenario: Scenario, timeout: float = 120) -> dict[str, Any]:
    """Apply until the task's first run has an outcome; that run as ``describe`` shows it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc = scenario.control.apply()
        assert proc.returncode in (0, 1), proc.stderr
        runs = scenario.describe()["runs"]
        if runs and runs[0]["outcome"] not in (None, "running"):
            run: dict[str, Any] = runs[0]
            return run
        time.sleep(0.3)
    raise AssertionError(f"run 1.1 did not end\n{scenario.describe_text()}\n{scenario.run_logs()}")


def test_aider_reaches_pr_open_after_a_failing_check_and_is_done_after_merge(
    scenario: Scenario, egress: Egress
) -> None:
    configure(scenario, egress)
    scenario.ready()

    task, runs = scenario.two_iterations_to_pr_open()
    assert runs[0]["failures"] == [f"check `{' '.join(CHECK)}` failed with status 1"]
    assert [r["exitCode"] for r in runs] == [0, 0]

    # Aider edited in its whole format and committed each edit itself, with the message it asked
    # the model for; the reconciler pushed the branch.
    remote = scenario.user.home / "remotes" / "app.git"
    log = scenario.user.run(
        [
            "git",
            "-C",
            str(remote),
            "log",
            "--format=%s|%(trailers:key=Co-authored-by,valueonly)",
            "main..agent/feature",
        ]
    ).stdout.split("\n")
    assert [line for line in log if line.strip()] == [
        f"feat: Add fixed.txt|aider ({MODEL}) <aider@aider.chat>",
        f"feat: Add first.txt|aider ({MODEL}) <aider@aider.chat>",
    ]
    edits, commits = model_calls(scenario.api)
    assert (len(edits), len(commits)) == (2, 2)
    # No session: iteration 2 is a fresh chat, whose message carries the check's feedback.
    feedback = "fixed.txt is missing: @write fixed.txt"
    assert feedback not in user_text(edits[0])
    assert feedback in user_text(edits[1])
    assert feedback in scenario.read(Path(runs[1]["runDir"]) / "prompt.md")

    # Tokens: what the server reported for each edit call ("Tokens: 1.2k sent, 300 received.");
    # aider prints no report for its commit-message calls, so they are not counted. No cost: aider
    # knows no price for the model, and neither does the reconciler.
    api = scenario.api
    assert recorded_tokens(scenario) == [
        (1, 1, api.input_tokens, api.output_tokens),
        (1, 2, api.input_tokens, api.output_tokens),
    ]
    assert task["tokens"] == len(edits) * (api.input_tokens + api.output_tokens)
    assert [r["costUsd"] for r in runs] == [None, None]

    # Nothing else tried to leave but aider's price-list download, once per run (litellm's own,
    # at every start, is off).
    assert egress.attempts == [PRICE_LIST] * len(runs)

    merge = scenario.cli("pr", "merge", "feature")
    assert merge.returncode == 0, merge.stdout + merge.stderr
    scenario.converge("done")
    files = scenario.user.run(["git", "-C", str(remote), "ls-tree", "--name-only", "main"]).stdout
    assert files.split() == ["README.md", "first.txt", "fixed.txt"]


def test_aider_with_a_rejected_key_fails_its_run_though_it_exits_0(
    scenario: Scenario, egress: Egress
) -> None:
    scenario.api.fail_status = 401
    configure(scenario, egress)
    doctor = scenario.cli("doctor")  # it sees a key; whether the provider takes it, only a run can
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr

    run = first_run(scenario)
    assert run["exitCode"] == 0
    assert run["outcome"] == "failed"
    assert run["failures"][0] == (
        "agent reported api_error: litellm.AuthenticationError: AuthenticationError: "
        "OpenAIException - invalid key"
    )
    output = scenario.read(Path(run["runDir"]) / "output.log")
    # aider does not retry a rejected key: one error, no "Retrying in …", then exit 0
    assert output.count("litellm.AuthenticationError: AuthenticationError: OpenAIException") == 1
    assert "Retrying" not in output
    assert "The API provider is not able to authenticate you. Check your API key." in output
    assert recorded_tokens(scenario)[0][2:] == (None, None)
    assert scenario.task()["phase"] != "pr-open"
    assert set(egress.attempts) <= {PRICE_LIST}
