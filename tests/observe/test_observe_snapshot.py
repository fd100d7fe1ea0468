"""Observe reads state in one snapshot: the serial a plan carries is the serial of the records
it was made from, whatever is committed while the lanes answer."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from reconciler.lanes import LaneClient
from reconciler.manifests.models import ConfigSpec, Desired, LaneSpec
from reconciler.observe import observe
from reconciler.protocol import Failure, Request, Response
from reconciler.state import Store

SPEC = LaneSpec.model_validate(
    {"maxConcurrency": 1, "repos": [{"name": "app", "checkout": "~/app"}]}
)


class CommittingLane(LaneClient):
    """A lane that, while it is being asked, lets another writer commit (an ``apply``)."""

    def __init__(self, writer: Store) -> None:
        super().__init__("web", SPEC, transport=None)
        self.writer = writer
        self.calls = 0

    def call(self, requests: Sequence[Request]) -> list[Response]:
        self.calls += 1
        with self.writer.transaction() as tx:
            tx.add_event(None, "note", "an apply committed while the lanes answered")
        down = Failure(error="lane down for the test", temporary=True)
        return [Response(ok=False, failure=down) for _ in requests]


def test_the_serial_is_read_with_the_records_not_after_the_lanes(tmp_path: Path) -> None:
    writer = Store.open(tmp_path)
    reader = Store.open_readonly(tmp_path)
    desired = Desired(revision="r1", config=ConfigSpec(), lanes={"web": SPEC}, agents={}, tasks={})
    before = reader.serial()
    lane = CommittingLane(writer)
    observed = observe(desired, reader, {"web": lane}, clock=lambda: 1000.0)
    assert lane.calls == 1
    assert reader.serial() == before + 1  # the apply did commit meanwhile
    assert observed.serial == before  # a plan saved from this is stale: apply FILE refuses it
