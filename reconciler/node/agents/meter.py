"""What a run has spent and done so far, read from its output as it grows.

A pass reads only what the agent wrote since the last one: the reading position and the sums
are kept beside the output in ``meter.json`` (the node's file, not the agent's), so metering a
long run costs the new bytes, not the whole log, and no usage is lost to a read window.

Spend is what the agent reports where it reports it (claude's final result, aider's session
cost). Otherwise it is priced from the tokens its events report (``pricing.py``, or the Agent's
``spec.pricing``) and marked estimated:

- claude: each assistant message's ``usage`` (a message streamed as several events repeats
  its usage under one id: counted once), per model; the final result's cost and usage win.
- codex: the last ``turn.completed`` usage, a running total of the thread. A resumed thread
  starts from the totals the run that left it reached, which are subtracted.
- gemini: the final result's ``stats``, priced by the ``init`` event's model.
- aider: the ``Tokens: … sent, … received. Cost: … session.`` reports.

The same reading gives progress for agents with an event stream (claude, codex, gemini): the
end of the last line that is one of the agent's own events. An agent that only prints
heartbeats (or noise) grows its output but not that offset; the control plane notes when the
offset last moved and judges stalls by it.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from pydantic import BaseModel, Field, ValidationError

from reconciler.node import files
from reconciler.node.agents.aider import COST, TOKENS, count
from reconciler.node.agents.claude import result_tokens as claude_tokens
from reconciler.node.agents.codex import retry_notice as codex_retry
from reconciler.node.agents.gemini import tokens_of as gemini_tokens
from reconciler.node.agents.pricing import Price, configured, model_in, price_of
from reconciler.node.agents.render import RENDERERS
from reconciler.node.agents.values import float_or_none, int_or_none, json_event, str_or_none
from reconciler.protocol import AgentRef

METER_JSON = "meter.json"
CHUNK = 4 << 20
_RUN_NAME = re.compile(r"^(\d+)\.(\d+)$")

Counts = list[int]  # [input, output, cache read, cache write]


@dataclass(frozen=True)
class Spend:
    input_tokens: int | None = None  # as the agent counts them (codex: cached input included)
    output_tokens: int | None = None
    cost_usd: float | None = None
    estimated: bool = False  # priced from tokens: the agent reported no cost
    turns: int | None = None  # model responses so far
    tool_calls: int | None = None  # tools, commands and edits the agent ran so far
    # agents with an event stream: where their last own event ends in the output (0: none yet;
    # heartbeats and noise do not move it, so stalls are judged by it), and what it was
    event_end: int | None = None
    last_event: str | None = None

    @property
    def tokens(self) -> int | None:
        if self.input_tokens is None and self.output_tokens is None:
            return None
        return (self.input_tokens or 0) + (self.output_tokens or 0)


class _Message(BaseModel):
    """Claude: the assistant message being streamed (one event per content block)."""

    id: str
    model: str
    counts: Counts
    tools: list[str] = Field(default_factory=list)  # its tool_use block ids seen so far


class _Tally(BaseModel):
    """What ``meter.json`` keeps between passes."""

    kind: str
    offset: int = 0
    models: dict[str, Counts] = Field(default_factory=dict)  # "" = the model is not named
    message: _Message | None = None
    model: str = ""  # gemini: the init event's model
    reported_usd: float | None = None
    reported_tokens: list[int] | None = None  # claude's final [input, output]
    baseline: Counts | None = None  # codex: the resumed thread's totals before this run
    turns: int = 0
    tools: int = 0
    in_turn: bool = False  # gemini: inside a model response
    event_end: int = 0  # where the agent's last own event ends in its output
    last_event: str | None = None  # that event, as `reconciler logs` shows it
    lines_at: int = 0  # aider: where its transcript has been read line by line
    error_lines: int = 0  # aider: lines still to come of a model-call error it may retry
    stderr_at: int = 0  # gemini: how far its stderr was read for retry notices

    def all_models(self) -> dict[str, Counts]:
        counts = {m: list(c) for m, c in self.models.items()}
        if self.message is not None:
            pending = self.message
            counts[pending.model] = _add(counts.get(pending.model, [0, 0, 0, 0]), pending.counts)
        if self.baseline is not None and self.kind == "codex":
            total = counts.get("", [0, 0, 0, 0])
            counts[""] = [max(0, a - b) for a, b in zip(total, self.baseline, strict=True)]
        return counts


def _load(path: str, kind: str) -> _Tally:
    data = files.read_json(path)
    if data is not None and data.get("kind") == kind:
        try:
            return _Tally.model_validate(data)
        except ValidationError:
            pass  # from another version, or damaged: read the output again
    return _Tally(kind=kind)


def _add(a: Counts, b: Counts) -> Counts:
    return [x + y for x, y in zip(a, b, strict=True)]


def _usage(usage: object, *names: str) -> Counts:
    data = usage if isinstance(usage, dict) else {}
    return [int_or_none(data.get(n)) or 0 for n in names]


# ---------------------------------------------------------------------------------- feeding


_CLAUDE_USAGE = (
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
)


def _claude_message(tally: _Tally, message: dict[str, object]) -> _Message | None:
    """The message being streamed, after ``message``'s usage (the pending one when it is the
    same message again): its counts only ever grow, whichever event reports them."""
    counts = _usage(message.get("usage"), *_CLAUDE_USAGE)
    ident = str_or_none(message.get("id")) or ""
    model = str_or_none(message.get("model")) or ""
    if model == "<synthetic>":
        return None  # Claude Code's own message (e.g. an API error's text): no model answered
    pending = tally.message
    if pending is None or not ident or pending.id != ident:
        if pending is not None:
            tally.models[pending.model] = _add(
                tally.models.get(pending.model, [0, 0, 0, 0]), pending.counts
            )
        pending = tally.message = _Message(id=ident, model=model, counts=counts)
        tally.turns += 1
    else:
        pending.counts = [max(a, b) for a, b in zip(pending.counts, counts, strict=True)]
    return pending


def _feed_claude(tally: _Tally, event: dict[str, object]) -> None:
    if event.get("type") == "stream_event":
        # --include-partial-messages: the API's own events. message_start opens a message
        # with its input usage; message_delta closes it with the whole output count (the
        # assistant events repeat message_start's usage: one output token).
        raw = event.get("event")
        api = raw if isinstance(raw, dict) else {}
        if api.get("type") == "message_start" and isinstance(api.get("message"), dict):
            _claude_message(tally, api["message"])
        elif api.get("type") == "message_delta" and tally.message is not None:
            counts = _usage(api.get("usage"), *_CLAUDE_USAGE)
            current = tally.message
            current.counts = [max(a, b) for a, b in zip(current.counts, counts, strict=True)]
        return
    if event.get("type") == "assistant":
        message = event.get("message")
        if not isinstance(message, dict):
            return
        pending = _claude_message(tally, message)
        if pending is None:
            return
        content = message.get("content")
        for block in content if isinstance(content, list) else []:
            if isinstance(block, dict) and block.get("type") == "tool_use":
                tool = str_or_none(block.get("id")) or f"#{len(pending.tools)}"
                if tool not in pending.tools:
                    pending.tools.append(tool)
                    tally.tools += 1
    elif event.get("type") == "result":
        tally.reported_usd = float_or_none(event.get("total_cost_usd"))
        found_in, found_out = claude_tokens(event)
        if found_in is not None or found_out is not None:
            tally.reported_tokens = [found_in or 0, found_out or 0]


# Codex items that are the agent acting, not talking or thinking.
_CODEX_TOOLS = frozenset({"command_execution", "file_change", "mcp_tool_call", "web_search"})


def _feed_codex(tally: _Tally, event: dict[str, object]) -> None:
    if event.get("type") == "turn.completed":
        tally.turns += 1
        tally.models[""] = _usage(
            event.get("usage"), "input_tokens", "output_tokens", "cached_input_tokens", "_"
        )
    elif event.get("type") == "item.completed":
        item = event.get("item")
        if isinstance(item, dict) and item.get("type") in _CODEX_TOOLS:
            tally.tools += 1


def _feed_gemini(tally: _Tally, event: dict[str, object]) -> None:
    kind = event.get("type")
    if kind == "init":
        tally.model = str_or_none(event.get("model")) or tally.model
    elif kind in ("message", "tool_use"):
        if kind == "tool_use" or event.get("role") == "assistant":
            if not tally.in_turn:  # a model response starts
                tally.turns += 1
                tally.in_turn = True
            tally.tools += kind == "tool_use"
        else:
            tally.in_turn = False
    elif kind == "tool_result":
        tally.in_turn = False  # the results go back to the model: the next response is a turn
    elif kind == "result":
        raw = event.get("stats")
        stats = raw if isinstance(raw, dict) else {}
        per_model = _gemini_models(stats.get("models"))
        if per_model:
            # the init event's model is often "auto": each model the CLI routed to is priced
            tally.models = per_model
            return
        found_in, found_out = gemini_tokens(stats)
        if found_in is not None or found_out is not None:
            tally.models = {tally.model: [found_in or 0, found_out or 0, 0, 0]}


def _gemini_models(models: object) -> dict[str, Counts]:
    """Gemini's per-model stats as counts: input (cached included), output, cached."""
    found: dict[str, Counts] = {}
    for name, usage in models.items() if isinstance(models, dict) else ():
        if isinstance(usage, dict) and "input_tokens" in usage:
            found[str(name)] = _usage(usage, "input_tokens", "output_tokens", "cached", "_")
    return found


def _claude_retry(event: dict[str, object]) -> str | None:
    if event.get("type") != "system" or event.get("subtype") != "api_retry":
        return None
    status = int_or_none(event.get("error_status"))
    error = str_or_none(event.get("error")) or "API error"
    attempt, most = int_or_none(event.get("attempt")), int_or_none(event.get("max_retries"))
    count = f" (attempt {attempt} of {most})" if attempt is not None and most else ""
    return f"retrying: {status or ''} {error}{count}".replace("  ", " ")


def _codex_retry(event: dict[str, object]) -> str | None:
    message = codex_retry(event)
    return f"retrying: {message}" if message is not None else None


def _no_retry(event: dict[str, object]) -> str | None:
    return None


# An agent waiting on its model API announces each retry; that is not progress (a bad key or
# an unreachable provider would otherwise never stall), but it is what the run is stuck on.
_RETRIES: dict[str, Callable[[dict[str, object]], str | None]] = {
    "claude": _claude_retry,
    "codex": _codex_retry,
}


def _consume_lines(tally: _Tally, data: bytes, final: bool) -> int:
    """Feed the whole lines of ``data`` (which starts at ``tally.offset``); return the bytes
    consumed. Each JSON event is parsed once, for its spend and for progress: the last line
    that is one of the agent's own events (one ``render`` has something to say about)."""
    end = len(data) if final else data.rfind(b"\n") + 1
    feed = {"claude": _feed_claude, "codex": _feed_codex, "gemini": _feed_gemini}[tally.kind]
    render = RENDERERS[tally.kind]
    retry = _RETRIES.get(tally.kind, _no_retry)
    at = tally.offset
    for raw in data[:end].split(b"\n"):
        at += len(raw) + 1
        event = json_event(raw) if raw else None
        if event is None:
            continue  # noise, heartbeats, a cut line: neither spend nor progress
        feed(tally, event)
        waiting = retry(event)
        if waiting is not None:
            tally.last_event = waiting[:200]  # shown as what the run is on, not progress
            continue
        shown = render(event)
        if shown:
            tally.event_end, tally.last_event = min(at, tally.offset + end), shown[0].strip()[:200]
    return end


def _consume_aider(tally: _Tally, data: bytes, final: bool) -> int:
    """Aider's reports may wrap over lines: consume up to the end of the last whole report (or,
    with none, all but the last KiB, where one may be starting)."""
    text = data.decode("utf-8", errors="surrogateescape")  # offsets map back to bytes exactly
    end_char = 0
    for m in TOKENS.finditer(text):
        counts = [count(m.group(1)), count(m.group(4)), 0, 0]
        tally.models[""] = _add(tally.models.get("", [0, 0, 0, 0]), counts)
        tally.turns += 1  # one report per model call
        end_char = m.end()
    for m in COST.finditer(text):
        tally.reported_usd = float(m.group(2))  # the session total so far
        end_char = max(end_char, m.end())
    if final:
        return len(data)
    if end_char:
        return len(text[:end_char].encode("utf-8", errors="surrogateescape"))
    cut = data.rfind(b"\n", 0, max(0, len(data) - 1024))
    return cut + 1 if cut >= 0 else 0


_CONSUMERS = {
    "claude": _consume_lines,
    "codex": _consume_lines,
    "gemini": _consume_lines,
    "aider": _consume_aider,
}


# ----------------------------------------------------------------------------------- reading


def _read(tally: _Tally, output: str, final: bool) -> tuple[_Tally, bool]:
    """``tally`` advanced over what ``output`` gained, and whether it moved."""
    consume = _CONSUMERS[tally.kind]
    try:
        with open(output, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size < tally.offset:  # the output was replaced: start over
                tally = _Tally(kind=tally.kind)
            start = tally.offset
            handle.seek(start)
            pending = b""
            while handle.tell() < size:
                data = pending + handle.read(CHUNK)
                at_end = handle.tell() >= size
                used = consume(tally, data, final and at_end)
                pending = data[used:]
                if len(pending) > 4 * CHUNK:  # a line that never ends is nobody's event
                    used, pending = len(data), b""
                tally.offset += used
            moved = tally.offset != start
            if tally.kind == "aider":
                moved = _aider_lines(tally, handle, size) or moved
            return tally, moved
    except OSError:
        return tally, False


_LITELLM_ERROR = re.compile(r"^litellm\.\w+")
_AIDER_RETRY = re.compile(r"^Retrying in [\d.]+ seconds\.\.\.$")
_ERROR_TAIL = 3  # lines after litellm's error line that still belong to it


def _aider_lines(tally: _Tally, handle: BinaryIO, size: int) -> bool:
    """Aider's progress: the end of its last transcript line that is not a model-call error
    being retried (litellm's error line, its rest wrapped at the console width, aider's
    explanation and ``Retrying in N seconds...``: minutes of output that are no progress)."""
    handle.seek(tally.lines_at)
    data = handle.read(min(size - tally.lines_at, 4 * CHUNK))
    end = data.rfind(b"\n") + 1
    if end == 0:
        return False
    at = tally.lines_at
    for raw in data[:end].split(b"\n")[:-1]:
        at += len(raw) + 1
        line = raw.decode("utf-8", errors="replace").strip()
        if _LITELLM_ERROR.match(line):
            tally.error_lines = _ERROR_TAIL
            tally.last_event = f"retrying: {line[:180]}"
        elif _AIDER_RETRY.match(line):
            tally.error_lines = 0  # what follows is the retried call's
        elif line and tally.error_lines:
            tally.error_lines -= 1  # the error's wrapped rest, or aider's explanation of it
        elif line:
            tally.event_end, tally.last_event = at, line[:200]
    tally.lines_at += end
    return True


def _tally(kind: str, run_dir: str, final: bool) -> _Tally:
    path = os.path.join(run_dir, METER_JSON)
    loaded = _load(path, kind)
    progress = loaded.event_end
    tally, moved = _read(loaded, os.path.join(run_dir, files.OUTPUT_LOG), final)
    if kind == "gemini":
        moved = _gemini_stderr(tally, run_dir, tally.event_end != progress) or moved
    if moved:
        _save(run_dir, tally)
    return tally


# Gemini CLI 0.61 retries a failing model call with nothing on stdout; stderr says it:
# "Attempt 3 failed with status 503. Retrying with backoff... <error>".
_GEMINI_RETRY = re.compile(
    rb"Attempt (\d+) failed(?: with status (\d+))?\. Retrying with backoff\.\.\. ?([^\n]*)"
)


def _gemini_stderr(tally: _Tally, run_dir: str, progressed: bool) -> bool:
    """What a gemini run is on when it retries: its stderr's last retry notice since its last
    progress (``progressed``: the agent moved on during this pass; earlier notices are old)."""
    try:
        size = os.path.getsize(os.path.join(run_dir, files.STDERR_LOG))
    except OSError:
        return False
    if progressed or size < tally.stderr_at:
        tally.stderr_at = size
        return True
    if size == tally.stderr_at:
        return False
    start = max(tally.stderr_at, size - (64 << 10))
    try:
        with open(os.path.join(run_dir, files.STDERR_LOG), "rb") as handle:
            handle.seek(start)
            data = handle.read(size - start)
    except OSError:
        return False
    notices = list(_GEMINI_RETRY.finditer(data))
    tally.stderr_at = start + (data.rfind(b"\n") + 1)
    if notices:
        attempt, status, error = notices[-1].groups()
        cause = f"{status.decode()} " if status else ""
        said = error.decode("utf-8", errors="replace").strip()[:150]
        tally.last_event = f"retrying: {cause}{said} (attempt {attempt.decode()})"
    return True


def _save(run_dir: str, tally: _Tally) -> None:
    with contextlib.suppress(OSError):  # a read-only run directory: metered again next time
        files.write_json_atomic(os.path.join(run_dir, METER_JSON), tally.model_dump(mode="json"))


def _codex_baseline(run_dir: str, thread: str) -> Counts:
    """The totals a resumed codex thread had reached: those of the latest earlier run of the
    task that left it (its raw running total, before its own baseline)."""
    here = _RUN_NAME.match(os.path.basename(run_dir))
    task_dir = os.path.dirname(run_dir)
    if here is None:
        return [0, 0, 0, 0]
    me = (int(here.group(1)), int(here.group(2)))
    earlier: list[tuple[tuple[int, int], str]] = []
    for entry in os.listdir(task_dir):
        m = _RUN_NAME.match(entry)
        if m and (key := (int(m.group(1)), int(m.group(2)))) < me:
            earlier.append((key, os.path.join(task_dir, entry)))
    for _, other in sorted(earlier, reverse=True):
        spec = files.read_json(os.path.join(other, files.RUN_JSON)) or {}
        if thread in (spec.get("session_id"), spec.get("resume_session"), _thread_of(other)):
            return _tally("codex", other, final=True).models.get("", [0, 0, 0, 0])
    return [0, 0, 0, 0]


def _thread_of(run_dir: str) -> str | None:
    with open(os.path.join(run_dir, files.OUTPUT_LOG), "rb") as handle:
        first = handle.readline(1 << 16)
    event = json_event(first)
    return str_or_none(event.get("thread_id")) if event else None


def spend(
    agent: AgentRef, run_dir: str, *, final: bool = False, resumed: str | None = None
) -> Spend:
    """What the run in ``run_dir`` has spent so far (``final``: the run has ended, so a last
    line without a newline counts). ``resumed``: the session the run continued."""
    if agent.kind not in _CONSUMERS:
        return Spend()
    tally = _tally(agent.kind, run_dir, final)
    if agent.kind == "codex" and resumed and tally.baseline is None and tally.models:
        try:
            tally.baseline = _codex_baseline(run_dir, resumed)
        except OSError:
            tally.baseline = [0, 0, 0, 0]
        with contextlib.suppress(OSError):
            files.write_json_atomic(
                os.path.join(run_dir, METER_JSON), tally.model_dump(mode="json")
            )
    models = tally.all_models()
    tokens = tally.reported_tokens
    if tokens is None and models:
        tokens = [sum(c[0] for c in models.values()), sum(c[1] for c in models.values())]
    found_in, found_out = tokens if tokens is not None else (None, None)
    turns = tally.turns  # 0: the agent never answered (a session that may not exist)
    # aider does not tell its edits apart; an agent that never answered ran no tools either
    tools = tally.tools if agent.kind != "aider" and (tally.turns or tally.tools) else None
    by_events = agent.kind in RENDERERS or agent.kind == "aider"
    events = (tally.event_end, tally.last_event) if by_events else (None, None)
    cost: float | None
    if tally.reported_usd is not None:
        cost, estimated = round(tally.reported_usd, 6), False
    else:
        cost = _priced(agent, models, cached_in_input=agent.kind in ("codex", "gemini"))
        estimated = cost is not None
    return Spend(found_in, found_out, cost, estimated, turns, tools, *events)


def _priced(agent: AgentRef, models: dict[str, Counts], *, cached_in_input: bool) -> float | None:
    """The estimated cost of ``models``' counts; None when any of them has no known price."""
    if not models:
        return None
    total = 0.0
    for model, (inp, out, cache_read, cache_write) in models.items():
        if not (inp or out or cache_read or cache_write):
            continue  # nothing to price, whatever the model
        price: Price | None
        if agent.pricing is not None:
            price = configured(agent.pricing)
        else:
            name = model or model_in(agent.args)
            price = price_of(name) if name else None
        if price is None:
            return None
        uncached = max(0, inp - cache_read) if cached_in_input else inp
        total += (
            uncached * price.input
            + out * price.output
            + cache_read * price.cache_read
            + cache_write * price.cache_write
        ) / 1_000_000
    return round(total, 9)
