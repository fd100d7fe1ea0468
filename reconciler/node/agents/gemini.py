"""The ``gemini`` adapter: Gemini CLI headless, ``--output-format stream-json``, prompt on stdin.

Command line (see docs/agents.md)::

    gemini --output-format stream-json [--session-id ID | --resume ID] <args...>  < prompt

Gemini CLI runs headless whenever stdin or stdout is not a terminal, and reads the whole of a
non-terminal stdin as the prompt (up to 8 MiB), so the prompt never travels as an argument and
``-p`` is not needed (``-p ""`` would only append two newlines to it).

The stream is JSON lines with a ``type``: ``init`` (``session_id``, ``model``), ``message``
(``role``, ``content``, ``delta``), ``tool_use``, ``tool_result``, ``error`` (``severity``,
``message``) and a final ``result`` (``status`` success|error, optional ``error``, ``stats``
with ``input_tokens``/``output_tokens``/``total_tokens``/``tool_calls``/``duration_ms``). The
verdict is the exit code together with the last ``result`` object: ``ok`` only for exit 0 and
``status: success``. Anything else in the output (credential notices, warnings, a line cut off
by a kill) is skipped, and never more than the last few MiB of it is read.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from types import MappingProxyType

from reconciler.node.agents.launch import Launch
from reconciler.node.agents.values import FINAL_TEXT_LIMIT
from reconciler.node.agents.values import clip as _clip
from reconciler.node.agents.values import int_or_none as _int
from reconciler.node.agents.values import str_or_none as _str
from reconciler.node.files import tail_bytes
from reconciler.protocol import AgentRef, AgentResult, ExitInfo

READ_LIMIT = 8 * 1024 * 1024
HEAD_LIMIT = 64 * 1024  # where the init event (the session id) is, when the tail lost it

# Gemini CLI's documented headless exit codes. 0, 1, 42 and 53 are the long-standing ones;
# 41, 52, 54 and 130 are documented by later versions (JSON modes use them instead of 1).
EXIT_SUBTYPES: dict[int, str] = {
    1: "error",  # general error or API failure
    41: "auth_error",
    42: "input_error",  # invalid prompt or arguments, or a session that cannot be resumed
    52: "config_error",
    53: "turn_limit",  # model.maxSessionTurns reached
    54: "tool_error",  # fatal tool execution error (e.g. disk full)
    130: "cancelled",
}


def _first_int(obj: Mapping[str, object], *names: str) -> int | None:
    for name in names:
        value = _int(obj.get(name))
        if value is not None:
            return value
    return None


def events(data: bytes) -> Iterator[dict[str, object]]:
    """The JSON objects with a string ``type`` among the lines of ``data``, in order."""
    for raw in data.split(b"\n"):
        line = raw.strip()
        if not line.startswith(b"{"):
            continue  # blank lines, credential notices, warnings, ANSI noise
        try:
            obj = json.loads(line)
        except ValueError:
            continue  # a line cut off mid-write, or interleaved noise
        if isinstance(obj, dict) and isinstance(obj.get("type"), str):
            yield obj


def _session_id(event: Mapping[str, object]) -> str | None:
    # ``session_id`` in the CLI's source; some published examples spell it ``sessionId``.
    return _str(event.get("session_id")) or _str(event.get("sessionId"))


def tokens_of(stats: Mapping[str, object]) -> tuple[int | None, int | None]:
    """(input, output) tokens from a result's ``stats``.

    The stream format has flat ``input_tokens``/``output_tokens``; the single-JSON format (and
    some examples) nest per-model counts under ``models`` (``tokens.prompt``/``candidates`` or
    ``input_tokens``/``output_tokens``), which are summed when the flat totals are missing.
    """
    input_tokens = _first_int(stats, "input_tokens", "inputTokens")
    output_tokens = _first_int(stats, "output_tokens", "outputTokens")
    models = stats.get("models")
    if (input_tokens is None or output_tokens is None) and isinstance(models, dict):
        inputs: list[int] = []
        outputs: list[int] = []
        for usage in models.values():
            if not isinstance(usage, dict):
                continue
            tokens = usage.get("tokens")
            counts: Mapping[str, object] = tokens if isinstance(tokens, dict) else usage
            found_in = _first_int(counts, "input_tokens", "prompt", "input")
            found_out = _first_int(counts, "output_tokens", "candidates", "output")
            if found_in is not None:
                inputs.append(found_in)
            if found_out is not None:
                outputs.append(found_out)
        if input_tokens is None and inputs:
            input_tokens = sum(inputs)
        if output_tokens is None and outputs:
            output_tokens = sum(outputs)
    return input_tokens, output_tokens


class _Reading:
    """What one pass over the events found."""

    def __init__(self) -> None:
        self.session_id: str | None = None
        self.result: dict[str, object] | None = None
        self.turns = 0
        self.segment: list[str] = []  # assistant text of the current model turn
        self.last_text = ""  # the last model turn that said anything
        self.in_turn = False
        self.last_error: str | None = None  # the last error event of severity error

    def close_turn(self) -> None:
        text = "".join(self.segment)
        if text.strip():
            self.last_text = text
        self.segment = []
        self.in_turn = False

    def open_turn(self) -> None:
        if not self.in_turn:
            self.in_turn = True
            self.turns += 1

    def feed(self, event: dict[str, object]) -> None:
        kind = event["type"]
        if kind == "init":
            self.session_id = _session_id(event) or self.session_id
        elif kind == "message":
            content = _str(event.get("content"))
            if event.get("role") != "assistant":
                self.close_turn()  # a user message starts a new exchange
            elif content is not None:
                self.open_turn()
                if event.get("delta") is True:
                    self.segment.append(content)
                else:  # a whole message, not a chunk of one: it replaces what came before
                    self.segment = [content]
        elif kind == "tool_use":
            self.open_turn()
        elif kind == "tool_result":
            # The model's next words come in a new turn; text said before a tool call is kept
            # as a fallback for a run whose last turn says nothing.
            self.close_turn()
        elif kind == "error":
            message = _str(event.get("message"))
            if message and event.get("severity") != "warning":
                self.last_error = message
        elif kind == "result":
            self.close_turn()
            self.result = event
            self.session_id = _session_id(event) or self.session_id

    def final_text(self) -> str:
        text = "".join(self.segment)
        return text if text.strip() else self.last_text


def _read(output_path: str) -> tuple[bytes, bool]:
    """The tail of the output (at most READ_LIMIT) and whether it is the whole file."""
    data = tail_bytes(output_path, READ_LIMIT)
    if len(data) < READ_LIMIT:
        return data, True
    return data.partition(b"\n")[2], False  # the first line was cut by the read window


def _head_session_id(output_path: str) -> str | None:
    try:
        with open(output_path, "rb") as f:
            head = f.read(HEAD_LIMIT)
    except OSError:
        return None
    for event in events(head):
        if event["type"] == "init":
            return _session_id(event)
    return None


class GeminiAdapter:
    # Set by an IDE's Gemini companion in its terminals: a headless run in a worktree must not
    # attach to the operator's IDE (diffs opened there, its folders added to the workspace).
    strip_env: frozenset[str] = frozenset(
        {
            "GEMINI_CLI_IDE_SERVER_PORT",
            "GEMINI_CLI_IDE_AUTH_TOKEN",
            "GEMINI_CLI_IDE_WORKSPACE_PATH",
            "GEMINI_CLI_IDE_PID",
        }
    )
    # ``--resume <uuid>`` resumes a session of the same project (the same worktree path)
    # headless; ``--session-id`` makes the id the reconciler chose the session's own.
    sessions: bool = True
    env_defaults: Mapping[str, str] = MappingProxyType({})

    def build(self, agent: AgentRef, run: Launch) -> tuple[list[str], bool]:
        argv = [*(agent.command or ["gemini"]), "--output-format", "stream-json"]
        if run.resume:  # the CLI refuses --session-id together with --resume
            argv += ["--resume", run.resume]
        elif run.session_id:
            argv += ["--session-id", run.session_id]
        argv += agent.args
        return argv, True

    def parse(self, output_path: str, exit: ExitInfo) -> AgentResult:
        data, whole = _read(output_path)
        reading = _Reading()
        for event in events(data):
            reading.feed(event)
        if reading.session_id is None and not whole:
            reading.session_id = _head_session_id(output_path)
        result = reading.result
        if result is None and reading.turns == 0 and reading.session_id is None:
            # Not a stream at all (an old CLI, a wrapper script, an error before start-up).
            tail = data[-FINAL_TEXT_LIMIT:].decode("utf-8", errors="replace")
            return AgentResult(ok=False, subtype=_exit_subtype(exit), final_text=tail)
        status = _str(result.get("status")) if result is not None else None
        stats = result.get("stats") if result is not None else None
        input_tokens, output_tokens = tokens_of(stats if isinstance(stats, dict) else {})
        error = result.get("error") if result is not None else None
        error_message = (_str(error.get("message")) if isinstance(error, dict) else None) or (
            reading.last_error
        )
        ok = exit.exit_code == 0 and status == "success"
        if ok:
            subtype: str | None = "success"
        elif exit.exit_code == 0:
            # Exit 0 without a success result: the model failed (an invalid stream) or the
            # result line never arrived; no result is no verdict.
            subtype = "error" if status is not None else None
        else:
            subtype = _exit_subtype(exit)
        text = reading.final_text()
        if not ok and error_message and error_message not in text:
            text = f"{text}\n{error_message}" if text else error_message
        return AgentResult(
            ok=ok,
            subtype=subtype,
            session_id=reading.session_id,
            cost_usd=None,  # Gemini CLI reports tokens, not money
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            num_turns=reading.turns or None,
            final_text=_clip(text),
        )


def _exit_subtype(exit: ExitInfo) -> str | None:
    if exit.exit_code == 0:
        return None
    if exit.exit_code is None:
        return "error"  # killed by a signal
    return EXIT_SUBTYPES.get(exit.exit_code, "error")
