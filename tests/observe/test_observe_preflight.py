"""A pre-flight that passed stands for the passes of the next PREFLIGHT_FRESH seconds; one that
failed is asked again every pass, so a fix is seen at once."""

from __future__ import annotations

from pathlib import Path

from reconciler.lanes import PREFLIGHT_FRESH, InProcessTransport, LaneClient
from reconciler.manifests.models import ConfigSpec, Desired, LaneSpec
from reconciler.observe import observe
from reconciler.protocol import Batch, BatchResult
from reconciler.state import Store
from tests.support.git import git


class Counting(InProcessTransport):
    def __init__(self) -> None:
        self.preflights = 0

    def exchange(self, batch: Batch) -> BatchResult:
        self.preflights += sum(1 for r in batch.requests if r.op == "preflight")
        return super().exchange(batch)


def test_a_passed_preflight_is_asked_again_only_once_stale(tmp_path: Path) -> None:
    checkout = tmp_path / "home" / "app"
    spec = LaneSpec.model_validate(
        {
            "maxConcurrency": 1,
            "workspaceRoot": "~/worktrees",
            "repos": [{"name": "app", "checkout": str(checkout)}],
        }
    )
    desired = Desired(revision="r1", config=ConfigSpec(), lanes={"web": spec}, agents={}, tasks={})
    transport = Counting()
    client = LaneClient("web", spec, transport=transport)

    def failed_checks(now: float) -> list[str]:
        with Store.open_readonly(tmp_path / "state") as store:
            view = observe(desired, store, {"web": client}, clock=lambda: now).lanes["web"]
        return [c.name for c in view.preflight if not c.ok and not c.advisory]

    assert "checkout" in failed_checks(1000.0)  # no repository yet: failed, not kept
    assert failed_checks(1001.0) and transport.preflights == 2
    remote = tmp_path / "remote.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(remote))
    git(tmp_path, "clone", "-q", str(remote), str(checkout))
    git(checkout, "commit", "-q", "--allow-empty", "-m", "first")
    git(checkout, "push", "-q", "origin", "main")
    assert failed_checks(1002.0) == []  # the fix is seen at the next pass
    assert failed_checks(1003.0) == [] and transport.preflights == 3  # passed: kept
    assert failed_checks(1002.0 + PREFLIGHT_FRESH) == [] and transport.preflights == 4
