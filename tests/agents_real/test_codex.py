"""Codex (the pinned npm release) through the whole reconciler, against the scripted OpenAI
Responses API, with a default Agent manifest: only ``kind`` and the binary.

What the lane's admin does is what docs/agents.md asks: export ``OPENAI_BASE_URL`` and
``OPENAI_API_KEY`` in the lane user's profile (the adapter turns the URL into a model provider,
which codex needs), and turn off the plugin marketplace in ``~/.codex/config.toml`` (codex
0.171 otherwise runs ``git ls-remote https://github.com/openai/plugins.git`` at every start).
"""

from __future__ import annotations

import json
from typing import Any

from tests.agents_real.egress import Egress
from tests.agents_real.real_support import Scenario
from tests.support import real_agents
from tests.support.model_api.server import Request

KEY = "sk-test-codex"


def _events(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _usage(output: str) -> tuple[int, int]:
    """The (input, output) tokens of the run's last ``turn.completed``: the thread's total."""
    [*_, done] = [e for e in _events(output) if e["type"] == "turn.completed"]
    return done["usage"]["input_tokens"], done["usage"]["output_tokens"]


def _metadata(request: Request) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(request.headers["x-codex-turn-metadata"])
    return data


def _input_texts(request: Request) -> list[str]:
    """The assistant messages and tool calls of a request's conversation, as text."""
    found = []
    for item in request.body["input"]:
        if item.get("type") == "message" and item.get("role") == "assistant":
            found += [part["text"] for part in item["content"]]
        elif item.get("type") == "custom_tool_call":
            found.append(item["input"])
    return found


def test_codex_reaches_pr_open_resumes_and_is_done_after_merge(
    scenario: Scenario, egress: Egress
) -> None:
    codex = real_agents.cli("codex")
    api, user = scenario.api, scenario.user
    scenario.profile({"OPENAI_BASE_URL": f"{api.url}/v1", "OPENAI_API_KEY": KEY, **egress.env})
    user.write(user.home / ".codex" / "config.toml", "[features]\nplugins = false\n", 0o600)
    scenario.manifests("codex", codex)  # no commits:, no args: the defaults

    scenario.ready()

    task, (first, second) = scenario.two_iterations_to_pr_open()
    context = scenario.run_logs()
    runs = scenario.runs_dirs()
    outputs = [scenario.read(run / "output.log") for run in runs]

    # The second iteration resumed the first one's thread: the same id on its command line,
    # in describe, and in every request codex sent, whose history the resumed turn carried on.
    [thread] = {e["thread_id"] for e in _events(outputs[0]) if e["type"] == "thread.started"}
    assert first["sessionId"] == second["sessionId"] == thread, context
    argv = json.loads(scenario.read(runs[1] / "run.json"))["argv"]
    assert argv[-3:] == ["resume", thread, "-"], argv
    requests = api.posted("/v1/responses")
    assert len(requests) == len(api.requests) == 4, [(r.method, r.path) for r in api.requests]
    assert {r.headers["thread-id"] for r in requests} == {thread}
    kinds = [_metadata(r)["history_initialization"] for r in requests]
    assert kinds == ["new", "new", "cold_resume", "cold_resume"], kinds
    resumed = _input_texts(requests[2])
    assert "Done: wrote first.txt." in resumed  # iteration 1's last words
    assert any("first.txt" in call and "fixed.txt" not in call for call in resumed)
    # The adapter's defaults reached codex: the provider made of OPENAI_BASE_URL (keyed by
    # OPENAI_API_KEY), analytics off.
    assert {r.headers["authorization"] for r in requests} == {f"Bearer {KEY}"}
    assert not any(_metadata(r)["analytics_enabled"] for r in requests)

    # Codex's sandbox kept .git read-only (the scripted `git commit` failed in both runs, see
    # the tool outputs); the reconciler committed what each run left, and pushed the branch.
    denied = [i for i in requests[3].body["input"] if i.get("type") == "custom_tool_call_output"]
    assert len(denied) == 2  # the last request holds the thread's two tool results
    assert all("Read-only file system" in json.dumps(item) for item in denied), denied
    remote = user.home / "remotes" / "app.git"
    log = user.run(["git", "-C", str(remote), "log", "--format=%s", "main..agent/feature"])
    assert log.stdout.split("\n")[:2] == ["feature: run 1.2", "feature: run 1.1"], log.stdout
    files = user.run(["git", "-C", str(remote), "ls-tree", "--name-only", "agent/feature"])
    assert {"first.txt", "fixed.txt"} <= set(files.stdout.split()), files.stdout

    # The tokens recorded are codex's: the first run's totals, then the resumed run's thread
    # total less the first run's (codex restores a thread's running total on resume).
    reported = [_usage(output) for output in outputs]
    assert first["tokens"] == sum(reported[0]), context
    assert second["tokens"] == sum(reported[1]) - sum(reported[0]), context
    assert task["tokens"] == sum(reported[1])
    per_request = api.input_tokens + api.output_tokens
    assert sum(reported[1]) == len(requests) * per_request  # codex counted every request once

    merge = scenario.cli("pr", "merge", "feature")
    assert merge.returncode == 0, merge.stdout + merge.stderr
    scenario.converge("done")
    assert egress.attempts == []  # nothing but the model API, on loopback
    merged = user.run(["git", "-C", str(remote), "show", "main:fixed.txt"])
    assert merged.stdout == "fixed.txt\n"
    assert len(api.requests) == 4  # merging and finishing ran no agent
