"""A lane's client outlives the pass: what it remembers (a pre-flight that passed) is not asked
again by every pass of `run`, which loads the manifests anew each time; a lane whose spec
changed gets a new client."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.engine import Context, Engine
from reconciler.lanes import InProcessTransport
from reconciler.protocol import Batch, BatchResult
from tests.integration.world import World


class Counting(InProcessTransport):
    preflights = 0

    def exchange(self, batch: Batch) -> BatchResult:
        Counting.preflights += sum(1 for r in batch.requests if r.op == "preflight")
        return super().exchange(batch)


def test_lane_clients_last_across_passes_and_revisions(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    import reconciler.lanes as lanes

    monkeypatch.setattr(Counting, "preflights", 0)  # counted over every lane's transport
    monkeypatch.setattr(lanes, "transport_for", lambda _n, _s, _p=None: Counting())
    world.lane("web")
    world.lane("api")
    world.task("idle", "web", "no-commit", paused=True)
    world.commit()
    engine = Engine(Context(control=str(world.control), state_dir=world.state))

    def one_pass() -> dict[str, lanes.LaneClient]:
        desired = engine.load()
        with engine.locked(None) as store:
            engine.apply(desired, store)
            return engine.lanes(desired)

    first = one_pass()
    assert Counting.preflights == 2  # one per lane
    again = one_pass()
    assert again["web"] is first["web"] and again["api"] is first["api"]
    assert Counting.preflights == 2  # passed a moment ago: not asked again

    world.lanes["api"]["maxConcurrency"] = 3
    world.commit("api gets a slot more")
    changed = one_pass()
    assert changed["web"] is first["web"]  # its spec is as it was
    assert changed["api"] is not first["api"]
    assert changed["api"].spec.max_concurrency == 3
    assert Counting.preflights == 3  # the new client asks its lane once


def test_a_new_state_identity_makes_new_clients(world: World, tmp_path: Path) -> None:
    world.lane("web")
    world.commit()
    engine = Engine(Context(control=str(world.control), state_dir=world.state))
    desired = engine.load()
    reader = engine.lanes(desired)["web"]
    with engine.locked(None):
        writer = engine.lanes(desired)["web"]
    assert writer is not reader and writer.claim and not reader.claim
