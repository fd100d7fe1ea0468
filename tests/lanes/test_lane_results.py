"""The lane client refuses to read an answer as another operation's result."""

from __future__ import annotations

import pytest

from reconciler.lanes import LaneClient
from reconciler.manifests.models import LaneSpec
from reconciler.protocol import ObserveRequest, PushResult

SPEC = LaneSpec.model_validate({"repos": [{"name": "app", "checkout": "~/app"}]})


def test_a_caller_pairing_a_request_with_another_result_is_a_bug() -> None:
    lane = LaneClient("web", SPEC, transport=object())  # type: ignore[arg-type]  # never reached
    with pytest.raises(TypeError, match="observe answers ObserveResult, not PushResult"):
        lane.one(ObserveRequest(lane=lane.ref, branch_prefix="agent/"), PushResult)
