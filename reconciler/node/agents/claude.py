"""The ``claude`` plugin: ``claude -p`` with stream-json output, prompt on stdin.

The verdict is the last ``"type": "result"`` object of the stream, cross-checked with the exit
code (API failures can say ``success`` with ``is_error: true``). Must tolerate any garbage in
the output and never read more than the last few MiB of it.

Spend as the run goes: each assistant message's ``usage``, per model (a message streamed as
several events repeats its usage under one id: counted once); the final result's cost and usage
win. Each ``system``/``api_retry`` event is a retry of the model API, not progress.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from types import MappingProxyType
from typing import Literal

from pydantic import BaseModel, Field

from reconciler.node.agents.launch import Launch
from reconciler.node.agents.login import Login
from reconciler.node.agents.tally import Counts, EventTally, Tally, add, counts_in, no_counts
from reconciler.node.agents.values import (
    FINAL_TEXT_LIMIT,
    as_dict,
    as_list,
    json_event,
    one_line,
    render_json_line,
    short,
    tool_input,
)
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


def render_event(event: dict[str, object]) -> list[str]:
    """One stream-json event as ``reconciler logs`` shows it."""
    kind = event.get("type")
    if kind == "system" and event.get("subtype") == "init":
        return [f"── session {event.get('session_id')} ({event.get('model') or 'model ?'})"]
    if kind == "assistant":
        out = []
        for item in map(as_dict, as_list(as_dict(event.get("message")).get("content"))):
            if item.get("type") == "text" and _str(item.get("text")):
                out.append(f"assistant: {short(str(item['text']))}")
            elif item.get("type") == "tool_use":
                out.append(
                    f"  tool {item.get('name')}: {short(tool_input(item.get('input')), 120)}"
                )
        return out
    if kind == "result":
        cost = _float(event.get("total_cost_usd"))
        turns = _int(event.get("num_turns"))
        error = " (is_error)" if event.get("is_error") is True else ""
        counted = [f"{turns} turns"] if turns is not None else []
        counted += [f"${cost:.4f}"] if cost is not None else []
        head = f"── result {event.get('subtype')}{error}" + (
            f": {', '.join(counted)}" if counted else ""
        )
        text = _str(event.get("result"))
        return [head, *([short(text)] if text else [])]
    return []


_USAGE = (
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
)


class _Message(BaseModel):
    """The assistant message being streamed (one event per content block)."""

    id: str
    model: str
    counts: Counts
    tools: list[str] = Field(default_factory=list)  # its tool_use block ids seen so far


class ClaudeTally(EventTally):
    kind: Literal["claude"] = "claude"
    message: _Message | None = None

    def per_model(self) -> dict[str, Counts]:
        counts = super().per_model()
        if self.message is not None:
            pending = self.message
            counts[pending.model] = add(counts.get(pending.model, no_counts()), pending.counts)
        return counts

    def _streamed(self, message: dict[str, object]) -> _Message | None:
        """The message being streamed, after ``message``'s usage (the pending one when it is the
        same message again): its counts only ever grow, whichever event reports them."""
        counts = counts_in(message.get("usage"), *_USAGE)
        ident = _str(message.get("id")) or ""
        model = _str(message.get("model")) or ""
        if model == "<synthetic>":
            return None  # Claude Code's own message (e.g. an API error's text): no model answered
        pending = self.message
        if pending is None or not ident or pending.id != ident:
            if pending is not None:
                self.models[pending.model] = add(
                    self.models.get(pending.model, no_counts()), pending.counts
                )
            pending = self.message = _Message(id=ident, model=model, counts=counts)
            self.turns += 1
        else:
            pending.counts = [max(a, b) for a, b in zip(pending.counts, counts, strict=True)]
        return pending

    def feed(self, event: dict[str, object]) -> None:
        if event.get("type") == "stream_event":
            # --include-partial-messages: the API's own events. message_start opens a message
            # with its input usage; message_delta closes it with the whole output count (the
            # assistant events repeat message_start's usage: one output token).
            api = as_dict(event.get("event"))
            if api.get("type") == "message_start" and isinstance(api.get("message"), dict):
                self._streamed(as_dict(api["message"]))
            elif api.get("type") == "message_delta" and self.message is not None:
                counts = counts_in(api.get("usage"), *_USAGE)
                current = self.message
                current.counts = [max(a, b) for a, b in zip(current.counts, counts, strict=True)]
            return
        if event.get("type") == "assistant":
            message = event.get("message")
            if not isinstance(message, dict):
                return
            pending = self._streamed(message)
            if pending is None:
                return
            for block in as_list(message.get("content")):
                if isinstance(block, dict) and block.get("type") == "tool_use":
                    tool = _str(block.get("id")) or f"#{len(pending.tools)}"
                    if tool not in pending.tools:
                        pending.tools.append(tool)
                        self.tools += 1
        elif event.get("type") == "result":
            self.reported_usd = _float(event.get("total_cost_usd"))
            found_in, found_out = result_tokens(event)
            if found_in is not None or found_out is not None:
                self.reported_tokens = [found_in or 0, found_out or 0]

    def retry(self, event: dict[str, object]) -> str | None:
        if event.get("type") != "system" or event.get("subtype") != "api_retry":
            return None
        status = _int(event.get("error_status"))
        error = _str(event.get("error")) or "API error"
        attempt, most = _int(event.get("attempt")), _int(event.get("max_retries"))
        count = f" (attempt {attempt} of {most})" if attempt is not None and most else ""
        return f"retrying: {status or ''} {error}{count}".replace("  ", " ")

    def shown(self, event: dict[str, object]) -> list[str]:
        return render_event(event)


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
    tally: type[Tally] | None = ClaudeTally
    login: Login | None = Login(
        (
            "ANTHROPIC_API_KEY",
            "ANTHROPIC_AUTH_TOKEN",
            "CLAUDE_CODE_OAUTH_TOKEN",
            "CLAUDE_CODE_USE_BEDROCK",
            "CLAUDE_CODE_USE_VERTEX",
        ),
        ("${CLAUDE_CONFIG_DIR:-~/.claude}/.credentials.json",),
        "export ANTHROPIC_API_KEY in the lane user's ~/.profile, or run `claude` once as the "
        "lane user and log in",
    )

    def doctor(self, agent: AgentRef, env: Mapping[str, str]) -> tuple[str, str] | None:
        if os.geteuid() == 0 and not _chooses_permissions(agent.args):
            return (
                "Claude Code would run as root here, where it refuses --permission-mode "
                "bypassPermissions: every Bash call of a headless run, git commit included, "
                "would be denied.",
                "give the lane its own user, or choose --allowedTools in the Agent's args "
                "(and commits: reconciler)",
            )
        return None

    def prepare(self, agent: AgentRef, run: Launch) -> None:
        pass  # flags and variables say everything

    def build(self, agent: AgentRef, run: Launch) -> tuple[list[str], bool]:
        argv = [*(agent.command or ["claude"]), "-p", "--output-format", "stream-json"]
        argv.append("--verbose")  # stream-json requires it
        # Each message's final usage is only in the partial-message events (message_delta):
        # without them the meter sees one output token per message until the run's result.
        argv.append("--include-partial-messages")
        if run.resume:
            argv += ["--resume", run.resume]
        elif run.session_id:
            argv += ["--session-id", run.session_id]
        if not _chooses_permissions(agent.args) and os.geteuid() != 0:
            # Nobody answers a permission prompt in a headless run: a denied tool (every
            # Bash command, git commit included) only shows up as permission_denials in the
            # result. The lane's own user is the boundary (Claude refuses this as root).
            argv += ["--permission-mode", "bypassPermissions"]
        if agent.max_budget_usd is not None and "--max-budget-usd" not in agent.args:
            # claude stops itself at the cap (result subtype error_max_budget_usd); it rejects
            # 0.00, and the planner starts no run with less than a cent left
            argv += ["--max-budget-usd", _dollars(agent.max_budget_usd)]
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
        input_tokens, output_tokens = result_tokens(result)
        subtype = _str(result.get("subtype"))
        is_error = result.get("is_error") is True
        text = _str(result.get("result")) or ""
        denied = denials(result)
        if denied:
            text = f"{text}\n\n{denied}" if text else denied
        ok = exit.exit_code == 0 and not is_error and subtype == "success"
        return AgentResult(
            ok=ok,
            error=None if ok else _error(result, subtype),
            subtype=subtype,
            session_id=_str(result.get("session_id")),
            cost_usd=_float(result.get("total_cost_usd")),
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            num_turns=_int(result.get("num_turns")),
            final_text=_clip(text),
        )

    def render(self, line: str) -> list[str]:
        return render_json_line(line, render_event)


def _error(result: dict[str, object], subtype: str | None) -> str | None:
    """What went wrong, as Claude Code says it: its ``errors``, else the result text (an API
    error's), else the subtype (``error_max_turns``)."""
    raw = result.get("errors")
    errors = [e for e in raw if isinstance(e, str) and e.strip()] if isinstance(raw, list) else []
    return one_line("; ".join(errors) or _str(result.get("result")) or subtype)


def _chooses_permissions(args: list[str]) -> bool:
    """Whether ``args`` decide what the agent may do without asking (then they are kept)."""
    names = {a.split("=", 1)[0] for a in args}
    return bool(names & _PERMISSION_FLAGS)


def _dollars(value: float) -> str:
    """A budget as ``--max-budget-usd`` takes it: positive, to a hundredth of a cent."""
    return f"{max(value, 0.0001):.4f}".rstrip("0").rstrip(".")


def result_tokens(result: dict[str, object]) -> tuple[int | None, int | None]:
    """(input, output) tokens of a ``result`` event: its ``usage``, else (a run stopped by
    ``error_max_budget_usd`` reports ``usage`` all zero) the sums of its ``modelUsage``."""
    usage = result.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    found = (_int(usage.get("input_tokens")), _int(usage.get("output_tokens")))
    models = result.get("modelUsage")
    if any(found) or not isinstance(models, dict):
        return found
    per_model = [m for m in models.values() if isinstance(m, dict)]
    inputs = [_int(m.get("inputTokens")) for m in per_model]
    outputs = [_int(m.get("outputTokens")) for m in per_model]
    if not any(x is not None for x in inputs + outputs):
        return found
    return sum(x or 0 for x in inputs), sum(x or 0 for x in outputs)


def denials(result: dict[str, object]) -> str:
    """The tool calls Claude Code refused to run (no one approves them headless), in words."""
    raw = result.get("permission_denials")
    items = [d for d in raw if isinstance(d, dict)] if isinstance(raw, list) else []
    if not items:
        return ""
    shown = []
    for item in items[:3]:
        tool = _str(item.get("tool_name")) or "a tool"
        given = item.get("tool_input")
        command = _str(given.get("command")) if isinstance(given, dict) else None
        shown.append(f"{tool}: {command[:120]}" if command else tool)
    more = f" and {len(items) - 3} more" if len(items) > 3 else ""
    return (
        f"Claude Code denied {len(items)} tool call(s) for want of permission "
        f"({'; '.join(shown)}{more}); allow them with --permission-mode or --allowedTools "
        "in the Agent's args"
    )


_PERMISSION_FLAGS = frozenset(
    {
        "--permission-mode",
        "--dangerously-skip-permissions",
        "--allowedTools",
        "--allowed-tools",
    }
)
