"""``GET /api/v1/stream``: server-sent events, what the dashboard listens to instead of polling.

Each stream gets ``event: event`` for every new event in the state (its ``id:`` is the event's,
so a client that reconnects with ``Last-Event-ID`` misses nothing), and ``event: changed`` when
the state changed or a pass ended: the moment to fetch what it shows again. One ``Pulse`` reads
what changed for every stream, at most every ``TICK`` seconds, through a read-only connection;
streams only compare numbers, so a thousand of them cost the state what one does. A stream that
stops reading holds only its own connection; at most ``STREAMS`` are open at once.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import StreamingResponse

from reconciler.redact import redact
from reconciler.report import EventReport
from reconciler.web.views import Views

TICK = 0.2  # seconds between looks at the state: an update reaches the page within about this
PING = 15.0  # seconds between comments that keep proxies from closing an idle stream
STREAMS = 32  # open at once; more are answered 503
BATCH = 200  # events read per look


@dataclass(frozen=True)
class Beat:
    serial: int  # the state's change counter
    event: int  # the newest event's id
    generation: int  # passes ended (the views' generation)


class Pulse:
    """What changed, shared by every stream: read at most every ``tick`` seconds."""

    def __init__(
        self,
        views: Views,
        *,
        follow_state: bool,
        tick: float = TICK,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.views = views
        # ``serve``: another process (``run``) writes the state, and a change of it is the only
        # news that the view is stale. Under ``run --listen`` the loop says so when a pass ends:
        # the writes during a pass must not make viewers observe the lanes again and again.
        self.follow_state = follow_state
        self.tick = tick
        self.clock = clock
        self._lock = threading.Lock()
        self._beat: Beat | None = None
        self._at = 0.0
        self.streams = 0

    def read(self) -> Beat:
        with self._lock:
            if self._beat is not None and self.clock() - self._at < self.tick:
                return self._beat
            with self.views.engine.reading() as store:
                serial, event = store.serial(), store.last_event_id()
            if self.follow_state and self._beat is not None and serial != self._beat.serial:
                self.views.invalidate()
            self._beat = Beat(serial, event, self.views.generation)
            self._at = self.clock()
            return self._beat

    def events(self, after: int) -> list[EventReport]:
        with self.views.engine.reading() as store:
            return [EventReport.of(e) for e in store.events_after(None, after, BATCH)]


def _message(kind: str, data: object, secrets: tuple[str, ...], ident: int | None = None) -> str:
    text = redact(json.dumps(data, ensure_ascii=False, separators=(",", ":")), secrets)
    head = f"id: {ident}\n" if ident is not None else ""
    return f"{head}event: {kind}\ndata: {text}\n\n"


def stream_response(
    pulse: Pulse, request: Request, secrets: tuple[str, ...]
) -> StreamingResponse | None:
    """The stream for ``request``, or None when ``STREAMS`` are open already."""
    if pulse.streams >= STREAMS:
        return None
    last = request.headers.get("last-event-id", "")
    resume = int(last) if last.isdigit() else None

    async def beats() -> AsyncIterator[str]:
        pulse.streams += 1
        try:
            beat = await run_in_threadpool(pulse.read)
            cursor = beat.event if resume is None else resume
            hello = {"serial": beat.serial, "event": beat.event, "generation": beat.generation}
            yield "retry: 2000\n" + _message("hello", hello, secrets)
            pinged = time.monotonic()
            while True:
                await asyncio.sleep(pulse.tick)
                now = await run_in_threadpool(pulse.read)
                while now.event > cursor:
                    batch = await run_in_threadpool(pulse.events, cursor)
                    if not batch:
                        cursor = now.event  # pruned meanwhile
                    for event in batch:
                        cursor = event.id
                        yield _message("event", event.to_json(), secrets, event.id)
                if (now.serial, now.generation) != (beat.serial, beat.generation):
                    changed = {"serial": now.serial, "generation": now.generation}
                    yield _message("changed", changed, secrets)
                    beat = now
                elif time.monotonic() - pinged > PING:
                    yield ": ping\n\n"
                    pinged = time.monotonic()
        finally:
            pulse.streams -= 1

    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(beats(), media_type="text/event-stream", headers=headers)
