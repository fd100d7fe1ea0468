"""Reading agent output: typed values out of parsed JSON, and the final text's size limit.

Shared by the adapters that read JSON event streams (claude, codex, gemini).
"""

from __future__ import annotations

import json

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
