"""Durations as operators write them: ``90``, ``30s``, ``5m``, ``1h30m``, ``2d``. Pure."""

from __future__ import annotations

import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_WHOLE = re.compile(r"^(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+$")


def parse_duration(value: object) -> float:
    """Seconds from an int/float (seconds) or a string such as ``1h30m``; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 5m or 1h, not a boolean")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            return float(text)
        if _WHOLE.match(text):
            return sum(float(n) * _UNITS[u] for n, u in _PART.findall(text))
    raise ValueError(f"{value!r} is not a duration; write it like 30s, 5m, 1h30m or 2d")


def format_duration(seconds: float) -> str:
    """Short human form: ``45s``, ``5m``, ``1h5m``."""
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        m, r = divmod(s, 60)
        return f"{m}m{r}s" if r else f"{m}m"
    h, r = divmod(s, 3600)
    m = r // 60
    return f"{h}h{m}m" if m else f"{h}h"
