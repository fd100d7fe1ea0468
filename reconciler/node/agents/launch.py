"""What one run's start gives an adapter besides its Agent: the ``build`` context."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Launch:
    prompt_file: str  # the prompt, in the run directory
    session_id: str | None = None  # the id of a new session, for agents that take one
    resume: str | None = None  # the session to continue
    git_dir: str | None = None  # the repository's git directory, where worktree commits go
    # the environment the agent will run with (its endpoint and key variables decide flags)
    env: Mapping[str, str] = field(default_factory=dict)
