"""How an agent kind authenticates, as pre-flight checks it: presence only, never a value."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Login:
    variables: tuple[str, ...]  # any one of them set authenticates the agent
    # what a login leaves in the lane user's home (``~``: the agent's HOME; ``${VAR:-default}``:
    # $VAR when the agent's environment sets it)
    files: tuple[str, ...]
    fix: str  # what to do when none is there
    # the variable that points the agent at an endpoint of its own, where only a key variable
    # authenticates (a login file is for the vendor's service)
    key_only: str | None = None
