"""Which transitions a pass's statuses show, and which sinks get them: tables, no I/O."""

from __future__ import annotations

import pytest

from reconciler.manifests.models import Notification
from reconciler.notify.transitions import CONTROL, control_change, task_changes, wanted_by
from reconciler.plan import TaskStatus, Why
from tests.notify.support import desired, failed, pr, status

WANT = desired()
GEN = WANT.tasks["a"].generation
NOW = 1_700_000_000.0  # day 19675 since 1970


def shown(*statuses: TaskStatus, skip: frozenset[str] = frozenset()) -> list[tuple[str, str, str]]:
    return [(c.subject, c.kind, c.occurrence) for c in task_changes(WANT, statuses, NOW, skip)]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (status("a", "running", Why.RUNNING), []),
        (status("a", "pending", Why.WAITING_FOR_SLOT), []),
        (failed("a", attempt=3), [("a", "failed", f"{GEN}/3")]),
        (status("a", "failed", Why.PR_CLOSED, attempt=1), [("a", "failed", f"{GEN}/1")]),
        (status("a", "failed", Why.BUDGET_EXHAUSTED), [("a", "budget-exhausted", GEN)]),
        (
            status("a", "pr-open", Why.BUDGET_EXHAUSTED, pr=pr(4)),
            [("a", "budget-exhausted", GEN), ("a", "pr-open", "#4")],
        ),
        (
            status("a", "blocked", Why.LANE_BUDGET_EXHAUSTED),
            [("lane:web", "budget-exhausted", "19675")],
        ),
        (
            status("a", "backoff", Why.STALLED, attempt=2, iteration=3),
            [("a", "stalled", f"{GEN}/2.3")],
        ),
        (
            status("a", "backoff", Why.TIMED_OUT, attempt=1, iteration=1),
            [("a", "stalled", f"{GEN}/1.1")],
        ),
        (status("a", "pr-open", Why.AWAITING_REVIEW, pr=pr(4)), [("a", "pr-open", "#4")]),
        (status("a", "pr-open", Why.ADDRESSING_FEEDBACK, pr=pr(4)), [("a", "pr-open", "#4")]),
        (status("a", "running", Why.OPENING_PR), []),  # not open until the forge says so
        (status("a", "done", Why.MERGED, pr=pr(4, "merged")), [("a", "done", "#4")]),
        (status("a", "done", Why.COMPLETED), [("a", "done", GEN)]),
    ],
)
def test_a_status_shows_the_transitions_it_is_an_instance_of(given, expected):
    assert shown(given) == expected


def test_tasks_whose_action_failed_and_tasks_no_longer_desired_wait():
    assert shown(failed("a"), skip=frozenset({"a"})) == []
    assert shown(failed("gone")) == []


def test_a_lane_wide_change_names_the_lane_not_a_task():
    [change] = task_changes(
        WANT, [status("b", "blocked", Why.LANE_BUDGET_EXHAUSTED, reason="spent")], NOW, frozenset()
    )
    assert (change.task, change.lane, change.repo, change.phase, change.labels) == (
        None,
        "web",
        None,
        None,
        {},
    )
    [task] = task_changes(WANT, [failed("b")], NOW, frozenset())
    assert (task.task, task.labels, task.reason_code) == ("b", {"team": "web"}, "AttemptsExhausted")


def test_a_reason_quoting_a_token_is_redacted():
    token = "ghp_" + "a1B2" * 9
    [change] = task_changes(
        WANT,
        [status("a", "failed", Why.ATTEMPTS_EXHAUSTED, reason=f"agent said {token}")],
        NOW,
        frozenset(),
    )
    assert token not in change.reason and "***" in change.reason


def test_the_control_repository_is_broken_once_per_problem_and_fixed_once():
    assert control_change(None, None) is None
    broken = control_change("manifest errors at abc", None)
    assert broken is not None and (broken.subject, broken.transition) == (CONTROL, "control-broken")
    again = control_change("manifest errors at abc", broken.occurrence)
    assert again is not None and again.occurrence == broken.occurrence  # the same: no news
    other = control_change("manifest errors at def", broken.occurrence)
    assert other is not None and other.occurrence != broken.occurrence
    fetch = control_change(
        "the control remote could not be fetched (after 2013 ms (timed out))", None
    )
    later = control_change("the control remote could not be fetched (after 2250 ms)", None)
    assert fetch is not None and later is not None and fetch.occurrence == later.occurrence
    assert fetch.reason.endswith("(after 2013 ms (timed out))")
    fixed = control_change(None, broken.occurrence)
    assert fixed is not None and (fixed.transition, fixed.kind) == (
        "control-fixed",
        "control-broken",
    )
    assert control_change(None, fixed.occurrence) is None
    assert broken.id != fixed.id


def sink(**kw: object) -> Notification:
    return Notification.model_validate({"name": "s", "type": "webhook", "url": "http://x", **kw})


@pytest.mark.parametrize(
    ("filters", "task_gets", "lane_gets", "control_gets"),
    [
        ({"on": ["failed", "budget-exhausted", "control-broken"]}, True, True, True),
        ({"on": ["done"]}, False, False, False),
        (
            {"on": ["failed", "budget-exhausted", "control-broken"], "lanes": ["docs"]},
            False,
            False,
            True,
        ),
        (
            {"on": ["failed", "budget-exhausted", "control-broken"], "lanes": ["web"]},
            True,
            True,
            True,
        ),
        (
            {"on": ["failed", "budget-exhausted", "control-broken"], "labels": {"team": "web"}},
            True,
            True,
            True,
        ),
        (
            {"on": ["failed", "budget-exhausted", "control-broken"], "labels": {"team": "ops"}},
            False,
            True,
            True,
        ),
    ],
)
def test_a_sink_gets_what_its_on_lanes_and_labels_select(
    filters, task_gets, lane_gets, control_gets
):
    [task] = task_changes(WANT, [failed("b")], NOW, frozenset())
    [lane] = task_changes(
        WANT, [status("b", "blocked", Why.LANE_BUDGET_EXHAUSTED)], NOW, frozenset()
    )
    control = control_change("broken", None)
    assert control is not None
    chosen = sink(**filters)
    assert (wanted_by(chosen, task), wanted_by(chosen, lane), wanted_by(chosen, control)) == (
        task_gets,
        lane_gets,
        control_gets,
    )
