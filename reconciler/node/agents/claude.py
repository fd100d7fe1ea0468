"""The ``claude`` adapter: ``claude -p`` with stream-json output, prompt on stdin.

The verdict is the last ``"type": "result"`` object of the stream, cross-checked with the exit
code (API failures can say ``success`` with ``is_error: true``). Must tolerate any garbage in
the output and never read more than the last few MiB of it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import MappingProxyType

from reconciler.node.agents.launch import Launch
from reconciler.node.agents.values import FINAL_TEXT_LIMIT, json_event
from reconciler.node.agents.values import clip as _clip
from reconciler.node.agents.values import float_or_none as _float
from reconciler.node.agents.values import int_or_none as _int
from reconciler.node.agents.values import str_or_none as _str
from reconciler.node.files import tail_bytes
from reconciler.protocol import AgentRef, AgentResult, ExitInfo

READ_LIMIT = 8 * 1024 * 1024


def last_result(data: bytes) -> dict[str, object] | None:
    """The last JSON object with ``"type": "result"`` among the lines of ``data``."""
    for raw in reversed(data.split(b"\n")):
        line = raw.strip()
        if not line.startswith(b"{"):
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            continue  # a truncated last line or interleaved noise
        if isinstance(obj, dict) and obj.get("type") == "result":
            return obj
    return None


def _stream_session(data: bytes) -> str | None:
    """The session id the stream's events carry (the ``system`` init event names it first)."""
    for raw in data.split(b"\n"):
        if b'"session_id"' in raw and (event := json_event(raw)) is not None:
            found = _str(event.get("session_id"))
            if found:
                return found
    return None


class ClaudeAdapter:
    # Claude Code refuses to start inside another Claude Code session that set these.
    strip_env: frozenset[str] = frozenset({"CLAUDECODE", "CLAUDE_CODE_ENTRYPOINT"})
    sessions: bool = True
    env_defaults: Mapping[str, str] = MappingProxyType(
        {
            # The reconciler's fleet runs the version its operator installed: a headless run
            # must not update the CLI under the other runs of the lane.
            "DISABLE_AUTOUPDATER": "1",
        }
    )

    def build(self, agent: AgentRef, run: Launch) -> tuple[list[str], bool]:
        argv = [*(agent.command or ["claude"]), "-p", "--output-format", "stream-json"]
        argv.append("--verbose")  # stream-json requires it
        if run.resume:
            argv += ["--resume", run.resume]
        elif run.session_id:
            argv += ["--session-id", run.session_id]
        if agent.max_budget_usd is not None and "--max-budget-usd" not in agent.args:
            # claude stops itself at the cap (result subtype error_max_budget_usd)
            argv += ["--max-budget-usd", f"{agent.max_budget_usd:.2f}"]
        argv += agent.args
        return argv, True

    def parse(self, output_path: str, exit: ExitInfo) -> AgentResult:
        data = tail_bytes(output_path, READ_LIMIT)
        if len(data) == READ_LIMIT:
            data = data.partition(b"\n")[2]  # the first line was cut by the read window
        result = last_result(data)
        if result is None:  # killed or cut off: no verdict, but the session it had is known
            tail = data[-FINAL_TEXT_LIMIT:].decode("utf-8", errors="replace")
            return AgentResult(ok=False, session_id=_stream_session(data), final_text=tail)
        usage = result.get("usage")
        usage = usage if isinstance(usage, dict) else {}
        subtype = _str(result.get("subtype"))
        is_error = result.get("is_error") is True
        return AgentResult(
            ok=exit.exit_code == 0 and not is_error and subtype == "success",
            subtype=subtype,
            session_id=_str(result.get("session_id")),
            cost_usd=_float(result.get("total_cost_usd")),
            input_tokens=_int(usage.get("input_tokens")),
            output_tokens=_int(usage.get("output_tokens")),
            num_turns=_int(result.get("num_turns")),
            final_text=_clip(_str(result.get("result")) or ""),
        )
