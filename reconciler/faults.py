"""Named crash points between the side effects of apply.

``RECONCILER_CRASH_AT=after-pr-intent`` makes the process die by SIGKILL exactly there, so tests
(and anyone hardening a deployment) can prove the next pass converges without duplicates.
"""

from __future__ import annotations

import os
import signal

ENV = "RECONCILER_CRASH_AT"

POINTS: dict[str, str] = {
    "after-run-intent": "start/retry/iterate: the run is recorded, the workspace not yet prepared",
    "after-workspace": "start/retry/iterate: the worktree exists, the agent not yet spawned",
    "after-spawn": "start/retry/iterate: the agent runs, its pid is not yet recorded",
    "after-stop-intent": "stop/mark-stalled: the decision is recorded, the process not yet killed",
    "after-pr-intent": "open-pr: the intent is recorded, nothing pushed yet",
    "after-push": "open-pr/update-pr: the branch is pushed, the PR not yet searched or created",
    "after-pr-create": "open-pr: the PR exists on the forge, state does not know it yet",
    "after-pr-close": "close-pr: the PR is closed, state does not know it yet",
    "after-cleanup": "cleanup: the worktree is removed, state does not know it yet",
    "after-complete": "complete: recorded done, nothing else happened yet",
}


def crash_point(name: str) -> None:
    """Die here, hard, if the environment names this point. A no-op otherwise."""
    assert name in POINTS, name
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
