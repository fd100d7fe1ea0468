"""What a run has spent and done so far, read from its output as it grows.

The agent's plugin says how its output counts (its ``tally``, see ``tally.py``); this module
reads the run's tally and turns it into a ``Spend``. Spend is what the agent reports where it
reports it (a final result's cost, a transcript's session cost). Otherwise it is priced from
the tokens its output reports (``pricing.py``, or the Agent's ``spec.pricing``) and marked
estimated. Each kind's module says what its figures are and where they come from.

The same reading gives progress: the end of the agent's last own event (or transcript line). An
agent that only prints heartbeats (or noise) grows its output but not that offset; the control
plane notes when the offset last moved and judges stalls by it.

Generic: names no agent kind; what differs by kind is asked of the plugin.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from reconciler.node import files
from reconciler.node.agents import ADAPTERS
from reconciler.node.agents.pricing import Price, configured, model_in, price_of
from reconciler.node.agents.tally import METER_JSON, Counts, read, save
from reconciler.node.files import tail_bytes
from reconciler.protocol import AgentRef

__all__ = ["METER_JSON", "Spend", "spend"]


@dataclass(frozen=True)
class Spend:
    input_tokens: int | None = None  # as the agent counts them (some include cached input)
    output_tokens: int | None = None
    cost_usd: float | None = None
    estimated: bool = False  # priced from tokens: the agent reported no cost
    turns: int | None = None  # model responses so far
    tool_calls: int | None = None  # tools, commands and edits the agent ran so far
    # metered agents: where their last own event ends in the output (0: none yet; heartbeats
    # and noise do not move it, so stalls are judged by it), and what it was
    event_end: int | None = None
    last_event: str | None = None

    @property
    def tokens(self) -> int | None:
        if self.input_tokens is None and self.output_tokens is None:
            return None
        return (self.input_tokens or 0) + (self.output_tokens or 0)


def spend(
    agent: AgentRef, run_dir: str, *, final: bool = False, resumed: str | None = None
) -> Spend:
    """What the run in ``run_dir`` has spent so far (``final``: the run has ended, so a last
    line without a newline counts). ``resumed``: the session the run continued."""
    plugin = ADAPTERS.get(agent.kind)
    if plugin is None or plugin.tally is None:
        # an agent whose output says nothing about its spend: what it printed last is all
        return Spend(last_event=last_line(os.path.join(run_dir, files.OUTPUT_LOG)))
    tally = read(plugin.tally, run_dir, final)
    if resumed and tally.resume(run_dir, resumed):
        save(run_dir, tally)
    models = tally.per_model()
    tokens = tally.reported_tokens
    if tokens is None and models:
        tokens = [sum(c[0] for c in models.values()), sum(c[1] for c in models.values())]
    found_in, found_out = tokens if tokens is not None else (None, None)
    turns = tally.turns  # 0: the agent never answered (a session that may not exist)
    # an agent that never answered ran no tools either
    tools = tally.tools if tally.counts_tools and (tally.turns or tally.tools) else None
    cost: float | None
    if tally.reported_usd is not None:
        cost, estimated = round(tally.reported_usd, 6), False
    else:
        cost = _priced(agent, models, cached_in_input=tally.cached_in_input)
        estimated = cost is not None
    return Spend(
        found_in, found_out, cost, estimated, turns, tools, tally.event_end, tally.last_event
    )


LAST_LINE_WINDOW = 4096  # bytes of output's end read for its last line


def last_line(path: str) -> str | None:
    """The last line with something on it of the output at ``path`` (its first 200
    characters), or None."""
    for line in reversed(
        tail_bytes(path, LAST_LINE_WINDOW).decode("utf-8", "replace").splitlines()
    ):
        if line.strip():
            return line.strip()[:200]
    return None


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
