"""A lane another state directory owns is observed as unreachable, with the owner and the fix, so
nothing is planned for it; the lock holder's first batch claims a lane no state owns."""

from __future__ import annotations

from pathlib import Path

from reconciler.lanes import InProcessTransport, LaneClient
from reconciler.manifests.models import ConfigSpec, Desired, LaneSpec
from reconciler.observe import observe
from reconciler.protocol import StateRef
from reconciler.state import Store

SPEC = LaneSpec.model_validate(
    {
        "maxConcurrency": 1,
        "workspaceRoot": "~/worktrees",
        "repos": [{"name": "app", "checkout": "~/app"}],
    }
)
DESIRED = Desired(revision="r1", config=ConfigSpec(), lanes={"web": SPEC}, agents={}, tasks={})
RUN = StateRef(id="a" * 32, path="/srv/run-state", host="ctl-1", machine="m-1")
OTHER = StateRef(id="b" * 32, path="/tmp/other-state", host="ctl-1", machine="m-1")


def seen(tmp_path: Path, state: StateRef, *, claim: bool) -> tuple[bool, str | None]:
    client = LaneClient("web", SPEC, transport=InProcessTransport(), state=state, claim=claim)
    with Store.open_readonly(tmp_path / "state") as store:
        view = observe(DESIRED, store, {"web": client}, clock=lambda: 1000.0).lanes["web"]
    return view.reachable, view.error


def test_a_lane_of_another_state_is_unreachable_with_its_owner(tmp_path: Path) -> None:
    assert seen(tmp_path, OTHER, claim=False) == (True, None)  # nobody's yet: reading claims not
    assert not (tmp_path / "home" / "worktrees" / ".owner").exists()
    assert seen(tmp_path, RUN, claim=True) == (True, None)  # the lock holder claims it
    assert (tmp_path / "home" / "worktrees" / ".owner").exists()
    reachable, error = seen(tmp_path, OTHER, claim=True)
    assert not reachable and error is not None
    assert error.startswith("lane web belongs to the state directory /srv/run-state on ctl-1")
    assert "`reconciler apply --take-over web`" in error
    assert seen(tmp_path, RUN, claim=False) == (True, None)
