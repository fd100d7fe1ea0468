"""Agent output as lines a person reads: turns, tool calls, results.

``reconciler logs`` shows a run's output through ``render_line`` (``--raw`` shows it as is).
The agent's plugin says what one line of its output becomes: each JSON event of an event stream
at most one short line (events with nothing to say are dropped, anything that is not a JSON
event is shown unchanged); a plain transcript as it is.

Generic: names no agent kind.
"""

from __future__ import annotations

from reconciler.node.agents import ADAPTERS


def render_line(kind: str, line: str) -> list[str]:
    """What to show for one line of a ``kind`` agent's output (possibly nothing)."""
    plugin = ADAPTERS.get(kind)
    return [line] if plugin is None else plugin.render(line)
