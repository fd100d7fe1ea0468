"""What tokens cost, per model: the estimate behind a running agent's spend.

Some agents report a run's cost only in their final result and others never do, so a budget
can stop a run mid-stream only by pricing the tokens its output reports. Prices are USD
per million tokens, from the providers' public price lists (November 2026). They drift: an
Agent's ``spec.pricing`` overrides them for every model it uses, and a model missing here (and
from ``spec.pricing``) has no estimate, so only ``maxTokens`` limits it mid-run.

One table for every kind, keyed by model name (an agent may drive any provider's models);
which models a run's tokens went to is for the kind's plugin to say.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from reconciler.protocol import Pricing


@dataclass(frozen=True)
class Price:
    input: float  # uncached input
    output: float
    cache_read: float
    cache_write: float


def _p(input: float, output: float, cache_read: float, cache_write: float | None = None) -> Price:
    return Price(input, output, cache_read, input * 1.25 if cache_write is None else cache_write)


# Model id (without provider prefix, dots as dashes for Claude) → price. A model matches its
# id exactly or followed by a date, a context-size tag or a channel (see ``price_of``).
PRICES: dict[str, Price] = {
    # Anthropic (cache writes: the 5-minute rate)
    "claude-fable-5-1": _p(10, 50, 0.25),
    "claude-mythos-5-1": _p(10, 50, 0.25),
    "claude-fable-5": _p(10, 50, 1.0),
    "claude-mythos-5": _p(10, 50, 1.0),
    "claude-opus-5-5": _p(4, 20, 0.2),
    "claude-opus-5": _p(5, 25, 0.5),
    "claude-opus-4-8": _p(5, 25, 0.5),
    "claude-opus-4-7": _p(5, 25, 0.5),
    "claude-opus-4-6": _p(5, 25, 0.5),
    "claude-opus-4-5": _p(5, 25, 0.5),
    "claude-opus-4-1": _p(15, 75, 1.5),
    "claude-opus-4": _p(15, 75, 1.5),
    "claude-sonnet-5-5": _p(2, 10, 0.1),
    "claude-sonnet-5": _p(2, 10, 0.2),
    "claude-sonnet-4-6": _p(3, 15, 0.3),
    "claude-sonnet-4-5": _p(3, 15, 0.3),
    "claude-sonnet-4": _p(3, 15, 0.3),
    "claude-3-7-sonnet": _p(3, 15, 0.3),
    "claude-haiku-5-5": _p(0.1, 0.5, 0.01),
    "claude-haiku-4-5": _p(1, 5, 0.1),
    "claude-3-5-haiku": _p(0.8, 4, 0.08),
    # OpenAI (cached input is part of input; no cache writes)
    "gpt-5-3-codex": _p(1.75, 14, 0.175, 0),
    "gpt-5-2-codex": _p(1.75, 14, 0.175, 0),
    "gpt-5-2": _p(1.75, 14, 0.175, 0),
    "gpt-5-1-codex-max": _p(1.25, 10, 0.125, 0),
    "gpt-5-1-codex-mini": _p(0.25, 2, 0.025, 0),
    "gpt-5-1-codex": _p(1.25, 10, 0.125, 0),
    "gpt-5-1": _p(1.25, 10, 0.125, 0),
    "gpt-5-codex": _p(1.25, 10, 0.125, 0),
    "gpt-5-mini": _p(0.25, 2, 0.025, 0),
    "gpt-5-nano": _p(0.05, 0.4, 0.005, 0),
    "gpt-5": _p(1.25, 10, 0.125, 0),
    # Google (prompts up to 200k tokens)
    "gemini-3-pro": _p(2, 12, 0.2, 0),
    "gemini-2-5-pro": _p(1.25, 10, 0.125, 0),
    "gemini-2-5-flash-lite": _p(0.1, 0.4, 0.01, 0),
    "gemini-2-5-flash": _p(0.3, 2.5, 0.03, 0),
}

# What may follow a known id: a date (-20250929, -2025-08-07), a context tag ([1m]), a Vertex
# version (@20250929) or a channel (-preview, -latest, -exp, with anything after it).
_SUFFIX = re.compile(r"(?:-\d{4}-?\d{2}-?\d{2}|\[[^\]]*\]|@.*|-(?:preview|latest|exp)\b.*)*$")


def normalize(model: str) -> str:
    """``anthropic/claude-opus-4.5`` → ``claude-opus-4-5``: no provider, dots as dashes."""
    return model.strip().rsplit("/", 1)[-1].lower().replace(".", "-")


def price_of(model: str) -> Price | None:
    """The built-in price of ``model``; None for a model this table does not know."""
    name = normalize(model)
    found = PRICES.get(name)
    if found is not None:
        return found
    for known in sorted(PRICES, key=len, reverse=True):
        if name.startswith(known) and _SUFFIX.fullmatch(name, len(known)):
            return PRICES[known]
    return None


def configured(pricing: Pricing) -> Price:
    """An Agent's ``spec.pricing``: cache reads default to a tenth of input, writes to 1.25x."""
    return Price(
        pricing.input,
        pricing.output,
        pricing.input * 0.1 if pricing.cache_read is None else pricing.cache_read,
        pricing.input * 1.25 if pricing.cache_write is None else pricing.cache_write,
    )


def model_in(args: list[str]) -> str | None:
    """The model an agent's arguments choose: ``--model X``, ``--model=X`` or ``-m X``."""
    for i, arg in enumerate(args):
        if arg == "--":
            break
        if arg.startswith("--model="):
            return arg.split("=", 1)[1] or None
        if arg in ("--model", "-m") and i + 1 < len(args):
            return args[i + 1]
    return None
