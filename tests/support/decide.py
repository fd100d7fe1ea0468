"""What the reconciler decides about an ended run: the pure planner's next step for its task.

The agent tests run a fake agent through the node and observe the ended run (``RunObs`` with
``exit`` and ``result``). ``decide`` puts that run in front of ``reconciler.plan.plan`` as the
latest run of a one-task world and names what the planner does next:

- ``complete``: the run met the success criteria (no forge: the task is done);
- ``iterate``: the next iteration of the same attempt, fresh; ``iterate resume=ID`` when it
  resumes the agent's session ``ID``;
- ``retry``: a new attempt (after the backoff, which ``now`` is past). A run killed by a
  signal (or gone without an exit record) is first marked crashed (``mark-crashed``) and then
  retried in the same plan: reported as ``retry``, since that is what happens to the task;
- ``failed``: no further run, and the task's phase is failed (the last attempt is used up).

The world: one lane without forge (observed reachable, pre-flight ok, the repository present),
one Agent of the run's kind, one Task whose success needs the marker ``TASK_COMPLETE`` (and, as
by default, commits: the run is seen ``commits_ahead`` ahead, 1 unless told), with
``maxIterations``/``maxAttempts`` as given. ``attempt``/``iteration`` place the run elsewhere
than where it ran (e.g. at the last iteration of the last attempt); each earlier attempt is
present as one failed run, so the planner counts it.
"""

from __future__ import annotations

import json
from pathlib import Path

from reconciler.manifests.models import AgentSpec, Desired, LaneSpec, TaskSpec, make_task
from reconciler.observe.merge import updated, view_of
from reconciler.plan import ActionKind, LaneView, Observed, Phase, RepoView, RunView, plan
from reconciler.protocol import AgentResult, ExitInfo, PreflightCheck, RunObs

MARKER = "TASK_COMPLETE"
LANE = "lane"
AGENT = "agent"
LATER = 86_400.0  # how long after the run's end the planner looks: past any backoff


def decide(
    run: RunObs,
    *,
    exit: ExitInfo | None = None,
    result: AgentResult | None = None,
    kind: str | None = None,
    attempt: int | None = None,
    iteration: int | None = None,
    max_iterations: int = 3,
    max_attempts: int = 3,
    commits_ahead: int = 1,
) -> str:
    """The planner's decision for the task of the ended ``run`` (see the module docstring).

    ``exit``/``result`` stand in for the run's own when it was observed without them; ``kind``
    is the Agent's kind, by default the one recorded in the run directory's ``run.json``.
    """
    exit = exit or run.exit
    result = result or run.result
    assert exit is not None, f"run {run.task}/{run.attempt}.{run.iteration} has not ended"
    attempt = run.attempt if attempt is None else attempt
    iteration = run.iteration if iteration is None else iteration
    desired = _desired(run, kind or _kind_of(run), max_iterations, max_attempts)
    task = desired.tasks[run.task]
    earlier = [
        RunView(
            task=run.task,
            lane=LANE,
            repo=run.repo,
            attempt=n,
            iteration=max_iterations,
            generation=task.generation,
            started_at=run.started_at - 3600.0 * (attempt - n),
            exit=ExitInfo(exit_code=1, ended_at=run.started_at - 3600.0 * (attempt - n) + 60),
            outcome="failed",
            failures=("agent exited with status 1",),
        )
        for n in range(1, attempt)
    ]
    report = run.model_copy(
        update={
            "attempt": attempt,
            "iteration": iteration,
            "generation": task.generation,
            "alive": False,
            "exit": exit,
            "result": result,
            "commits_ahead": commits_ahead,
        }
    )
    latest = view_of(updated(None, report, LANE, exit.ended_at), report, LANE)  # as observe does
    observed = Observed(
        revision="rev",
        serial=1,
        lanes={
            LANE: LaneView(
                LANE,
                reachable=True,
                repos={run.repo: RepoView(prs=None)},
                preflight=(PreflightCheck(name="checkout", ok=True, subject=run.repo),),
            )
        },
        runs={run.task: (*earlier, latest)},
    )
    decided = plan(desired, observed, exit.ended_at + LATER)
    kinds = [a.kind for a in decided.actions]
    [status] = [t for t in decided.tasks if t.name == run.task]
    nexts = [a for a in decided.actions if a.kind is not ActionKind.MARK_CRASHED]
    if not nexts:
        assert status.phase is Phase.FAILED, (kinds, status)
        return "failed"
    [action] = nexts
    assert set(kinds) <= {action.kind, ActionKind.MARK_CRASHED}, kinds
    if action.kind is ActionKind.COMPLETE:
        return "complete"
    if action.kind is ActionKind.ITERATE:
        assert (action.attempt, action.iteration) == (attempt, iteration + 1), action
        return f"iterate resume={action.resume_session}" if action.resume_session else "iterate"
    if action.kind is ActionKind.RETRY:
        assert (action.attempt, action.iteration) == (attempt + 1, 1), action
        return "retry"
    raise AssertionError(f"unexpected plan for {run.task}: {decided.actions}")


def _kind_of(run: RunObs) -> str:
    spec = json.loads((Path(run.run_dir) / "run.json").read_text())
    return str(spec["agent"]["kind"])


def _desired(run: RunObs, kind: str, max_iterations: int, max_attempts: int) -> Desired:
    lane = LaneSpec.model_validate({"repos": [{"name": run.repo, "checkout": "~/src/app"}]})
    agent = AgentSpec.model_validate({"kind": kind, "command": [kind]})
    spec = TaskSpec.model_validate(
        {
            "lane": LANE,
            "repo": run.repo,
            "agent": AGENT,
            "prompt": "do it",
            "success": {"markers": [MARKER]},
            "maxIterations": max_iterations,
            "maxAttempts": max_attempts,
        }
    )
    return Desired(
        revision="rev",
        lanes={LANE: lane},
        agents={AGENT: agent},
        tasks={run.task: make_task(run.task, spec)},
    )
