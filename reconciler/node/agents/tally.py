"""A run's tally: what its output has shown it spent and did so far, kept beside the output in
``meter.json`` (the node's file, not the agent's), and the reading that grows it pass by pass.

A pass reads only what the agent wrote since the last one: the reading position and the sums
are kept between passes, so metering a long run costs the new bytes, not the whole log, and no
usage is lost to a read window.

Each agent plugin that meters its output has a ``Tally`` subclass: the fields of its own reading
state (persisted with the common ones) and how new bytes change the sums (``consume``).
``EventTally`` is the base of agents that write one JSON event per line: a plugin says how one
event counts (``feed``), which events are retry notices (``retry``: what the run is on, but not
progress) and what ``reconciler logs`` shows for an event (``shown``; an event it shows is the
agent's own, and where the last one ends is the run's progress).

Generic: knows no agent kind by name and prices nothing (``meter.py`` does).
"""

from __future__ import annotations

import contextlib
import os
from abc import abstractmethod
from typing import ClassVar, TypeVar

from pydantic import BaseModel, Field, ValidationError

from reconciler.node import files
from reconciler.node.agents.values import int_or_none, json_event

METER_JSON = "meter.json"
CHUNK = 4 << 20

Counts = list[int]  # [input, output, cache read, cache write]


def no_counts() -> Counts:
    return [0, 0, 0, 0]


def add(a: Counts, b: Counts) -> Counts:
    return [x + y for x, y in zip(a, b, strict=True)]


def counts_in(found: object, *names: str) -> Counts:
    """The counts named ``names`` in a usage object (0 for each one missing)."""
    data = found if isinstance(found, dict) else {}
    return [int_or_none(data.get(n)) or 0 for n in names]


class Tally(BaseModel):
    """What ``meter.json`` keeps between passes. A subclass sets ``kind`` to its agent's kind
    (a tally of another kind, or of a shape no longer read, is read again from the start)."""

    kind: str = ""
    offset: int = 0  # how far the output has been consumed
    models: dict[str, Counts] = Field(default_factory=dict)  # "" = the model is not named
    reported_usd: float | None = None  # the cost the agent itself reported
    reported_tokens: list[int] | None = None  # [input, output] the agent itself reported
    turns: int = 0  # model responses so far
    tools: int = 0  # tool calls so far
    event_end: int = 0  # where the agent's last own event ends in its output
    last_event: str | None = None  # that event, as `reconciler logs` shows it

    # What the kind's figures mean.
    cached_in_input: ClassVar[bool] = False  # its input counts include cache reads
    counts_tools: ClassVar[bool] = True  # its output tells tool calls apart

    @abstractmethod
    def consume(self, data: bytes, final: bool) -> int:
        """Count what ``data`` (the output from ``offset`` on) says; return the bytes consumed
        (the rest is read again, with what follows, next time). ``final``: the run has ended,
        so an unfinished last line counts."""

    def read_more(self, run_dir: str, progressed: bool) -> bool:
        """Read what else the run wrote that says what it is on (after its output was read;
        ``progressed``: the agent's own events moved on this pass); whether anything changed."""
        return False

    def per_model(self) -> dict[str, Counts]:
        """The counts to price, per model."""
        return {model: list(counts) for model, counts in self.models.items()}

    def resume(self, run_dir: str, session: str) -> bool:
        """Take into account that the run continued ``session`` (an agent whose figures carry
        on from the run that left it); whether anything changed."""
        return False


class EventTally(Tally):
    """The tally of an agent that writes one JSON event per line."""

    @abstractmethod
    def feed(self, event: dict[str, object]) -> None:
        """Count one event."""

    def retry(self, event: dict[str, object]) -> str | None:
        """``retrying: …`` when ``event`` announces a retry of a failing model call."""
        return None

    @abstractmethod
    def shown(self, event: dict[str, object]) -> list[str]:
        """What `reconciler logs` shows for ``event`` (nothing: not one of the agent's own)."""

    def consume(self, data: bytes, final: bool) -> int:
        """Feed the whole lines of ``data``. Each JSON event is parsed once, for its spend and
        for progress: the last line that is one of the agent's own events."""
        end = len(data) if final else data.rfind(b"\n") + 1
        at = self.offset
        for raw in data[:end].split(b"\n"):
            at += len(raw) + 1
            event = json_event(raw) if raw else None
            if event is None:
                continue  # noise, heartbeats, a cut line: neither spend nor progress
            self.feed(event)
            waiting = self.retry(event)
            if waiting is not None:
                # An agent waiting on its model API announces each retry; that is not progress
                # (a bad key or an unreachable provider would otherwise never stall), but it is
                # what the run is stuck on.
                self.last_event = waiting[:200]
                continue
            shown = self.shown(event)
            if shown:
                self.event_end, self.last_event = min(at, self.offset + end), shown[0].strip()[:200]
        return end


T = TypeVar("T", bound=Tally)


def read(model: type[T], run_dir: str, final: bool) -> T:
    """The tally of the run in ``run_dir``, advanced over what it wrote since the last pass and
    saved when it moved."""
    tally = _load(model, os.path.join(run_dir, METER_JSON))
    progress = tally.event_end
    tally, moved = _read_output(tally, os.path.join(run_dir, files.OUTPUT_LOG), final)
    moved = tally.read_more(run_dir, tally.event_end != progress) or moved
    if moved:
        save(run_dir, tally)
    return tally


def save(run_dir: str, tally: Tally) -> None:
    with contextlib.suppress(OSError):  # a read-only run directory: metered again next time
        files.write_json_atomic(os.path.join(run_dir, METER_JSON), tally.model_dump(mode="json"))


def _load(model: type[T], path: str) -> T:
    data = files.read_json(path)
    if data is not None:
        try:
            return model.model_validate(data)
        except ValidationError:
            pass  # another kind's, from another version, or damaged: read the output again
    return model()


def _read_output(tally: T, output: str, final: bool) -> tuple[T, bool]:
    """``tally`` advanced over what ``output`` gained, and whether it moved."""
    try:
        with open(output, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size < tally.offset:  # the output was replaced: start over
                tally = type(tally)()
            start = tally.offset
            handle.seek(start)
            pending = b""
            while handle.tell() < size:
                data = pending + handle.read(CHUNK)
                at_end = handle.tell() >= size
                used = tally.consume(data, final and at_end)
                pending = data[used:]
                if len(pending) > 4 * CHUNK:  # a line that never ends is nobody's event
                    used, pending = len(data), b""
                tally.offset += used
            return tally, tally.offset != start
    except OSError:
        return tally, False
