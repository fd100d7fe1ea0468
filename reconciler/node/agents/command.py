"""The ``command`` plugin: any program, prompt by path (``{prompt_file}``) or on stdin.

Success is the exit code alone. Must not interpret the program's output beyond keeping its tail:
it is not metered (no spend, no progress but its growth) and ``reconciler logs`` shows it as is.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from reconciler.node.agents.launch import Launch
from reconciler.node.agents.login import Login
from reconciler.node.agents.tally import Tally
from reconciler.node.agents.values import FINAL_TEXT_LIMIT
from reconciler.node.errors import NodeError
from reconciler.node.files import tail_bytes
from reconciler.protocol import AgentRef, AgentResult, ExitInfo

PLACEHOLDER = "{prompt_file}"


class CommandAdapter:
    strip_env: frozenset[str] = frozenset()
    sessions: bool = False
    env_defaults: Mapping[str, str] = MappingProxyType({})
    tally: type[Tally] | None = None
    login: Login | None = None  # any program: its credentials are its own business

    def doctor(self, agent: AgentRef, env: Mapping[str, str]) -> tuple[str, str] | None:
        return None  # any program: nothing known about it

    def prepare(self, agent: AgentRef, run: Launch) -> None:
        pass  # flags and variables say everything

    def build(self, agent: AgentRef, run: Launch) -> tuple[list[str], bool]:
        if not agent.command:
            raise NodeError(
                "an agent of kind command needs a command (an argv list); set its command"
            )
        argv = [*agent.command, *agent.args]
        # Plain substring replacement, never formatting: other braces in arguments stay as-is.
        substituted = [arg.replace(PLACEHOLDER, run.prompt_file) for arg in argv]
        on_stdin = not any(PLACEHOLDER in arg for arg in argv)
        return substituted, on_stdin

    def parse(self, output_path: str, exit: ExitInfo) -> AgentResult:
        text = tail_bytes(output_path, FINAL_TEXT_LIMIT).decode("utf-8", errors="replace")
        return AgentResult(ok=exit.exit_code == 0, final_text=text)

    def render(self, line: str) -> list[str]:
        return [line]
