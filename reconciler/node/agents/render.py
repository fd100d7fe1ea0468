"""Agent event streams as lines a person reads: turns, tool calls, results.

``reconciler logs`` shows a run's output through ``render_line`` (``--raw`` shows it as is).
Each JSON event of claude's ``stream-json``, codex's ``exec --json`` and gemini's ``stream-json``
becomes at most one short line; events with nothing to say are dropped; anything that is not a
JSON event (warnings, a cut-off line) is shown unchanged. Other agents' output is shown as is.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from reconciler.node.agents.values import float_or_none, int_or_none, str_or_none

WIDTH = 160


def _short(text: str, width: int = WIDTH) -> str:
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"


def _dict(value: object) -> dict[str, object]:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[object]:
    return value if isinstance(value, list) else []


def _input(value: object) -> str:
    data = _dict(value)
    for key in ("command", "file_path", "path", "pattern", "url", "query"):
        if isinstance(data.get(key), str):
            return str(data[key])
    return json.dumps(data, separators=(",", ":")) if data else ""


def _claude(event: dict[str, object]) -> list[str]:
    kind = event.get("type")
    if kind == "system" and event.get("subtype") == "init":
        return [f"── session {event.get('session_id')} ({event.get('model') or 'model ?'})"]
    if kind == "assistant":
        out = []
        for item in map(_dict, _list(_dict(event.get("message")).get("content"))):
            if item.get("type") == "text" and str_or_none(item.get("text")):
                out.append(f"assistant: {_short(str(item['text']))}")
            elif item.get("type") == "tool_use":
                out.append(f"  tool {item.get('name')}: {_short(_input(item.get('input')), 120)}")
        return out
    if kind == "result":
        cost = float_or_none(event.get("total_cost_usd"))
        turns = int_or_none(event.get("num_turns"))
        error = " (is_error)" if event.get("is_error") is True else ""
        counted = [f"{turns} turns"] if turns is not None else []
        counted += [f"${cost:.4f}"] if cost is not None else []
        head = f"── result {event.get('subtype')}{error}" + (
            f": {', '.join(counted)}" if counted else ""
        )
        text = str_or_none(event.get("result"))
        return [head, *([_short(text)] if text else [])]
    return []


def _codex(event: dict[str, object]) -> list[str]:
    kind = event.get("type")
    if kind == "thread.started":
        return [f"── thread {event.get('thread_id')}"]
    if kind in ("item.completed", "item.started"):
        item = _dict(event.get("item"))
        what = item.get("type")
        if what == "agent_message" and kind == "item.completed":
            return [f"assistant: {_short(str(item.get('text') or ''))}"]
        if what == "command_execution":
            if kind == "item.started":
                return [f"  $ {_short(str(item.get('command') or ''), 120)}"]
            return [f"    exit {item.get('exit_code')}"]
        if what == "file_change" and kind == "item.completed":
            paths = [str(_dict(c).get("path")) for c in _list(item.get("changes"))]
            return [f"  edit {', '.join(paths)}"]
        return []
    if kind == "turn.completed":
        usage = _dict(event.get("usage"))
        return [f"── turn done: {usage.get('input_tokens')} in, {usage.get('output_tokens')} out"]
    if kind == "turn.failed":
        return [f"── turn failed: {_short(str(_dict(event.get('error')).get('message') or ''))}"]
    if kind == "error":
        return [f"error: {_short(str(event.get('message') or ''))}"]
    return []


def _gemini(event: dict[str, object]) -> list[str]:
    kind = event.get("type")
    if kind == "init":
        session = event.get("session_id") or event.get("sessionId")
        return [f"── session {session} ({event.get('model') or 'model ?'})"]
    if kind == "message" and event.get("role") == "assistant":
        text = str_or_none(event.get("content"))
        return [f"assistant: {_short(text)}"] if text and text.strip() else []
    if kind == "tool_use":
        name = event.get("tool_name") or event.get("name")
        return [f"  tool {name}: {_short(_input(event.get('parameters')), 120)}"]
    if kind == "tool_result":
        return [f"    {event.get('status')}"]
    if kind == "error":
        return [f"error: {_short(str(event.get('message') or ''))}"]
    if kind == "result":
        stats = _dict(event.get("stats"))
        return [f"── result {event.get('status')}: {stats.get('total_tokens')} tokens"]
    return []


RENDERERS: dict[str, Callable[[dict[str, object]], list[str]]] = {
    "claude": _claude,
    "codex": _codex,
    "gemini": _gemini,
}


def render_line(kind: str, line: str) -> list[str]:
    """What to show for one line of a ``kind`` agent's output (possibly nothing)."""
    renderer = RENDERERS.get(kind)
    stripped = line.strip()
    if renderer is None or not stripped.startswith("{"):
        return [line] if renderer is None or stripped else []
    try:
        event = json.loads(stripped)
    except ValueError:
        return [line]
    if not isinstance(event, dict):
        return [line]
    return renderer(event)
