"""Lanes are asked at once: a pass over many hosts waits for about one round trip, not one per
few lanes."""

from __future__ import annotations

import threading
from pathlib import Path

from reconciler.lanes import InProcessTransport, LaneClient
from reconciler.manifests.models import ConfigSpec, Desired, LaneSpec
from reconciler.observe import observe
from reconciler.protocol import Batch, BatchResult
from reconciler.state import Store

HOSTS = 24  # more than the 8 lanes that used to be asked at a time


class Meeting(InProcessTransport):
    """Answers once every lane's batch is under way at the same moment, as hosts far away
    would all be waited for together."""

    def __init__(self, barrier: threading.Barrier) -> None:
        self.barrier = barrier

    def exchange(self, batch: Batch) -> BatchResult:
        self.barrier.wait(timeout=20)  # broken (and raising) unless all are under way
        return super().exchange(batch)


def test_every_lane_of_a_fleet_is_asked_at_the_same_time(tmp_path: Path) -> None:
    barrier = threading.Barrier(HOSTS)
    lanes, clients = {}, {}
    for i in range(HOSTS):
        name = f"host{i:02d}"
        lanes[name] = LaneSpec.model_validate(
            {
                "workspaceRoot": str(tmp_path / name),
                "repos": [{"name": "app", "checkout": str(tmp_path / name / "app")}],
            }
        )
        clients[name] = LaneClient(name, lanes[name], transport=Meeting(barrier))
    desired = Desired(revision="r1", config=ConfigSpec(), lanes=lanes, agents={}, tasks={})
    with Store.open_readonly(tmp_path / "state") as store:
        seen = observe(desired, store, clients, clock=lambda: 1000.0)
    assert sorted(seen.lanes) == sorted(lanes)
    assert all(view.reachable for view in seen.lanes.values())
    assert not barrier.broken
