"""`run` tops up warm pools on a thread of its own: a pass never waits for a refill, a burst of
passes asks for one more fill (the newest plan's), and a stop does not wait for a slow one."""

from __future__ import annotations

import threading
from typing import Any

from reconciler.daemon import PoolFiller
from reconciler.plan import Plan
from reconciler.plan.model import PoolFill
from reconciler.protocol import FillPoolResult
from tests.support.waiting import wait_for


class SlowLane:
    """A lane whose fills wait until released; the bases each fill was asked for."""

    ref = None

    def __init__(self) -> None:
        self.release = threading.Event()
        self.asked: list[list[str]] = []

    def one(self, request: Any, _result: type[FillPoolResult]) -> FillPoolResult:
        self.asked.append(request.bases["app"])
        self.release.wait(30)
        return FillPoolResult()


def plan(base: str) -> Plan:
    return Plan(revision="r", serial=1, now=0.0, pools=(PoolFill("web", "app", base, 0, 1),))


def fills(lane: SlowLane) -> Any:
    return lambda: lane.asked


def test_passes_never_wait_for_a_fill_and_only_the_newest_waiting_one_runs(
    monkeypatch: Any,
) -> None:
    lane = SlowLane()
    monkeypatch.setattr("reconciler.apply.FillPoolRequest", lambda lane, bases: _Req(bases))
    filler = PoolFiller(lambda _m: None)
    try:
        filler.submit(plan("main"), {"web": lane})  # type: ignore[dict-item]
        wait_for(fills(lane), "the first fill to begin")
        # while it runs, two more passes end: submitting returns at once, and the older of the
        # two is replaced by the newer before it begins
        filler.submit(plan("old"), {"web": lane})  # type: ignore[dict-item]
        filler.submit(plan("new"), {"web": lane})  # type: ignore[dict-item]
        assert lane.asked == [["main"]]
        lane.release.set()
        assert filler.idle(30)
        assert lane.asked == [["main"], ["new"]]
    finally:
        filler.stop()


def test_a_stop_does_not_wait_for_a_slow_fill_beyond_its_bound(monkeypatch: Any) -> None:
    lane = SlowLane()
    monkeypatch.setattr("reconciler.apply.FillPoolRequest", lambda lane, bases: _Req(bases))
    filler = PoolFiller(lambda _m: None)
    filler.submit(plan("main"), {"web": lane})  # type: ignore[dict-item]
    wait_for(fills(lane), "the fill to begin")
    filler.stop(timeout=0.01)  # returns although the fill goes on
    assert not filler.idle(0.01)
    lane.release.set()
    assert filler.idle(30)


class _Req:
    def __init__(self, bases: dict[str, list[str]]) -> None:
        self.bases = bases
