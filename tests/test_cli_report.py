"""The report models ``describe`` prints: the JSON is the model's dump, in the documented shape
(docs/cli.md, schemas/describe.json); the text renders the same value."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from reconciler.cli.render import Painter, render_describe
from reconciler.manifests.models import Source, TaskSpec, make_task
from reconciler.plan import Phase, TaskStatus, Why
from reconciler.protocol import PullRequest
from reconciler.record import Run
from reconciler.report import DescribeReport, TaskReport, report_schemas, task_json
from reconciler.state import EventRow, TaskRow

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"
SPEC = TaskSpec.model_validate({"lane": "web", "repo": "app", "agent": "claude", "prompt": "go"})
TASK = make_task("fix-add", SPEC, source=Source("manifests/tasks/app.yaml", 16, 1))
STATUS = TaskStatus(
    name="fix-add",
    phase=Phase.PR_OPEN,
    lane="web",
    repo="app",
    branch="agent/fix-add",
    attempt=1,
    iteration=2,
    pr=PullRequest(
        number=2,
        url="file:///r.git#pull/2",
        state="open",
        head="agent/fix-add",
        base="main",
        title="fix-add",
    ),
    cost_usd=0.03,
    tokens=920,
    why=Why.AWAITING_REVIEW,
)


def run(iteration: int, **kw: Any) -> Run:
    at = 1000.0 + 3 * (iteration - 1)
    return Run(
        task="fix-add",
        attempt=1,
        iteration=iteration,
        generation=TASK.generation,
        lane="web",
        repo="app",
        run_dir=f"/w/.runs/fix-add/1.{iteration}",
        started_at=at,
        **kw,
    )


FAILED = run(
    1,
    ended_at=1002.0,
    exit_code=0,
    outcome="failed",
    failures="check `make test` failed with status 1",
    session_id="s-1",
    cost_usd=0.0114,
    input_tokens=300,
    output_tokens=56,
    turns=3,
    tool_calls=2,
)
STOPPED = run(2, mark="stopped", marked_at=1010.0)
EVENT = EventRow(
    id=1, at=1000.0, task="fix-add", kind="start", message="start run 1.1", revision="r"
)


def report() -> DescribeReport:
    return DescribeReport.of(
        "fix-add",
        status=STATUS,
        task=TASK,
        row=TaskRow(name="fix-add", lane="web", repo="app", first_seen=999.5),
        runs=[FAILED, STOPPED],
        events=[EVENT],
    )


def test_describe_json_is_the_documented_shape() -> None:
    data = report().to_json()
    assert list(data) == [
        "name", "status", "spec", "generation", "source", "firstSeen", "runs", "events",
    ]  # fmt: skip
    assert data["status"] == TaskReport.of(STATUS, 999.5).to_json()  # status --json's entry
    assert list(data["status"]) == [
        "name", "phase", "lane", "repo", "branch", "attempt", "iteration", "reason",
        "reasonCode", "conditions", "pr", "nextAttemptAt", "costUsd", "tokens", "firstSeen",
    ]  # fmt: skip
    assert data["status"]["reasonCode"] == "AwaitingReview"
    assert data["status"]["conditions"] == [c.to_json() for c in STATUS.conditions]
    assert data["status"]["pr"] == {
        "number": 2,
        "url": "file:///r.git#pull/2",
        "state": "open",
        "mergeable": None,
        "behind": False,
        "conflicts": [],
    }
    assert data["status"]["phase"] == "pr-open"
    assert data["spec"] == SPEC.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert (data["source"], data["firstSeen"]) == ("manifests/tasks/app.yaml:16:1", 999.5)
    assert data["runs"][0] == {
        "attempt": 1,
        "iteration": 1,
        "generation": TASK.generation,
        "startedAt": 1000.0,
        "endedAt": 1002.0,
        "exitCode": 0,
        "signal": None,
        "outcome": "failed",
        "failures": ["check `make test` failed with status 1"],
        "sessionId": "s-1",
        "costUsd": 0.0114,
        "tokens": 356,
        "turns": 3,
        "toolCalls": 2,
        "runDir": "/w/.runs/fix-add/1.1",
    }
    assert data["runs"][1]["outcome"] is None  # a stop is the reconciler's mark, not an outcome
    assert data["events"] == [
        {
            "id": 1,
            "at": 1000.0,
            "task": "fix-add",
            "kind": "start",
            "message": "start run 1.1",
            "revision": "r",
        }
    ]
    # what it prints reads back into the model unchanged
    assert DescribeReport.model_validate(json.loads(json.dumps(data))).to_json() == data


def test_a_task_no_longer_in_the_manifests_has_no_status_spec_or_source() -> None:
    gone = DescribeReport.of("old", status=None, task=None, row=None, runs=[], events=[])
    assert gone.to_json() == {
        "name": "old",
        "status": None,
        "spec": None,
        "generation": None,
        "source": None,
        "firstSeen": None,
        "runs": [],
        "events": [],
    }
    assert render_describe(gone, Painter(enabled=False)) == "Task old\n"


def test_describe_text_renders_the_same_report() -> None:
    text = render_describe(report(), Painter(enabled=False))
    assert text == (
        "Task fix-add\n"
        "  phase:      pr-open\n"
        "  lane/repo:  web/app, branch agent/fix-add\n"
        "  PR:         #2 (open) file:///r.git#pull/2\n"
        "  spend:      $0.03, 920 tokens\n"
        f"  source:     manifests/tasks/app.yaml:16:1 (generation {TASK.generation})\n"
        "  agent:      claude; 3 iterations x 3 attempts; priority 0\n"
        "\n"
        "RUN  STARTED   ENDED     EXIT  OUTCOME  TURNS  TOOLS  TOKENS  COST   WHY\n"
        "1.1  00:16:40  00:16:42  0     failed   3      2      356     $0.01  "
        "check `make test` failed with status 1\n"
        "1.2  00:16:43  -         -     stopped  -      -      -       -\n"
        "\n"
        "Events:\n"
        "  00:16:40 start        start run 1.1\n"
    )


def test_describe_says_when_the_pr_conflicts_with_or_is_behind_its_base() -> None:
    def pr_line(**merging: Any) -> str:
        assert STATUS.pr is not None
        status = replace(STATUS, pr=STATUS.pr.model_copy(update=merging))
        text = render_describe(
            DescribeReport.of("fix-add", status=status, task=None, row=None, runs=[], events=[]),
            Painter(enabled=False),
        )
        return next(line for line in text.splitlines() if "PR:" in line).split("PR:")[1].strip()

    assert pr_line() == "#2 (open) file:///r.git#pull/2"
    conflict = {"mergeable": False, "behind": True, "conflicts": ["a.txt", "b.txt"]}
    assert pr_line(**conflict) == (
        "#2 (open, conflicts with its base in a.txt, b.txt) file:///r.git#pull/2"
    )
    assert (
        pr_line(mergeable=False, behind=True)
        == "#2 (open, conflicts with its base) file:///r.git#pull/2"
    )
    assert pr_line(mergeable=True, behind=True) == "#2 (open, behind its base) file:///r.git#pull/2"
    assert pr_line(mergeable=True) == "#2 (open) file:///r.git#pull/2"


def test_the_committed_describe_schema_matches_the_model() -> None:
    for name, text in report_schemas().items():
        path = SCHEMAS / name
        committed = path.read_text() if path.exists() else None
        assert committed == text, f"schemas/{name} is out of date: run `make schemas`"
    schema = json.loads(report_schemas()["describe.json"])
    assert schema["$id"].endswith(":describe") and schema["additionalProperties"] is False
    assert schema["required"] == [
        "name", "status", "spec", "generation", "source", "firstSeen", "runs", "events",
    ]  # fmt: skip
    run = schema["$defs"]["RunReport"]
    assert "mark" not in run["properties"] and set(run["required"]) == set(run["properties"])


def test_status_says_when_what_it_announces_happens() -> None:
    from reconciler.plan import Phase, TaskStatus, Why
    from reconciler.report import when_next

    opening = TaskStatus(
        "a", Phase.RUNNING, "web", "app", "agent/a", reason="opening PR", why=Why.OPENING_PR
    )
    waiting = TaskStatus(
        "b",
        Phase.BACKOFF,
        "web",
        "app",
        "agent/b",
        reason="run 1.1 crashed; next attempt in 25s",
        why=Why.BACKING_OFF,
    )
    review = TaskStatus("c", Phase.PR_OPEN, "web", "app", "agent/c", why=Why.AWAITING_REVIEW)
    # under `reconciler run` the pass comes when it is due: the reason stands as it is
    assert [when_next(s, driven=True) for s in (opening, waiting, review)] == [
        opening,
        waiting,
        review,
    ]
    # otherwise nothing happens until someone (cron, a hook) applies
    assert when_next(opening, driven=False).reason == (
        "opening PR (at the next apply: no `run` is running)"
    )
    assert when_next(waiting, driven=False).reason.endswith(
        "next attempt in 25s, at the first apply after that"
    )
    assert when_next(review, driven=False) == review


def test_the_fast_task_json_is_the_models_json() -> None:
    """``task_json`` builds ``status --json``'s entries without the model, for speed: for every
    reason code, with and without a PR, it says exactly what the model says."""
    conflicted = PullRequest(
        number=7,
        url="https://github.com/o/r/pull/7",
        state="open",
        head="agent/fix-add",
        base="main",
        title="t",
        mergeable=False,
        behind=True,
        conflicts=["a.txt", "b.txt"],
    )
    for why in Why:
        for pr in (None, STATUS.pr, conflicted):
            for first_seen in (None, 12.5):
                status = replace(
                    STATUS, why=why, pr=pr, reason=f"because {why.value}", next_attempt_at=3.0
                )
                assert task_json(status, first_seen) == TaskReport.of(status, first_seen).to_json()
