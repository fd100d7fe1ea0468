"""The notifier against a real receiver on 127.0.0.1 and a real state store: retries until the
receiver recovers, a receiver that holds or never answers, restarts, secrets, a full queue."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.manifests.models import Desired
from reconciler.manifests.policy import Policy, PolicySpec
from reconciler.notify import Notifier
from reconciler.notify.sinks import command_refusal, url_refusal
from reconciler.plan import Why
from reconciler.state import NOTIFY_SINCE, Store
from tests.notify.receiver import receiving
from tests.notify.support import PENDING, desired, events, failed, plan, pr, status
from tests.support.waiting import wait_for

ALLOWED = Policy(PolicySpec(reconciler_user=True))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / "state") as opened:
        yield opened


@pytest.fixture
def started(store: Store) -> Iterator[list[Notifier]]:
    """Notifiers made by a test, stopped after it (before the store closes)."""
    made: list[Notifier] = []
    yield made
    for notifier in made:
        notifier.stop(drain=0)


def notifier(store: Store, started: list[Notifier], start: bool = True, **kw: Any) -> Notifier:
    made = Notifier(store, policy=lambda: ALLOWED, **kw)
    started.append(made)
    if start:
        made.start()
    return made


def a_fails(n: Notifier, want: Desired) -> None:
    """A pass with nothing failed (what is so when the sink appears), then one where a failed."""
    n.observe(want, plan(*PENDING))
    n.observe(want, plan(failed("a"), PENDING[1]))


def webhook(url: str, **kw: Any) -> dict[str, Any]:
    return {
        "name": "hook",
        "type": "webhook",
        "url": url,
        "on": ["failed"],
        "retryDelay": "10ms",
        **kw,
    }


def test_a_receiver_failing_at_first_gets_the_document_once_and_the_event_says_how(store, started):
    with receiving(fail_first=2) as rx:
        want = desired(webhook(rx.url))
        n = notifier(store, started)
        a_fails(n, want)
        done = wait_for(lambda: events(store, "notified"), "the delivery's event")
        assert len(rx.requests) == 3 and len(rx.documents()) == 1
        doc = rx.documents()[0]
        assert {k: doc[k] for k in ("kind", "sink", "transition", "task", "lane", "repo")} == {
            "kind": "Notification",
            "sink": "hook",
            "transition": "failed",
            "task": "a",
            "lane": "web",
            "repo": "webapp",
        }
        assert (doc["phase"], doc["reasonCode"], doc["reason"]) == (
            "failed",
            "AttemptsExhausted",
            "all 3 attempts failed",
        )
        assert doc["revision"] == want.revision and doc["at"].endswith("Z")
        assert [e.task for e in done] == ["a"]
        assert done[0].message == "hook: failed delivered (3 tries; before: HTTP 500, HTTP 500)"
        assert not events(store, "notify-failed")
        # The same status at the next pass is no news; a pass never waits for it to be sent.
        n.observe(want, plan(failed("a"), PENDING[1]))
        assert n.in_flight() == 0 and len(rx.requests) == 3
        # A new failure of the same task (a new attempt after a manifest change) is news again.
        n.observe(want, plan(failed("a", attempt=4), PENDING[1]))
        wait_for(lambda: len(events(store, "notified")) == 2, "the second delivery")
        assert len(rx.documents()) == 2


def test_a_receiver_that_holds_the_request_does_not_hold_the_pass(store, started):
    with receiving() as rx:
        rx.hold = True
        want = desired(webhook(rx.url, timeout="60s"))
        n = notifier(store, started)
        a_fails(n, want)
        # observe returned; the receiver has not answered (it holds until released), so the
        # delivery cannot have ended yet: the pass went on without it.
        assert not events(store, "notified")
        wait_for(rx.held.is_set, "the held request")
        n.observe(want, plan(failed("a"), failed("b")))  # the next pass, meanwhile
        rx.release.set()
        wait_for(lambda: len(events(store, "notified")) == 2, "both deliveries")
        assert sorted(d["task"] for d in rx.documents()) == ["a", "b"]


def test_a_receiver_that_never_answers_fails_after_its_tries(store, started):
    with receiving() as rx:
        rx.hold = True
        want = desired(webhook(rx.url, timeout="200ms", attempts=2))
        n = notifier(store, started)
        a_fails(n, want)
        [event] = wait_for(lambda: events(store, "notify-failed"), "the failure's event")
        assert event.task == "a"
        assert event.message == "hook: failed not delivered (2 tries): no answer within 0.2s"
        assert len(rx.requests) == 2
        n.observe(want, plan(failed("a"), PENDING[1]))  # a final failure is not retried
        assert n.in_flight() == 0


def test_a_refusing_receiver_is_not_asked_again(store, started):
    with receiving(status=404) as rx:
        n = notifier(store, started)
        want = desired(webhook(rx.url))
        a_fails(n, want)
        [event] = wait_for(lambda: events(store, "notify-failed"), "the failure's event")
        assert "(1 try): HTTP 404" in event.message and len(rx.requests) == 1


def test_a_restart_neither_sends_again_nor_misses_what_changed_meanwhile(store, started):
    with receiving() as rx:
        want = desired(webhook(rx.url, on=["failed", "pr-open"]))
        first = notifier(store, started)
        a_fails(first, want)
        wait_for(lambda: events(store, "notified"), "the first delivery")
        first.stop()
        # While `run` was down, b opened its PR.
        second = notifier(store, started)
        opened = status("b", "pr-open", Why.AWAITING_REVIEW, pr=pr(7))
        second.observe(want, plan(failed("a"), opened))
        wait_for(lambda: len(events(store, "notified")) == 2, "b's delivery")
        assert [(d["task"], d["transition"]) for d in rx.documents()] == [
            ("a", "failed"),
            ("b", "pr-open"),
        ]
        assert rx.documents()[1]["pr"] == {
            "number": 7,
            "url": "https://forge.example/pulls/7",
            "state": "open",
        }


def test_a_delivery_left_when_run_stops_is_sent_by_the_next_start_with_the_same_id(store, started):
    with receiving() as rx:
        rx.hold = True
        want = desired(webhook(rx.url, timeout="60s"))
        first = notifier(store, started)
        a_fails(first, want)
        wait_for(rx.held.is_set, "the held request")
        first.stop(drain=0)  # stopping: what is under way is not recorded
        assert not events(store)
        rx.hold = False
        rx.release.set()
        second = notifier(store, started)
        second.observe(want, plan(failed("a"), PENDING[1]))
        wait_for(lambda: events(store, "notified"), "the delivery after the restart")
        ids = {d["id"] for d in rx.documents()}
        assert len(rx.documents()) == 2 and len(ids) == 1


def test_what_is_so_when_sinks_appear_is_the_baseline_and_removing_them_forgets(store, started):
    with receiving() as rx:
        n = notifier(store, started)
        n.observe(desired(webhook(rx.url)), None, problem="broken")  # no tasks seen: no baseline
        assert store.get_meta(NOTIFY_SINCE) is None
        n.observe(desired(), plan(failed("a"), PENDING[1]))  # no sinks: nothing is tracked
        assert store.get_meta(NOTIFY_SINCE) is None and store.notified() == {}
        want = desired(webhook(rx.url))
        n.observe(want, plan(failed("a"), PENDING[1]))  # a was failed before the sink
        assert n.in_flight() == 0 and store.notified() == {
            ("a", "failed"): f"{want.tasks['a'].generation}/3"
        }
        assert store.get_meta(NOTIFY_SINCE) is not None
        n.observe(desired(), plan(failed("a"), failed("b")))
        assert store.get_meta(NOTIFY_SINCE) is None and store.notified() == {}
        assert rx.requests == [] and not events(store)


def test_the_control_repository_broken_then_fixed_is_told_once_each(store, started):
    with receiving() as rx:
        n = notifier(store, started)
        want = desired(webhook(rx.url, on=["control-broken"]))
        n.observe(want, plan(*PENDING))
        problem = "manifest errors at 0123456789ab; reconciling the last good revision"
        n.observe(want, None, problem=problem)
        n.observe(want, plan(*PENDING), problem=problem)  # the same problem: no news
        wait_for(lambda: events(store, "notified"), "the broken delivery")
        n.observe(want, plan(*PENDING))
        wait_for(lambda: len(events(store, "notified")) == 2, "the fixed delivery")
        n.observe(want, plan(*PENDING))
        assert n.in_flight() == 0
        docs = rx.documents()
        assert [(d["transition"], d["task"], d["reason"]) for d in docs] == [
            ("control-broken", None, problem),
            ("control-fixed", None, "the problem is resolved"),
        ]
        assert [e.task for e in events(store)] == [None, None]


def test_a_lane_out_of_budget_is_one_notification_not_one_per_task(store, started):
    with receiving() as rx:
        n = notifier(store, started)
        want = desired(webhook(rx.url, on=["budget-exhausted"]))
        n.observe(want, plan(*PENDING))
        spent = "lane web spent its daily budget ($5.00 of $5.00)"
        blocked = [status(t, "blocked", Why.LANE_BUDGET_EXHAUSTED, reason=spent) for t in "ab"]
        n.observe(want, plan(*blocked))
        wait_for(lambda: events(store, "notified"), "the lane's delivery")
        n.observe(want, plan(*blocked))
        assert n.in_flight() == 0
        [doc] = rx.documents()
        assert (doc["task"], doc["lane"], doc["transition"], doc["reason"]) == (
            None,
            "web",
            "budget-exhausted",
            spent,
        )


def test_a_full_queue_drops_the_delivery_with_an_event(store, started):
    with receiving() as rx:
        n = notifier(store, started, start=False, queue_size=1)
        want = desired(webhook(rx.url))
        n.observe(want, plan(*PENDING))
        n.observe(want, plan(failed("a"), failed("b")))  # one fits; the other is dropped
        [dropped] = events(store, "notify-failed")
        assert "dropped: 1 deliveries are waiting already" in dropped.message
        n.start()
        [sent] = wait_for(lambda: events(store, "notified"), "the queued delivery")
        assert {sent.task, dropped.task} == {"a", "b"} and len(rx.documents()) == 1


def test_a_command_sink_gets_the_document_on_stdin(store, started, tmp_path):
    out = tmp_path / "received.json"
    script = tmp_path / "sink.py"
    script.write_text(
        "import os, sys\n"
        f"data = sys.stdin.buffer.read()\n"
        f"open({str(out)!r}, 'wb').write(data)\n"
        "print(os.environ['RECONCILER_SINK'], os.environ['RECONCILER_TRANSITION'],"
        " sorted(os.environ), file=sys.stderr)\n"
        "sys.exit(0 if data else 1)\n"
    )
    n = notifier(store, started)
    want = desired(
        {
            "name": "pager",
            "type": "command",
            "command": [sys.executable, str(script)],
            "on": ["done"],
        }
    )
    n.observe(want, plan(*PENDING))
    n.observe(want, plan(status("a", "done", Why.MERGED, pr=pr(3, "merged")), PENDING[1]))
    [event] = wait_for(lambda: events(store, "notified"), "the command's delivery")
    assert event.message == "pager: done delivered (1 try)"
    doc = json.loads(out.read_bytes())
    assert (doc["sink"], doc["transition"], doc["task"], doc["pr"]["state"]) == (
        "pager",
        "done",
        "a",
        "merged",
    )


def test_a_failing_command_is_retried_and_its_stderr_told(store, started, tmp_path):
    n = notifier(store, started)
    argv = [
        sys.executable,
        "-c",
        "import sys; print('no pager today', file=sys.stderr); sys.exit(4)",
    ]
    want = desired(
        {
            "name": "pager",
            "type": "command",
            "command": argv,
            "on": ["failed"],
            "attempts": 2,
            "retryDelay": "10ms",
        }
    )
    a_fails(n, want)
    [event] = wait_for(lambda: events(store, "notify-failed"), "the command's failure")
    assert event.message == (
        "pager: failed not delivered (2 tries): command exited with status 4: no pager today"
    )


def test_command_sinks_run_only_where_the_policy_lets_manifests_run_as_the_reconciler():
    assert command_refusal(Policy(), euid=1000, user="agents") is None
    refused = command_refusal(Policy(), euid=0, user="root")
    assert refused is not None and "root (root)" in refused and "reconcilerUser: true" in refused
    assert command_refusal(ALLOWED, euid=0, user="root") is None
    denied = Policy(PolicySpec(reconciler_user=False), source="/etc/reconciler/policy.yaml")
    assert "the policy /etc/reconciler/policy.yaml" in str(command_refusal(denied, 1000, "agents"))


def test_a_refused_command_sink_runs_nothing_and_says_why(store, started, tmp_path):
    marker = tmp_path / "ran"
    made = Notifier(store, policy=lambda: Policy(PolicySpec(reconciler_user=False)))
    started.append(made)
    made.start()
    argv = [sys.executable, "-c", f"open({str(marker)!r}, 'w')"]
    want = desired({"name": "pager", "type": "command", "command": argv, "on": ["failed"]})
    a_fails(made, want)
    [event] = wait_for(lambda: events(store, "notify-failed"), "the refusal")
    assert "does not allow" in event.message and not marker.exists()


SECRET = "T0000/B0000/XXXXsecretXXXXtoken"


@pytest.mark.parametrize("answer", [200, 500])
def test_a_url_from_a_file_is_used_and_never_shown(store, started, tmp_path, answer):
    lines: list[str] = []
    with receiving(status=answer, path=f"/services/{SECRET}") as rx:
        url_file = tmp_path / "slack-url"
        url_file.write_text(rx.url + "\n")
        url_file.chmod(0o600)
        made = Notifier(store, log=lambda *a, **k: lines.append(json.dumps([a, k])))
        started.append(made)
        made.start()
        sink = {
            "name": "ops",
            "type": "slack",
            "urlFile": str(url_file),
            "on": ["failed"],
            "attempts": 2,
            "retryDelay": "10ms",
        }
        want = desired(sink)
        a_fails(made, want)
        [outcome] = wait_for(
            lambda: events(store, "notified" if answer == 200 else "notify-failed"), "the outcome"
        )
        assert outcome.task == "a"
        assert rx.requests and all(path == f"/services/{SECRET}" for path, _body in rx.requests)
        text = json.loads(rx.requests[0][1])["text"]
        assert text == "[reconciler] task a failed (lane web): all 3 attempts failed"
    shown = [e.message for e in events(store)] + lines + [repr(store.notified())]
    assert not [s for s in shown if "secret" in s or "/services/" in s or "127.0.0.1" in s]


@pytest.mark.parametrize(
    ("content", "mode", "said"),
    [
        ("http://127.0.0.1:9/services/hunter2hunter2\n", 0o644, "can be read by others (mode 644)"),
        ("hunter2hunter2 is no URL\n", 0o600, "does not hold one http(s) URL alone"),
        (None, 0o600, "cannot be read (No such file or directory)"),
    ],
)
def test_a_url_file_that_cannot_be_trusted_is_refused_without_quoting_it(
    store, started, tmp_path, content, mode, said
):
    url_file = tmp_path / "hook-url"
    if content is not None:
        url_file.write_text(content)
        url_file.chmod(mode)
    n = notifier(store, started)
    want = desired({"name": "ops", "type": "webhook", "urlFile": str(url_file), "on": ["failed"]})
    a_fails(n, want)
    [event] = wait_for(lambda: events(store, "notify-failed"), "the refusal")
    assert said in event.message and "(1 try)" in event.message
    assert "hunter2" not in event.message


def test_a_url_file_of_another_user_is_refused(store, started, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to give the file away")
    url_file = tmp_path / "hook-url"
    url_file.write_text("http://127.0.0.1:9/hook\n")
    url_file.chmod(0o600)
    os.chown(url_file, 65534, 65534)
    n = notifier(store, started)
    want = desired({"name": "ops", "type": "webhook", "urlFile": str(url_file), "on": ["failed"]})
    a_fails(n, want)
    [event] = wait_for(lambda: events(store, "notify-failed"), "the refusal")
    assert "belongs to uid 65534" in event.message


def test_a_notifier_never_started_stops_at_once(store):
    Notifier(store).stop()


def test_a_url_the_policy_does_not_list_gets_nothing_and_is_not_quoted(store, started):
    with receiving() as rx:
        only = Policy(PolicySpec(notify_urls=["https://hooks.example.com/*"]), source="/p.yaml")
        made = Notifier(store, policy=lambda: only)
        started.append(made)
        made.start()
        a_fails(made, desired(webhook(rx.url)))
        [event] = wait_for(lambda: events(store, "notify-failed"), "the refusal")
        assert "the policy /p.yaml does not allow notifications to this sink's URL" in event.message
        assert "(1 try)" in event.message and rx.url not in event.message
        assert rx.requests == []
    allowed = Policy(PolicySpec(notify_urls=["http://127.0.0.1:*"]))
    assert url_refusal(allowed, "http://127.0.0.1:8080/hook") is None
    assert url_refusal(Policy(), "http://169.254.169.254/") is None  # no list: any URL
