"""`reconciler run` tells a webhook on 127.0.0.1 of real transitions: a task failing, a PR opening;
a restart sends nothing again and sends what changed while it was down."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.state import Store
from tests.integration.world import World
from tests.notify.receiver import Receiver, receiving
from tests.support.daemon_log import RunLog


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path).setup()
    yield w
    w.kill_agents()


@pytest.fixture
def rx() -> Iterator[Receiver]:
    with receiving() as receiver:
        yield receiver


def run(world: World) -> RunLog:
    argv = [sys.executable, "-m", "reconciler", "run", "--interval", "120s", "--log-format", "json"]
    daemon = RunLog(argv, world.env())
    daemon.wait_for(daemon.passes, "the first pass", timeout=30)
    return daemon


def told(rx: Receiver) -> list[tuple[str, str]]:
    return sorted((d["task"], d["transition"]) for d in rx.documents())


def events(world: World, kind: str) -> list[Any]:
    with Store.open_readonly(world.state) as store:
        return [e for e in store.events(limit=1000) if e.kind == kind]


def test_run_notifies_each_transition_once_across_a_restart(world, rx):
    world.lane("web")
    world.config["notifications"] = [
        {"name": "hook", "type": "webhook", "url": rx.url, "on": ["failed", "pr-open"]}
    ]
    world.task("bad", "web", "exit-3", maxAttempts=1, maxIterations=1)
    world.task("good", "web", "succeed")
    world.commit()
    daemon = run(world)
    try:
        daemon.wait_for(lambda: ("bad", "failed") in told(rx), "bad's failure told", timeout=60)
        daemon.wait_for(lambda: world.prs("web-repo"), "good's PR", timeout=60)
        daemon.poke()  # the pass that sees the PR open
        daemon.wait_for(lambda: ("good", "pr-open") in told(rx), "good's PR told", timeout=30)
        assert daemon.stop() == 0
    finally:
        daemon.kill()
    assert told(rx) == [("bad", "failed"), ("good", "pr-open")]
    [pr_doc] = [d for d in rx.documents() if d["task"] == "good"]
    assert pr_doc["pr"]["number"] == 1 and pr_doc["reasonCode"] == "AwaitingReview"
    assert {e.task for e in events(world, "notified")} == {"bad", "good"}
    # While `run` is down, a cron apply takes a new task to failed.
    world.task("later", "web", "exit-3", maxAttempts=1, maxIterations=1)
    world.commit("add later")
    world.converge()
    assert world.status()["later"]["phase"] == "failed"
    daemon = run(world)
    try:
        daemon.wait_for(lambda: ("later", "failed") in told(rx), "later's failure told", timeout=30)
        daemon.poke()
        assert daemon.stop() == 0
    finally:
        daemon.kill()
    assert told(rx) == [("bad", "failed"), ("good", "pr-open"), ("later", "failed")]
    assert any(r.get("event") == "notify" for r in daemon.records)


def test_run_once_delivers_before_it_exits_and_apply_does_not_notify(world, rx):
    world.lane("web")
    world.config["notifications"] = [
        {"name": "hook", "type": "webhook", "url": rx.url, "on": ["failed"]}
    ]
    world.task("bad", "web", "exit-3", maxAttempts=1, maxIterations=1)
    world.commit()
    first = world.cli("run", "--once", "--log-format", "json")
    assert first.returncode == 0, first.stderr
    world.converge()  # apply takes bad to failed, telling no one
    assert world.status()["bad"]["phase"] == "failed" and rx.requests == []
    second = world.cli("run", "--once", "--log-format", "json")
    assert second.returncode == 0, second.stderr
    assert told(rx) == [("bad", "failed")]  # delivered before `run --once` exited
    assert [e.message for e in events(world, "notified")] == ["hook: failed delivered (1 try)"]
