"""Where a running agent's last real event is in its output, and what it has spent so far.

An agent that only prints heartbeats (or noise) is not making progress even though its output
grows: for agents with an event stream (claude, codex, gemini), progress is the end offset of the
last line that is one of the agent's own events (one ``render`` has something to say about), read
from the last MiB of the output. The control plane notes when that offset last moved and judges
stalls by it. Tokens so far let a budget stop a run mid-stream.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from reconciler.node.agents.render import RENDERERS
from reconciler.node.agents.values import int_or_none

WINDOW = 1 << 20


@dataclass(frozen=True)
class Progress:
    offset: int | None = None  # end of the agent's last own event in its output
    tokens: int | None = None  # what its events report spending so far
    last: str | None = None  # that event, as `reconciler logs` shows it


def progress(kind: str, path: str) -> Progress:
    """Where a running agent is, read from its output (empty for agents without events).

    The last event is found scanning back from the end, so a pass pays for the lines after it,
    not for the whole window. With no event in the window (e.g. a MiB of heartbeats) the offset
    is 0: it stays put, and the stall clock keeps running from the last event seen.
    """
    renderer = RENDERERS.get(kind)
    if renderer is None:
        return Progress()
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            start = max(0, size - WINDOW)
            handle.seek(start)
            data = handle.read(size - start)
    except OSError:
        return Progress()
    lines = data.split(b"\n")[:-1]  # whole lines only: the last piece is still being written
    end = start + sum(len(line) + 1 for line in lines)
    last, shown = 0, None
    for raw in reversed(lines):
        event = _event(raw)
        shown_lines = renderer(event) if event is not None else []
        if shown_lines:
            last, shown = end, shown_lines[0].strip()[:200]
            break
        end -= len(raw) + 1
    return Progress(last, _spent(kind, lines), shown)


def _event(raw: bytes) -> dict[str, object] | None:
    line = raw.strip()
    if not line.startswith(b"{"):
        return None
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


def _spent(kind: str, lines: list[bytes]) -> int | None:
    """Tokens so far: codex's last running total; claude's per-message usage, summed. Only
    lines that can carry usage are parsed."""
    if kind == "codex":
        for raw in reversed(lines):
            if b"turn.completed" in raw and (event := _event(raw)) is not None:
                spent = _tokens(kind, event)
                if spent is not None:
                    return spent
        return None
    if kind == "claude":
        found = [
            _tokens(kind, event)
            for raw in lines
            if b'"usage"' in raw and b"assistant" in raw and (event := _event(raw)) is not None
        ]
        counted = [n for n in found if n is not None]
        return sum(counted) if counted else None
    return None


def _tokens(kind: str, event: dict[str, object]) -> int | None:
    """Tokens an event reports: claude per assistant message, codex as a running total."""
    if kind == "claude" and event.get("type") == "assistant":
        message = event.get("message")
        usage = message.get("usage") if isinstance(message, dict) else None
        if isinstance(usage, dict):
            return (int_or_none(usage.get("input_tokens")) or 0) + (
                int_or_none(usage.get("output_tokens")) or 0
            )
    if kind == "codex" and event.get("type") == "turn.completed":
        usage = event.get("usage")
        if isinstance(usage, dict):
            return (int_or_none(usage.get("input_tokens")) or 0) + (
                int_or_none(usage.get("output_tokens")) or 0
            )
    return None
