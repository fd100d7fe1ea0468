"""Claude Code (the pinned npm release) through the whole reconciler, against the scripted
Anthropic Messages API: the default Agent manifest, no flags chosen by the user."""

from __future__ import annotations

import json

from tests.agents_real.egress import Egress
from tests.agents_real.real_support import Scenario
from tests.support import real_agents


def test_claude_reaches_pr_open_resumes_and_is_done_after_merge(
    scenario: Scenario, egress: Egress
) -> None:
    claude = real_agents.cli("claude")
    endpoint = {"ANTHROPIC_BASE_URL": scenario.api.url, "ANTHROPIC_API_KEY": "sk-ant-test"}
    scenario.profile({**endpoint, **egress.env})
    scenario.manifests("claude", claude)
    scenario.ready()

    task, runs = scenario.two_iterations_to_pr_open()
    # The second iteration continued the first one's session: its requests carry the first
    # iteration's turns (the prompt and the tool call that wrote first.txt) before the feedback.
    assert runs[0]["sessionId"] == runs[1]["sessionId"]
    last = scenario.api.posted("/v1/messages")[-1].body["messages"]
    said = [str(m["content"]) for m in last]
    assert any("@write first.txt" in text for text in said[:2])
    assert "@write fixed.txt" in " ".join(said[2:])
    # Figures as Claude reported them: two runs, each two responses of 1200 in / 300 out,
    # priced by Claude Code itself (the model the CLI asked for)
    assert [r["tokens"] for r in runs] == [3000, 3000]
    assert task["tokens"] == 6000
    assert abs(task["costUsd"] - sum(r["costUsd"] for r in runs)) < 1e-6
    assert scenario.branch_authors() == [scenario.user.name] * 2

    scenario.merge_and_finish()
    assert egress.attempts == []  # nothing but the model API, on loopback


def test_a_claude_run_stopped_by_its_budget_keeps_its_tokens_and_ends_the_task(
    scenario: Scenario,
) -> None:
    # Each response costs $0.0135 (1200 in, 300 out at the model's price): the first run spends
    # $0.027, leaving $0.013 of $0.04, so the second stops itself after one response.
    claude = real_agents.cli("claude")
    scenario.profile({"ANTHROPIC_BASE_URL": scenario.api.url, "ANTHROPIC_API_KEY": "sk-ant-test"})
    scenario.manifests("claude", claude, task={"budget": {"maxCostUsd": 0.04}})
    scenario.start_and_finish(2)  # the CLI stops itself: no pass sees the run over budget
    task = scenario.converge("failed", reason="budget exhausted")
    runs = scenario.describe()["runs"]
    assert len(runs) == 2, runs
    stopped = runs[1]
    assert stopped["tokens"] == 1500, stopped  # from modelUsage: its usage says 0
    assert abs(stopped["costUsd"] - 0.0135) < 1e-6
    argv = json.loads(scenario.read(scenario.runs_dirs()[1] / "run.json"))["argv"]
    assert argv[argv.index("--max-budget-usd") + 1] == "0.013"
    assert "budget exhausted ($0.04 of $0.04)" in task["reason"]


def test_a_rejected_key_is_retrying_not_progress_and_the_run_stalls(scenario: Scenario) -> None:
    scenario.api.fail_status = 401
    claude = real_agents.cli("claude")
    scenario.profile({"ANTHROPIC_BASE_URL": scenario.api.url, "ANTHROPIC_API_KEY": "sk-ant-bad"})
    scenario.manifests("claude", claude, stallTimeout="4s")
    running = scenario.converge("running", reason="retrying: 401 authentication_failed")
    assert "last: retrying: 401 authentication_failed (attempt" in running["reason"]
    stalled = scenario.converge("backoff", reason="no agent event")
    assert "retrying: 401 authentication_failed" in stalled["reason"]
    scenario.control.apply()  # status plans ahead of the last apply: now it is recorded
    events = [e["message"] for e in scenario.describe()["events"]]
    assert any("last: retrying: 401 authentication_failed" in e for e in events), events
