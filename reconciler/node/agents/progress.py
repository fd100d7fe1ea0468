"""Where a running agent's last real event is in its output, and what it has spent so far.

An agent that only prints heartbeats (or noise) is not making progress even though its output
grows: for agents with an event stream (claude, codex, gemini), progress is the end offset of the
last line that is one of the agent's own events (one ``render`` has something to say about), read
from the last MiB of the output. The control plane notes when that offset last moved and judges
stalls by it. What the run has spent so far is the meter's (``meter.py``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from reconciler.node.agents.render import RENDERERS
from reconciler.node.agents.values import json_event

WINDOW = 1 << 20


@dataclass(frozen=True)
class Progress:
    offset: int | None = None  # end of the agent's last own event in its output
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
        event = json_event(raw)
        shown_lines = renderer(event) if event is not None else []
        if shown_lines:
            last, shown = end, shown_lines[0].strip()[:200]
            break
        end -= len(raw) + 1
    return Progress(last, shown)
