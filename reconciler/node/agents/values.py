"""Reading agent output: typed values out of parsed JSON, the final text's size limit, and the
pieces of a readable line that every renderer of events uses.

Shared by the agent plugins that read JSON event streams; names no agent kind.
"""

from __future__ import annotations

import json
from collections.abc import Callable

FINAL_TEXT_LIMIT = 64 * 1024


def clip(text: str) -> str:
    """The last 64 KiB (in UTF-8 bytes) of ``text``."""
    data = text.encode("utf-8", errors="replace")
    if len(data) <= FINAL_TEXT_LIMIT:
        return text
    return data[-FINAL_TEXT_LIMIT:].decode("utf-8", errors="replace")


def int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def float_or_none(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def as_dict(value: object) -> dict[str, object]:
    return value if isinstance(value, dict) else {}


def as_list(value: object) -> list[object]:
    return value if isinstance(value, list) else []


def json_event(raw: bytes) -> dict[str, object] | None:
    """The JSON object on one line of output; None for anything else (noise, a cut line)."""
    line = raw.strip()
    if not line.startswith(b"{"):
        return None
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


ERROR_LIMIT = 300


def one_line(text: str | None) -> str | None:
    """An agent's error message as one line of at most ERROR_LIMIT characters (None: none)."""
    if not text or not text.strip():
        return None
    line = " ".join(text.split())
    return line if len(line) <= ERROR_LIMIT else line[: ERROR_LIMIT - 1] + "…"


# ------------------------------------------------------------------ as `reconciler logs` shows

WIDTH = 160


def short(text: str, width: int = WIDTH) -> str:
    """``text`` on one line of at most ``width`` characters."""
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"


def tool_input(value: object) -> str:
    """What a tool call works on, in a few words: its command, path, pattern, URL or query."""
    data = as_dict(value)
    for key in ("command", "file_path", "path", "pattern", "url", "query"):
        if isinstance(data.get(key), str):
            return str(data[key])
    return json.dumps(data, separators=(",", ":")) if data else ""


def render_json_line(line: str, render: Callable[[dict[str, object]], list[str]]) -> list[str]:
    """What to show for one line of an event stream: the event as ``render`` says it (possibly
    nothing); anything that is not a JSON event (a warning, a cut-off line) unchanged; a blank
    line not at all."""
    stripped = line.strip()
    if not stripped.startswith("{"):
        return [line] if stripped else []
    try:
        event = json.loads(stripped)
    except ValueError:
        return [line]
    if not isinstance(event, dict):
        return [line]
    return render(event)
