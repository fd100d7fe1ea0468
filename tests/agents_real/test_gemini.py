"""Gemini CLI (the pinned npm release) through the whole reconciler, against the scripted Gemini
API: the default Agent manifest, and a lane user whose profile exports only a key and an
endpoint, as an admin writes it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from reconciler.node.agents import ADAPTERS
from reconciler.protocol import ExitInfo
from tests.agents_real.egress import Egress
from tests.agents_real.real_support import Scenario
from tests.support import real_agents

STREAM = ":streamGenerateContent"


def reported_stats(scenario: Scenario, run: dict[str, Any]) -> dict[str, Any]:
    """The ``stats`` of the run's last ``result`` event: the figures Gemini CLI reported."""
    output = scenario.read(Path(run["runDir"]) / "output.log")
    results = [json.loads(x) for x in output.splitlines() if x.startswith('{"type":"result"')]
    stats: dict[str, Any] = results[-1]["stats"]
    return stats


def identity_only_in_gitconfig(scenario: Scenario) -> None:
    """The lane user's identity in ``~/.gitconfig`` only, as most users keep it: Gemini CLI's
    shell tool hides that file (``GIT_CONFIG_GLOBAL=/dev/null``), so only the identity the node
    exports reaches the agent's commits."""
    user = scenario.user
    clone = user.home / "src" / "app"
    user.sh(
        f"git -C {clone} config --unset user.name && git -C {clone} config --unset user.email"
        f" && git config --global user.name {user.name}"
        f" && git config --global user.email {user.name}@example.invalid"
    )


def test_gemini_reaches_pr_open_resumes_and_is_done_after_merge(
    scenario: Scenario, egress: Egress
) -> None:
    gemini = real_agents.cli("gemini")
    user = scenario.user
    identity_only_in_gitconfig(scenario)
    endpoint = {"GEMINI_API_KEY": "test-key", "GOOGLE_GEMINI_BASE_URL": scenario.api.url}
    scenario.profile({**endpoint, **egress.env})
    scenario.manifests("gemini", gemini)
    scenario.ready()

    task, runs = scenario.two_iterations_to_pr_open()
    # The second iteration resumed the first one's session (--resume, same worktree): its
    # requests carry the first iteration's turns (the prompt, the tool call that wrote
    # first.txt and its result) before the feedback.
    assert runs[0]["sessionId"] == runs[1]["sessionId"]
    argv = json.loads(scenario.read(Path(runs[1]["runDir"]) / "run.json"))["argv"]
    assert argv[1:] == [
        *("--output-format", "stream-json", "--resume", runs[0]["sessionId"]),
        "--approval-mode=yolo",
    ]
    contents = scenario.api.posted(STREAM)[-1].body["contents"]
    parts = [(c["role"], part) for c in contents for part in c["parts"]]
    said = [json.dumps(part) for _, part in parts]
    first = next(i for i, text in enumerate(said) if "@write first.txt" in text)
    call = next(i for i, (role, part) in enumerate(parts) if "functionCall" in part)
    feedback = next(i for i, text in enumerate(said) if "@write fixed.txt" in text)
    assert first < call < feedback
    assert parts[call][0] == "model" and "first.txt" in said[call]
    # Figures as Gemini CLI reported them: its result's stats (the main model's two responses
    # and the router's side call, 1200 in / 300 out each), recorded per run and summed.
    for run in runs:
        stats = reported_stats(scenario, run)
        assert run["tokens"] == stats["input_tokens"] + stats["output_tokens"] == 4500
        assert (run["turns"], run["toolCalls"]) == (2, 1)
    assert task["tokens"] == 9000
    # Both commits are the agent's, made by its shell tool under the lane user's identity.
    remote = user.home / "remotes" / "app.git"
    log = ["git", "-C", str(remote), "log", "--format=%an <%ae>|%s", "main..agent/feature"]
    commits = user.run(log).stdout.splitlines()
    assert commits == [
        f"{user.name} <{user.name}@example.invalid>|Add first.txt, fixed.txt",
        f"{user.name} <{user.name}@example.invalid>|Add first.txt",
    ]
    # The endpoint needed the API-key auth type, the only setting the adapter wrote, beside
    # usage statistics off: nothing but the scripted API was asked anything.
    settings = json.loads(scenario.read(user.home / ".gemini" / "settings.json"))
    assert settings == {
        "privacy": {"usageStatisticsEnabled": False},
        "security": {"auth": {"selectedType": "gemini-api-key"}},
    }

    merged = scenario.cli("pr", "merge", "feature")
    assert merged.returncode == 0, merged.stdout + merged.stderr
    scenario.converge("done")
    assert egress.attempts == []  # nothing but the model API, on loopback


def test_a_rejected_key_fails_each_run_at_once_as_an_auth_error(scenario: Scenario) -> None:
    """Gemini CLI 0.61 does not retry a 401: each run ends at its first request, exit 145 (the
    status, cut to 8 bits), and a run the model never answered is not resumed."""
    scenario.api.fail_status = 401
    gemini = real_agents.cli("gemini")
    # Gemini CLI writes each failed request, the whole conversation, to $TMPDIR (mode 0644):
    # each run's own TMPDIR is private and removed at its end, whatever the login one is.
    tmp = scenario.user.home / "tmp"
    scenario.user.sh(f"mkdir -m 755 {tmp}")
    exports = {"GEMINI_API_KEY": "bad-key", "GOOGLE_GEMINI_BASE_URL": scenario.api.url}
    scenario.profile({**exports, "TMPDIR": str(tmp)})
    scenario.manifests("gemini", gemini)
    task = scenario.converge("backoff")
    # `status` plans from what it observes now; one more pass records the last run's end.
    assert scenario.control.apply().returncode in (0, 1)
    runs = scenario.describe()["runs"]
    assert [(r["iteration"], r["exitCode"], r["tokens"]) for r in runs] == [
        (1, 145, 0),
        (2, 145, 0),
        (3, 145, 0),
    ]
    assert len({r["sessionId"] for r in runs}) == 3  # no turn, nothing to resume
    # One request each for the router and the turn: no retry.
    assert len(scenario.api.posted("/v1beta/models/")) == 2 * len(runs)
    assert "agent exited with status 145 (auth_error): [API Error:" in task["reason"]
    for run in runs:
        output = str(Path(run["runDir"]) / "output.log")  # the suite runs as root
        result = ADAPTERS["gemini"].parse(output, ExitInfo(exit_code=145, ended_at=1.0))
        assert (result.ok, result.subtype, result.num_turns) == (False, "auth_error", None)
        assert "invalid key" in result.final_text
    assert scenario.user.run(["ls", "-A", str(tmp)]).stdout == ""  # nothing left readable
    leaked = ["find", "/tmp", "/var/tmp", "-maxdepth", "1", "-user", scenario.user.name]
    assert scenario.user.run([*leaked, "-name", "gemini-client-error-*"]).stdout == ""
    for run in runs:
        assert not (Path(run["runDir"]) / "tmp").exists()
