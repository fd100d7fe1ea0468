"""Agent plugins: everything the node knows about one agent CLI, one module per kind.

``ADAPTERS`` is the one place that lists the kinds. A kind's plugin builds an argv list (never a
shell string), names the environment variables that must not reach the agent and the ones it
gets by default, says what authenticates it (``login``, for pre-flight), parses the agent's
recorded output after the run, says how that output counts while the run goes (its ``tally``:
tokens, cost, turns, tool calls, progress, retry notices; see ``tally.py``) and how
``reconciler logs`` shows it (``render``). ``meter.py`` and ``render.py`` are generic machinery
that ask the plugin; the model price table (``pricing.py``) is shared.

Plugins must not start processes or touch the run directory beyond reading what the agent
wrote there (and their tally, which the meter saves); ``prepare`` is the one place a plugin may
set up the agent's own configuration in the lane user's home, before ``build``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from reconciler.node.agents.aider import AiderAdapter
from reconciler.node.agents.claude import ClaudeAdapter
from reconciler.node.agents.codex import CodexAdapter
from reconciler.node.agents.command import CommandAdapter
from reconciler.node.agents.gemini import GeminiAdapter
from reconciler.node.agents.launch import Launch
from reconciler.node.agents.login import Login
from reconciler.node.agents.tally import Tally
from reconciler.protocol import AgentRef, AgentResult, ExitInfo


class Adapter(Protocol):
    """One agent kind's plugin."""

    strip_env: frozenset[str]
    # the plugin's defaults, under the lane's and the Agent's env (which may override them)
    env_defaults: Mapping[str, str]
    sessions: bool  # the agent keeps sessions that a later run can resume
    # how its output counts while the run goes, kept in the run's meter.json; None: the output
    # says nothing of spend or progress (only its growth counts)
    tally: type[Tally] | None
    login: Login | None  # what authenticates it, for pre-flight; None: nothing to check

    def doctor(self, agent: AgentRef, env: Mapping[str, str]) -> tuple[str, str] | None:
        """(problem, fix) when the agent, as configured and in ``env`` (what a run gets), will
        fail the way the real CLI does; None when nothing is known to be wrong."""
        ...

    def prepare(self, agent: AgentRef, run: Launch) -> None:
        """Make the agent's own configuration say what no flag or variable can (as the lane
        user, before each run); most adapters need nothing."""
        ...

    def build(self, agent: AgentRef, run: Launch) -> tuple[list[str], bool]:
        """(argv, prompt_on_stdin) for one run. ``run.git_dir``: the repository's git directory,
        where commits made in the worktree are written (a sandboxing agent must allow it);
        ``run.env``: the environment the agent gets (after ``env_defaults``)."""
        ...

    def parse(self, output_path: str, exit: ExitInfo) -> AgentResult:
        """The agent's own verdict, read from its recorded stdout."""
        ...

    def render(self, line: str) -> list[str]:
        """What ``reconciler logs`` shows for one line of its output (possibly nothing)."""
        ...


# The kinds: each one's plugin. The manifests' Agent kind (AgentSpec.kind, AgentRef.kind) lists
# the same names.
ADAPTERS: dict[str, Adapter] = {
    "aider": AiderAdapter(),
    "claude": ClaudeAdapter(),
    "codex": CodexAdapter(),
    "command": CommandAdapter(),
    "gemini": GeminiAdapter(),
}

__all__ = [
    "ADAPTERS",
    "Adapter",
    "AiderAdapter",
    "ClaudeAdapter",
    "CodexAdapter",
    "CommandAdapter",
    "GeminiAdapter",
    "Launch",
    "Login",
]
