"""The planner's judgement of a run whose processes are gone with no exit record: finished by
the reconciler (``finish-run``) when what it left shows its agent finished, a crash otherwise."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from reconciler.manifests.models import Desired
from reconciler.plan import (
    ActionKind,
    FailedAction,
    FinishRun,
    Observed,
    Phase,
    RepoView,
    RunView,
    TaskRecord,
    Why,
    plan,
)
from reconciler.plan.run_steps import FINISH_TRIES
from reconciler.protocol import AgentEnd, AgentResult, Leftovers
from tests.plan.test_planner import (
    NOW,
    desired,
    exited,
    lane,
    observed,
    ok_result,
    run,
    task_spec,
)

D = desired(("t", task_spec()))
WORKTREE = RepoView(prs={}, worktrees={"t": "/w/app/t"})
RECORDED_0 = AgentEnd(exit_code=0, ended_at=NOW - 30)
GAVE_UP = AgentResult(ok=False, subtype="error_max_turns", final_text="ran out of turns")


def dead(**kw: object) -> RunView:
    """Run 1.1 of ``t``: no process, no exit record; ``kw`` as in ``run``."""
    return run(D, "t", 1, 1, alive=False, **kw)


def seen(r: RunView, repo: RepoView = WORKTREE, **kw: object) -> Observed:
    return observed(runs={"t": [r]}, repo=repo, **kw)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Case:
    what: str
    observed: Observed
    kinds: list[str]
    phase: Phase
    why: Why
    says: str  # in the action's reason (or the status's, when no action)
    exit_code: int | None = None  # the finish-run's, when one is planned
    desired: Desired = D


CASES = [
    Case(
        "nothing left: a crash, as before",
        seen(dead()),
        ["mark-crashed"],
        Phase.BACKOFF,
        Why.BACKING_OFF,
        "its process is gone and it left no exit record",
    ),
    Case(
        "left no end and no final result (killed mid-work): a crash",
        seen(dead(left=Leftovers())),
        ["mark-crashed"],
        Phase.BACKOFF,
        Why.BACKING_OFF,
        "left no exit record",
    ),
    Case(
        "the supervisor recorded the agent's exit 0: finished by the reconciler",
        seen(dead(left=Leftovers(agent_end=RECORDED_0))),
        ["finish-run"],
        Phase.RUNNING,
        Why.FINISHING_RUN,
        "its agent exited with status 0, but its supervisor died before recording the end",
        exit_code=0,
    ),
    Case(
        "a recorded failing exit is finished too: the evaluation judges it, not the crash path",
        seen(dead(left=Leftovers(agent_end=AgentEnd(exit_code=3, ended_at=NOW - 30)))),
        ["finish-run"],
        Phase.RUNNING,
        Why.FINISHING_RUN,
        "exited with status 3",
        exit_code=3,
    ),
    Case(
        "no end recorded, a successful final result in the output: presumed exit 0",
        seen(dead(left=Leftovers(final_result=ok_result()))),
        ["finish-run"],
        Phase.RUNNING,
        Why.FINISHING_RUN,
        "its output holds the agent's final result",
        exit_code=0,
    ),
    Case(
        "a final result that says the agent failed: presumed exit 1",
        seen(dead(left=Leftovers(final_result=GAVE_UP))),
        ["finish-run"],
        Phase.RUNNING,
        Why.FINISHING_RUN,
        "final result",
        exit_code=1,
    ),
    Case(
        "an end presumed by an earlier finish that was interrupted: finished again",
        seen(
            dead(
                left=Leftovers(
                    agent_end=AgentEnd(exit_code=0, ended_at=NOW - 30, presumed=True), finishes=1
                )
            )
        ),
        ["finish-run"],
        Phase.RUNNING,
        Why.FINISHING_RUN,
        "its output holds the agent's final result",
        exit_code=0,
    ),
    Case(
        f"{FINISH_TRIES} finishes begun and none ended it: a crash after all",
        seen(dead(left=Leftovers(agent_end=RECORDED_0, finishes=FINISH_TRIES))),
        ["mark-crashed"],
        Phase.BACKOFF,
        Why.BACKING_OFF,
        f"its agent exited with status 0, but finishing the run failed {FINISH_TRIES} times",
    ),
    Case(
        "its worktree is gone: nothing to commit or check, a crash",
        seen(dead(left=Leftovers(agent_end=RECORDED_0)), repo=RepoView(prs={})),
        ["mark-crashed"],
        Phase.BACKOFF,
        Why.BACKING_OFF,
        "but its worktree is gone",
    ),
    Case(
        "a run marked crashed already stays a crash (its backoff, then a retry)",
        seen(dead(left=Leftovers(agent_end=RECORDED_0), mark="crashed", marked_at=NOW - 1)),
        [],
        Phase.BACKOFF,
        Why.BACKING_OFF,
        "next attempt in",
    ),
    Case(
        "the finish needs the run's slot back: it waits for one like an iteration",
        observed(
            runs={
                "t": [dead(left=Leftovers(agent_end=RECORDED_0))],
                "other": [run(desired(("other", task_spec())), "other", alive=True)],
            },
            repo=WORKTREE,
        ),
        [],
        Phase.QUEUED,
        Why.WAITING_FOR_SLOT,
        "waiting for a slot in lane web (1/1 in use)",
        desired=desired(
            ("t", task_spec()), ("other", task_spec()), lanes={"web": lane("web", slots=1)}
        ),
    ),
    Case(
        "a finish that failed for a lasting reason is held back, and takes no slot",
        seen(
            dead(left=Leftovers(agent_end=RECORDED_0)),
            records={
                "t": TaskRecord(
                    "t",
                    "web",
                    "app",
                    NOW - 500,
                    failed=FailedAction("finish-run", "the supervisor failed to start", NOW, 1),
                )
            },
        ),
        [],
        Phase.RUNNING,
        Why.ACTION_HELD,
        "finish-run failed once: the supervisor failed to start",
    ),
    Case(
        "the finisher at work, long past the agent's deadlines: left to its own timeouts",
        seen(
            run(
                D,
                "t",
                alive=True,
                finishing_since=NOW - 5,
                started_at=NOW - 7200,
                last_output_at=NOW - 3600,
                last_progress_at=NOW - 3600,
            )
        ),
        [],
        Phase.RUNNING,
        Why.FINISHING_RUN,
        "finishing run 1.1 after its supervisor died",
    ),
    Case(
        "once finished, the recovered exit record is evaluated as any: success opens the PR",
        seen(
            run(
                D,
                "t",
                exit=exited(0).model_copy(update={"recovered": "recorded"}),
                result=ok_result(),
                commits_ahead=1,
            )
        ),
        ["open-pr"],
        Phase.RUNNING,
        Why.OPENING_PR,
        "met the success criteria",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.what for c in CASES])
def test_a_run_gone_without_an_exit_record_is_judged_by_what_it_left(case: Case) -> None:
    p = plan(case.desired, case.observed, NOW)
    assert [a.kind.value for a in p.actions if a.task == "t"] == case.kinds
    status = next(s for s in p.tasks if s.name == "t")
    assert (status.phase, status.why) == (case.phase, case.why)
    said = p.actions[0].reason if case.kinds else status.reason
    assert case.says in said
    if case.exit_code is not None:
        [finish] = p.actions
        assert finish.kind is ActionKind.FINISH_RUN
        assert finish.want(FinishRun) == FinishRun(1, 1, case.exit_code)
        assert not p.outcomes  # judged once finished, not now: no crash is recorded
        assert status.reason == finish.reason
    if "mark-crashed" in case.kinds:
        assert [o.outcome for o in p.outcomes] == ["crashed"]
