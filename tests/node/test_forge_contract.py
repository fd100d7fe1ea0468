"""One contract, two forges: the PR rules of ``Pulls`` over ``LocalForge`` and ``GitHubForge``.

The same tests run against both drivers and prove the rules hold identically: the task marker
added on open and kept on edit, the open PR of a branch reused (also when the forge refuses a
second one opened meanwhile), closing twice a no-op, and each driver's declared capabilities
(merging, feedback, the access probe) honoured. ``GitHubForge`` talks to the stateful
``FakeGitHub``, whose head SHAs come from the same bare origin the local forge keeps its records
in, so both see real pushed branches.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import responses

from reconciler.node import github_http
from reconciler.node.errors import NodeError
from reconciler.node.forge_github import GitHubForge
from reconciler.node.forge_local import PULLS_REF, LocalForge
from reconciler.node.forges import ForgeDriver, PullExists
from reconciler.node.pulls import Pulls
from reconciler.protocol import PullRequest
from tests.node.node_support import Env
from tests.support.fake_github import FakeGitHub, VirtualTime, unserved
from tests.support.git import commit, git

TOKEN = "ghp_" + "K1l2M3n4O5p6Q7r8S9t0" * 2
MARKER = "<!-- reconciler:task={} -->"


@dataclass
class Handle:
    """A forge under test (its driver and the rules over it), a way to push branches, and what
    a human does on the forge."""

    kind: str
    driver: ForgeDriver
    env: Env
    merge: Callable[[int], None]
    close: Callable[[int], None]
    comments: Callable[[int], list[str]]
    fail_check: Callable[[str, str], None] | None = None  # CI fails a commit, saying this

    @property
    def pulls(self) -> Pulls:
        return Pulls(self.driver)

    def push(self, task: str, *files: str) -> str:
        """Commit ``files`` on ``agent/<task>`` and push it to the origin; the new head sha."""
        branch = f"agent/{task}"
        exists = git(self.env.checkout, "branch", "--list", branch)
        git(self.env.checkout, "switch", "-q", *([branch] if exists else ["-c", branch, "main"]))
        sha = ""
        for name in files or ("change.txt",):
            sha = commit(self.env.checkout, name, f"{task} {name} {time.time_ns()}\n")
        git(self.env.checkout, "push", "-q", "origin", branch)
        git(self.env.checkout, "switch", "-q", "main")
        return sha

    def open(self, task: str, body: str = "Fixes the thing.") -> tuple[PullRequest, bool]:
        return self.pulls.open_pull(
            task=task, head=f"agent/{task}", base="main", title=f"Work for {task}", body=body
        )

    def create(self, task: str, body: str) -> PullRequest:
        """What the driver alone does when told to open a PR."""
        return self.driver.create_pull(
            head=f"agent/{task}",
            base="main",
            title=task,
            body=body,
            draft=False,
            labels=[],
            reviewers=[],
        )


def local_comments(env: Env, number: int) -> list[str]:
    doc = json.loads(git(env.origin, "cat-file", "blob", f"{PULLS_REF}:pulls.json"))
    [record] = [p for p in doc["pulls"] if p["number"] == number]
    return [c["body"] for c in record["comments"]]


@pytest.fixture(params=["local", "github"])
def forge(request: pytest.FixtureRequest, env: Env) -> Iterator[Handle]:
    if request.param == "local":
        local = LocalForge(str(env.checkout), "origin")
        rules = Pulls(local)

        def merge(number: int) -> None:
            rules.merge_pull(number)  # what `reconciler pr merge` does

        def close(number: int) -> None:
            rules.close_pull(number, "")  # what `reconciler pr close` does

        yield Handle("local", local, env, merge, close, lambda n: local_comments(env, n))
        return
    github_http.forget_process_memory()
    clock = VirtualTime()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        fake = FakeGitHub(rsps, "acme/webapp", TOKEN)
        fake.remote = env.origin
        hub = GitHubForge(
            "acme/webapp", TOKEN, sleep=clock.sleep, clock=clock.clock, wall=clock.wall
        )
        yield Handle(
            "github",
            hub,
            env,
            merge=fake.merge,
            close=fake.close,
            comments=lambda n: [body for number, body in fake.comments if number == n],
            fail_check=fake.failing.__setitem__,
        )
        assert not unserved(rsps), f"requests the fake GitHub does not serve: {unserved(rsps)}"
    github_http.forget_process_memory()


def test_open_creates_one_pr_and_adopts_it_again(forge: Handle) -> None:
    sha = forge.push("fix-login")
    pr, created = forge.open("fix-login")
    assert created
    assert pr.state == "open"
    assert (pr.head, pr.base, pr.title) == ("agent/fix-login", "main", "Work for fix-login")
    assert pr.body.startswith("Fixes the thing.")
    assert pr.body.count("<!-- reconciler:task=fix-login -->") == 1
    assert pr.task == "fix-login"
    [listed] = forge.pulls.list_pulls()
    assert listed.number == pr.number
    assert listed.head_sha == sha
    again, created_again = forge.open("fix-login", "another body")
    assert not created_again
    assert again.number == pr.number
    assert again.body == pr.body  # adopted as it is, not rewritten
    assert again.head_sha == sha
    assert [p.number for p in forge.pulls.list_pulls()] == [pr.number]


def test_list_filters_by_exact_head_and_orders_by_number(forge: Handle) -> None:
    numbers = []
    for task in ("one", "one-more", "two"):
        forge.push(task)
        numbers.append(forge.open(task)[0].number)
    assert numbers == sorted(numbers) and len(set(numbers)) == 3
    everything = forge.pulls.list_pulls()
    assert [(p.number, p.task) for p in everything] == list(
        zip(numbers, ["one", "one-more", "two"], strict=True)
    )
    assert [p.number for p in forge.pulls.list_pulls(head="agent/one")] == [numbers[0]]
    assert [p.head for p in forge.pulls.list_pulls(head="agent/two")] == ["agent/two"]
    assert forge.pulls.list_pulls(head="agent/none") == []


def test_update_keeps_the_marker_and_records_the_comment(forge: Handle) -> None:
    forge.push("upd")
    pr, _ = forge.open("upd")
    new_sha = forge.push("upd", "more.txt")
    updated = forge.pulls.update_pull(
        pr.number, title="Better title", body="Rewritten body", comment="Pushed a fix"
    )
    assert updated.title == "Better title"
    assert updated.body.startswith("Rewritten body")
    assert updated.body.count("<!-- reconciler:task=upd -->") == 1
    assert updated.task == "upd"
    assert updated.head_sha == new_sha
    assert forge.comments(pr.number) == ["Pushed a fix"]
    [listed] = forge.pulls.list_pulls(head="agent/upd")
    assert (listed.title, listed.body, listed.task) == (updated.title, updated.body, "upd")
    kept = forge.pulls.update_pull(pr.number, body="Again <!-- reconciler:task=upd -->")
    assert kept.body == "Again <!-- reconciler:task=upd -->"
    assert forge.comments(pr.number) == ["Pushed a fix"]  # no comment asked, none recorded


def test_an_open_pr_reports_its_branch_head_after_a_push_without_update(forge: Handle) -> None:
    forge.push("moving")
    _, created = forge.open("moving")
    assert created
    later = forge.push("moving", "later.txt")  # e.g. a crash between push and update-pr
    [listed] = forge.pulls.list_pulls(head="agent/moving")
    assert listed.head_sha == later  # the feedback loop compares it with the pushed commit


def test_close_is_idempotent_and_never_unmerges(forge: Handle) -> None:
    forge.push("gone")
    forge.push("landed")
    gone, _ = forge.open("gone")
    landed, _ = forge.open("landed")
    closed = forge.pulls.close_pull(gone.number, "Task removed")
    assert closed.state == "closed"
    assert forge.comments(gone.number) == ["Task removed"]
    again = forge.pulls.close_pull(gone.number, "Task removed")
    assert again.state == "closed"
    assert forge.comments(gone.number) == ["Task removed"]  # the no-op says nothing either
    forge.merge(landed.number)
    assert forge.pulls.close_pull(landed.number, "Task removed").state == "merged"
    assert forge.comments(landed.number) == []
    states = {p.number: p.state for p in forge.pulls.list_pulls()}
    assert states == {gone.number: "closed", landed.number: "merged"}


def test_a_closed_pr_is_never_reopened(forge: Handle) -> None:
    forge.push("rejected")
    first, _ = forge.open("rejected")
    before = time.time()
    forge.close(first.number)
    [seen] = forge.pulls.list_pulls(head="agent/rejected")
    assert seen.state == "closed"
    assert seen.updated_at is not None and seen.updated_at >= before - 1  # when it was closed
    # The forge does not adopt or reopen the closed PR (keeping one PR per task after a human
    # closed it is the planner's job: it marks the task failed and never opens again).
    second, created = forge.open("rejected")
    assert created
    assert second.number > first.number
    assert second.state == "open"
    prs = forge.pulls.list_pulls(head="agent/rejected")
    assert [(p.number, p.state) for p in prs] == [(first.number, "closed"), (second.number, "open")]


def test_a_body_with_the_marker_does_not_get_it_twice(forge: Handle) -> None:
    forge.push("marked")
    body = "Body.\n\n<!-- reconciler:task=marked -->"
    pr, created = forge.open("marked", body)
    assert created
    assert pr.body == body
    assert pr.task == "marked"
    [listed] = forge.pulls.list_pulls()
    assert listed.body.count("reconciler:task=") == 1


def test_list_shows_a_merge_by_a_human(forge: Handle) -> None:
    sha = forge.push("ship")
    pr, _ = forge.open("ship")
    assert [p.state for p in forge.pulls.list_pulls()] == ["open"]
    before = time.time()
    forge.merge(pr.number)
    [merged] = forge.pulls.list_pulls(head="agent/ship")
    assert merged.state == "merged"
    assert merged.task == "ship"
    assert merged.head_sha == sha
    assert merged.updated_at is not None and merged.updated_at >= before - 1


def test_the_driver_writes_what_it_is_given_and_the_rules_read_the_marker(forge: Handle) -> None:
    forge.push("plain")
    raw = forge.create("plain", "No marker here.")
    assert (raw.body, raw.task) == ("No marker here.", None)  # the driver adds no marker
    edited = forge.driver.edit_pull(raw.number, body=f"Now {MARKER.format('plain')}")
    assert edited.task is None  # nor reads one: that is the rules' part
    [listed] = forge.pulls.list_pulls()
    assert (listed.number, listed.task) == (raw.number, "plain")
    [unread] = forge.driver.list_pulls()
    assert unread.task is None


def test_the_forge_itself_refuses_a_second_open_pr_from_a_branch(forge: Handle) -> None:
    forge.push("twice")
    first = forge.create("twice", "First.")
    with pytest.raises(PullExists, match="already exists"):
        forge.create("twice", "Second.")
    assert [p.number for p in forge.driver.list_pulls()] == [first.number]


def test_an_open_pr_opened_meanwhile_is_reused_not_doubled(
    forge: Handle, monkeypatch: pytest.MonkeyPatch
) -> None:
    forge.push("raced")
    theirs = forge.create("raced", f"Theirs.\n\n{MARKER.format('raced')}")
    listing = forge.driver.list_pulls
    heads: list[str | None] = []

    def too_early(head: str | None = None) -> list[PullRequest]:
        """The first listing misses the PR: another writer opened it between the rules'
        listing and their create (or the answer to an earlier create was lost)."""
        heads.append(head)
        return [] if len(heads) == 1 else listing(head)

    monkeypatch.setattr(forge.driver, "list_pulls", too_early)
    pr, created = forge.pulls.open_pull(
        task="raced", head="agent/raced", base="main", title="Mine", body="Mine."
    )
    assert not created
    assert (pr.number, pr.task, pr.title) == (theirs.number, "raced", "raced")
    assert heads == ["agent/raced", "agent/raced"]  # refused, then found by listing again
    assert [p.number for p in listing()] == [theirs.number]


def test_open_refuses_the_same_head_and_base(forge: Handle) -> None:
    with pytest.raises(NodeError, match="different head and base"):
        forge.pulls.open_pull(task="t", head="main", base="main", title="t", body="b")
    assert forge.pulls.list_pulls() == []


def test_the_declared_capabilities(forge: Handle) -> None:
    caps = forge.pulls.capabilities
    assert caps.mergeable is not None  # both tell whether an open PR merges into its base
    if forge.kind == "local":
        assert caps.merge is not None and caps.diff is not None
        assert caps.feedback is None and caps.access is None
    else:
        assert caps.merge is None and caps.merged_on == "GitHub"
        assert caps.feedback is not None and caps.feedback.kinds == {"checks", "reviews"}
        assert caps.access is not None
        access = caps.access.access()
        assert (access.can_write, access.full_name) == (True, "acme/webapp")
        assert 0 < access.remaining <= access.limit


def test_merge_is_done_where_the_forge_lets_the_reconciler_and_refused_elsewhere(
    forge: Handle,
) -> None:
    sha = forge.push("ship")
    pr, _ = forge.open("ship")
    if forge.pulls.capabilities.merge is None:
        with pytest.raises(NodeError, match=rf"PR #{pr.number} of .* lives on GitHub: merge it"):
            forge.pulls.merge_pull(pr.number)
        [still] = forge.pulls.list_pulls()
        assert still.state == "open"
        return
    merged = forge.pulls.merge_pull(pr.number)
    assert (merged.state, merged.task, merged.head_sha) == ("merged", "ship", sha)
    assert git(forge.env.origin, "rev-parse", "refs/heads/main") == sha  # fast-forwarded
    assert forge.pulls.merge_pull(pr.number) == merged  # merging twice is a no-op
    forge.push("dropped")
    dropped, _ = forge.open("dropped")
    forge.pulls.close_pull(dropped.number, "")
    with pytest.raises(NodeError, match="closed; it cannot merge"):
        forge.pulls.merge_pull(dropped.number)
    assert git(forge.env.origin, "rev-parse", "refs/heads/main") == sha


def test_feedback_is_read_where_the_forge_has_it_for_open_prs_only(forge: Handle) -> None:
    sha = forge.push("ci")
    pr, _ = forge.open("ci")
    if forge.fail_check is not None:
        forge.fail_check(sha, "E   AssertionError: login returns 500")
    seen = forge.pulls.with_feedback(pr)
    merges = {"mergeable": True, "behind": False, "conflicts": []}
    if forge.pulls.capabilities.feedback is None:
        assert seen == pr.model_copy(update=merges)  # no CI, no reviews: whether it merges
    else:
        assert seen.checks == "failure"
        assert "login returns 500" in seen.check_feedback[0]
        # no kind asked: no checks or reviews read, only whether it merges
        assert forge.pulls.with_feedback(pr, ()) == pr.model_copy(update=merges)
    closed = forge.pulls.close_pull(pr.number, "")
    assert forge.pulls.with_feedback(closed) == closed  # a closed PR is not iterated on


def move_main(env: Env, name: str, content: str) -> str:
    """Someone merges into main on the remote: a commit changing ``name``; main's new head."""
    git(env.checkout, "switch", "-q", "main")
    git(env.checkout, "pull", "-q", "--ff-only", "origin", "main")
    sha = commit(env.checkout, name, content)
    git(env.checkout, "push", "-q", "origin", "main")
    return sha


def test_a_moved_base_shows_as_behind_and_a_conflict_names_its_files(forge: Handle) -> None:
    forge.push("clean", "clean.txt")
    forge.push("clash", "shared.txt")
    clean, _ = forge.open("clean")
    clash, _ = forge.open("clash")
    up_to_date = [forge.pulls.with_feedback(p, ()) for p in (clean, clash)]
    assert [(p.mergeable, p.behind, p.conflicts) for p in up_to_date] == [(True, False, [])] * 2
    move_main(forge.env, "shared.txt", "main's own line\n")
    loose = git(forge.env.origin, "count-objects")
    now = {p.number: p for p in forge.pulls.list_pulls()}  # a pass starts from the list
    clean_now, clash_now = (forge.pulls.with_feedback(now[p.number], ()) for p in (clean, clash))
    if forge.kind == "local":  # the trial merge left nothing in the remote repository
        assert git(forge.env.origin, "count-objects") == loose
    assert (clean_now.mergeable, clean_now.behind, clean_now.conflicts) == (True, True, [])
    assert (clash_now.mergeable, clash_now.behind) == (False, True)
    # the local forge names the files; GitHub says only that it conflicts
    assert clash_now.conflicts == (["shared.txt"] if forge.kind == "local" else [])
    listed = {p.number: p for p in forge.pulls.list_pulls(mergeable=True)}
    assert (listed[clash.number].mergeable, listed[clean.number].mergeable) == (False, True)
    assert forge.pulls.list_pulls()[0].mergeable is None  # not asked: not read
    shown, comments, _ = forge.pulls.show(clash.number)
    assert (shown.task, shown.mergeable, comments) == ("clash", False, [])
    forge.pulls.update_pull(clash.number, comment="Resolve it, please.")
    assert [c.body for c in forge.pulls.show(clash.number)[1]] == ["Resolve it, please."]
    if forge.kind == "local":
        diff = forge.pulls.show(clash.number, diff=True)[2]
        assert diff is not None and "+++ b/shared.txt" in diff and "main's own" not in diff


def test_the_pr_marker_rule_is_one_rule_for_both_sides() -> None:
    from reconciler.protocol import marked_task, pr_marker, with_marker

    assert marked_task(f"text\n\n{pr_marker('fix-login')}") == "fix-login"
    assert with_marker("New body", "fix-login") == f"New body\n\n{pr_marker('fix-login')}"
    kept = f"edited\n{pr_marker('fix-login')}"
    assert with_marker(kept, "fix-login") == kept  # never twice
    assert with_marker("no task", None) == "no task"
