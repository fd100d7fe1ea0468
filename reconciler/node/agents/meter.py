"""What a run has spent so far, read from its output as it grows.

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
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass, field

from reconciler.node import files
from reconciler.node.agents.aider import COST, TOKENS, count
from reconciler.node.agents.gemini import tokens_of as gemini_tokens
from reconciler.node.agents.pricing import Price, configured, model_in, price_of
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

    @property
    def tokens(self) -> int | None:
        if self.input_tokens is None and self.output_tokens is None:
            return None
        return (self.input_tokens or 0) + (self.output_tokens or 0)


@dataclass
class _Tally:
    kind: str
    offset: int = 0
    models: dict[str, Counts] = field(default_factory=dict)  # "" = the model is not named
    message: tuple[str, str, Counts] | None = None  # claude: the message still streaming
    model: str = ""  # gemini: the init event's model
    reported_usd: float | None = None
    reported_tokens: list[int] | None = None  # claude's final [input, output]
    baseline: Counts | None = None  # codex: the resumed thread's totals before this run

    def to_json(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "offset": self.offset,
            "models": self.models,
            "message": list(self.message) if self.message else None,
            "model": self.model,
            "reported_usd": self.reported_usd,
            "reported_tokens": self.reported_tokens,
            "baseline": self.baseline,
        }

    @classmethod
    def from_json(cls, data: dict[str, object] | None, kind: str) -> _Tally:
        if not data or data.get("kind") != kind:
            return cls(kind)
        try:
            message = data.get("message")
            models = data.get("models")
            baseline = data.get("baseline")
            return cls(
                kind=kind,
                offset=int(str(data.get("offset", 0))),
                models={str(k): _counts(v) for k, v in (models or {}).items()}
                if isinstance(models, dict)
                else {},
                message=(str(message[0]), str(message[1]), _counts(message[2]))
                if isinstance(message, list) and len(message) == 3
                else None,
                model=str(data.get("model") or ""),
                reported_usd=float_or_none(data.get("reported_usd")),
                reported_tokens=_pair(data.get("reported_tokens")),
                baseline=_counts(baseline) if isinstance(baseline, list) else None,
            )
        except (TypeError, ValueError):
            return cls(kind)

    def all_models(self) -> dict[str, Counts]:
        counts = {m: list(c) for m, c in self.models.items()}
        if self.message is not None:
            _, model, pending = self.message
            counts[model] = _add(counts.get(model, [0, 0, 0, 0]), pending)
        if self.baseline is not None and self.kind == "codex":
            total = counts.get("", [0, 0, 0, 0])
            counts[""] = [max(0, a - b) for a, b in zip(total, self.baseline, strict=True)]
        return counts


def _counts(value: object) -> Counts:
    if not isinstance(value, list) or len(value) != 4:
        raise ValueError("counts")
    return [int(v) for v in value]


def _pair(value: object) -> list[int] | None:
    if isinstance(value, list) and len(value) == 2:
        return [int(value[0]), int(value[1])]
    return None


def _add(a: Counts, b: Counts) -> Counts:
    return [x + y for x, y in zip(a, b, strict=True)]


def _usage(usage: object, *names: str) -> Counts:
    data = usage if isinstance(usage, dict) else {}
    return [int_or_none(data.get(n)) or 0 for n in names]


# ---------------------------------------------------------------------------------- feeding


def _feed_claude(tally: _Tally, raw: bytes) -> None:
    if b'"usage"' not in raw and b'"result"' not in raw:
        return
    event = json_event(raw)
    if event is None:
        return
    if event.get("type") == "assistant":
        message = event.get("message")
        if not isinstance(message, dict) or not isinstance(message.get("usage"), dict):
            return
        counts = _usage(
            message["usage"],
            "input_tokens",
            "output_tokens",
            "cache_read_input_tokens",
            "cache_creation_input_tokens",
        )
        ident = str_or_none(message.get("id")) or ""
        model = str_or_none(message.get("model")) or ""
        if tally.message is not None and ident and tally.message[0] == ident:
            tally.message = (ident, model, counts)  # the same message again: its latest usage
            return
        if tally.message is not None:
            _, was_model, was = tally.message
            tally.models[was_model] = _add(tally.models.get(was_model, [0, 0, 0, 0]), was)
        tally.message = (ident, model, counts)
    elif event.get("type") == "result":
        tally.reported_usd = float_or_none(event.get("total_cost_usd"))
        usage = event.get("usage")
        if isinstance(usage, dict):
            tally.reported_tokens = _usage(usage, "input_tokens", "output_tokens")


def _feed_codex(tally: _Tally, raw: bytes) -> None:
    if b"turn.completed" not in raw:
        return
    event = json_event(raw)
    if event is not None and event.get("type") == "turn.completed":
        tally.models[""] = _usage(
            event.get("usage"), "input_tokens", "output_tokens", "cached_input_tokens", "_"
        )


def _feed_gemini(tally: _Tally, raw: bytes) -> None:
    if b'"init"' not in raw and b'"result"' not in raw:
        return
    event = json_event(raw)
    if event is None:
        return
    if event.get("type") == "init":
        tally.model = str_or_none(event.get("model")) or tally.model
    elif event.get("type") == "result":
        stats = event.get("stats")
        found_in, found_out = gemini_tokens(stats if isinstance(stats, dict) else {})
        if found_in is not None or found_out is not None:
            tally.models = {tally.model: [found_in or 0, found_out or 0, 0, 0]}


def _consume_lines(tally: _Tally, data: bytes, final: bool) -> int:
    """Feed the whole lines of ``data``; return the bytes consumed."""
    end = len(data) if final else data.rfind(b"\n") + 1
    feed = {"claude": _feed_claude, "codex": _feed_codex, "gemini": _feed_gemini}[tally.kind]
    for raw in data[:end].split(b"\n"):
        if raw:
            feed(tally, raw)
    return end


def _consume_aider(tally: _Tally, data: bytes, final: bool) -> int:
    """Aider's reports may wrap over lines: consume up to the end of the last whole report (or,
    with none, all but the last KiB, where one may be starting)."""
    text = data.decode("utf-8", errors="surrogateescape")  # offsets map back to bytes exactly
    end_char = 0
    for m in TOKENS.finditer(text):
        counts = [count(m.group(1)), count(m.group(4)), 0, 0]
        tally.models[""] = _add(tally.models.get("", [0, 0, 0, 0]), counts)
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
                tally = _Tally(tally.kind)
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
            return tally, tally.offset != start
    except OSError:
        return tally, False


def _tally(kind: str, run_dir: str, final: bool) -> _Tally:
    path = os.path.join(run_dir, METER_JSON)
    tally, moved = _read(
        _Tally.from_json(files.read_json(path), kind),
        os.path.join(run_dir, files.OUTPUT_LOG),
        final,
    )
    if moved:
        with contextlib.suppress(OSError):  # a read-only run directory: metered again next time
            files.write_json_atomic(path, tally.to_json())
    return tally


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
            files.write_json_atomic(os.path.join(run_dir, METER_JSON), tally.to_json())
    models = tally.all_models()
    tokens = tally.reported_tokens
    if tokens is None and models:
        tokens = [sum(c[0] for c in models.values()), sum(c[1] for c in models.values())]
    found_in, found_out = tokens if tokens is not None else (None, None)
    if tally.reported_usd is not None:
        return Spend(found_in, found_out, round(tally.reported_usd, 6))
    cost = _priced(agent, models, cached_in_input=agent.kind == "codex")
    return Spend(found_in, found_out, cost, estimated=cost is not None)


def _priced(agent: AgentRef, models: dict[str, Counts], *, cached_in_input: bool) -> float | None:
    """The estimated cost of ``models``' counts; None when any of them has no known price."""
    if not models:
        return None
    total = 0.0
    for model, (inp, out, cache_read, cache_write) in models.items():
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
