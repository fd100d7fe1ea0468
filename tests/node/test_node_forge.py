"""The local forge: PRs kept in the remote repository, with compare-and-swap updates."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from reconciler import gitfiles
from reconciler.node.forge_local import PULLS_REF, LocalForge
from reconciler.node.pulls import Pulls
from reconciler.protocol import (
    ForgeCloseRequest,
    ForgeListRequest,
    ForgeListResult,
    ForgeMergeRequest,
    ForgeOpenRequest,
    ForgeOpenResult,
    ForgeUpdateRequest,
    LaneRef,
    PRResult,
    PushRequest,
    RepoRef,
)
from tests.node.node_support import SETTLED_NS, Env, GitCount, settled
from tests.support.git import commit, git


def pushed_branch(env: Env, task: str, *files: str) -> str:
    ws = env.prepare(task)
    sha = ""
    for name in files or ("change.txt",):
        sha = commit(ws, name, f"{task} {name}\n")
    env.call(PushRequest(lane=env.lane, repo="webapp", branch=f"agent/{task}"))
    return sha


def open_req(env: Env, task: str, body: str = "Fixes the thing.") -> ForgeOpenRequest:
    return ForgeOpenRequest(
        lane=env.lane,
        repo="webapp",
        task=task,
        head=f"agent/{task}",
        base="main",
        title=f"Work for {task}",
        body=body,
        draft=True,
        labels=["agent"],
    )


def document(env: Env) -> dict[str, object]:
    data = json.loads(git(env.origin, "cat-file", "blob", f"{PULLS_REF}:pulls.json"))
    assert isinstance(data, dict)
    return data


def test_open_then_open_again_adopts(env: Env) -> None:
    sha = pushed_branch(env, "fix-login")
    first = ForgeOpenResult.model_validate(env.call(open_req(env, "fix-login")))
    assert first.created
    pr = first.pr
    assert pr.number == 1
    assert pr.state == "open"
    assert pr.task == "fix-login"
    assert pr.head == "agent/fix-login"
    assert pr.head_sha == sha
    assert pr.url == f"file://{env.origin.resolve()}#pull/1"
    assert "<!-- reconciler:task=fix-login -->" in pr.body
    second = ForgeOpenResult.model_validate(env.call(open_req(env, "fix-login", "other body")))
    assert not second.created
    assert second.pr == pr
    assert document(env)["next"] == 2


def test_numbers_increase_and_list_filters_by_head(env: Env) -> None:
    pushed_branch(env, "one")
    pushed_branch(env, "two")
    env.call(open_req(env, "one"))
    env.call(open_req(env, "two", "body\n<!-- reconciler:task=two -->"))
    prs = ForgeListResult.model_validate(
        env.call(ForgeListRequest(lane=env.lane, repo="webapp"))
    ).prs
    assert [(p.number, p.task) for p in prs] == [(1, "one"), (2, "two")]
    assert prs[1].body.count("reconciler:task=two") == 1  # the marker was not appended twice
    only = ForgeListResult.model_validate(
        env.call(ForgeListRequest(lane=env.lane, repo="webapp", head="agent/two"))
    ).prs
    assert [p.number for p in only] == [2]


def test_an_unchanged_listing_starts_no_git_and_sees_every_change(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every pass lists the PRs: read from the remote's files and its document as last read
    while neither changed; a PR opened, or a head pushed, by anyone is in the next listing."""
    monkeypatch.setattr(gitfiles, "RACY_NS", SETTLED_NS)
    head = pushed_branch(env, "one")
    env.call(open_req(env, "one"))
    listing = ForgeListRequest(lane=env.lane, repo="webapp")
    settled(str(env.checkout))  # the config git named the remote from
    first = ForgeListResult.model_validate(env.call(listing)).prs
    count = GitCount(monkeypatch)
    assert count.since(lambda: env.call(listing)) == 0
    pushed_branch(env, "two")
    moved = commit(env.workspace("one"), "more.txt", "more\n")
    git(env.workspace("one"), "push", "-q", "origin", "agent/one")  # not through the node
    env.call(open_req(env, "two"))
    prs = ForgeListResult.model_validate(env.call(listing)).prs
    assert [(p.number, p.head_sha) for p in first] == [(1, head)]
    assert [p.number for p in prs] == [1, 2] and prs[0].head_sha == moved


def test_a_remote_moved_elsewhere_is_listed_there(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gitfiles, "RACY_NS", SETTLED_NS)
    pushed_branch(env, "one")
    env.call(open_req(env, "one"))
    other = env.tmp / "other.git"
    git(env.tmp, "init", "-q", "--bare", str(other))
    listing = ForgeListRequest(lane=env.lane, repo="webapp")
    settled(str(env.checkout))
    assert len(ForgeListResult.model_validate(env.call(listing)).prs) == 1
    git(env.checkout, "remote", "set-url", "origin", str(other))
    assert ForgeListResult.model_validate(env.call(listing)).prs == []


def test_update_close_and_records_survive(env: Env) -> None:
    pushed_branch(env, "upd")
    env.call(open_req(env, "upd"))
    new_sha = pushed_branch(env, "upd", "more.txt")
    updated = PRResult.model_validate(
        env.call(
            ForgeUpdateRequest(
                lane=env.lane,
                repo="webapp",
                number=1,
                title="Better title",
                body="Rewritten body",
                comment="Pushed a fix",
            )
        )
    ).pr
    assert updated.title == "Better title"
    assert updated.head_sha == new_sha
    assert updated.task == "upd"  # the marker survives a body rewrite
    closed = PRResult.model_validate(
        env.call(ForgeCloseRequest(lane=env.lane, repo="webapp", number=1, comment="Task removed"))
    ).pr
    assert closed.state == "closed"
    record = document(env)["pulls"][0]  # type: ignore[index]
    assert [c["body"] for c in record["comments"]] == ["Pushed a fix", "Task removed"]
    # A brand-new forge object (no control-plane memory at all) sees the same records.
    again = LocalForge(str(env.checkout), "origin").list_pulls()
    assert [(p.number, p.state, p.title) for p in again] == [(1, "closed", "Better title")]
    # A closed PR does not block a new one for the same head.
    reopened = ForgeOpenResult.model_validate(env.call(open_req(env, "upd")))
    assert reopened.created
    assert reopened.pr.number == 2
    # open, comment, edit, comment, close, open: one compare-and-swap commit each
    assert int(git(env.origin, "rev-list", "--count", PULLS_REF)) == 6


def test_merge_fast_forward(env: Env) -> None:
    sha = pushed_branch(env, "ff")
    env.call(open_req(env, "ff"))
    merged = PRResult.model_validate(
        env.call(ForgeMergeRequest(lane=env.lane, repo="webapp", number=1))
    ).pr
    assert merged.state == "merged"
    assert git(env.origin, "rev-parse", "refs/heads/main") == sha
    again = PRResult.model_validate(
        env.call(ForgeMergeRequest(lane=env.lane, repo="webapp", number=1))
    ).pr
    assert again.state == "merged"


def test_merge_non_fast_forward_makes_a_merge_commit(env: Env) -> None:
    head = pushed_branch(env, "nonff", "feature.txt")
    seed = env.tmp / "seed"
    base = commit(seed, "other.txt", "other\n")
    git(seed, "push", "-q", str(env.origin), "main")
    env.call(open_req(env, "nonff"))
    env.call(ForgeMergeRequest(lane=env.lane, repo="webapp", number=1))
    new_main = git(env.origin, "rev-parse", "refs/heads/main")
    assert git(env.origin, "rev-parse", f"{new_main}^1") == base
    assert git(env.origin, "rev-parse", f"{new_main}^2") == head
    files = git(env.origin, "ls-tree", "--name-only", new_main).split()
    assert {"README.md", "feature.txt", "other.txt"} <= set(files)


def test_merge_conflict_is_a_clear_error(env: Env) -> None:
    ws = env.prepare("clash")
    commit(ws, "README.md", "ours\n")
    env.call(PushRequest(lane=env.lane, repo="webapp", branch="agent/clash"))
    seed = env.tmp / "seed"
    before = commit(seed, "README.md", "theirs\n")
    git(seed, "push", "-q", str(env.origin), "main")
    env.call(open_req(env, "clash"))
    response = env.respond(ForgeMergeRequest(lane=env.lane, repo="webapp", number=1))
    assert not response.ok
    assert response.failure is not None
    assert "conflicts in README.md" in response.failure.error
    assert "rebase" in response.failure.error
    assert git(env.origin, "rev-parse", "refs/heads/main") == before
    assert LocalForge(str(env.checkout), "origin").list_pulls()[0].state == "open"


def test_concurrent_opens_lose_nothing(env: Env) -> None:
    tasks = [f"cc-{i}" for i in range(6)]
    for task in tasks:
        pushed_branch(env, task)
    errors: list[object] = []

    def work(task: str) -> None:
        response = env.respond(open_req(env, task))
        if not response.ok:
            errors.append(response.failure)

    threads = [threading.Thread(target=work, args=(t,)) for t in tasks]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    prs = Pulls(LocalForge(str(env.checkout), "origin")).list_pulls()
    assert sorted(p.number for p in prs) == list(range(1, 7))
    assert sorted(p.task or "" for p in prs) == sorted(tasks)


def test_open_requires_the_pushed_branch(env: Env) -> None:
    env.prepare("unpushed")
    response = env.respond(open_req(env, "unpushed"))
    assert not response.ok
    assert response.failure is not None
    assert "push it" in response.failure.error


def test_remote_must_be_local(env: Env, tmp_path: Path) -> None:
    git(env.checkout, "remote", "set-url", "origin", "https://github.com/acme/webapp.git")
    response = env.respond(ForgeListRequest(lane=env.lane, repo="webapp"))
    assert not response.ok
    assert response.failure is not None
    assert "not a local repository" in response.failure.error
    git(env.checkout, "remote", "set-url", "origin", f"file://{env.origin}")
    assert env.respond(ForgeListRequest(lane=env.lane, repo="webapp")).ok


def test_forge_requests_need_a_forge(env: Env) -> None:
    lane = LaneRef(
        name="plain",
        workspace_root=str(env.root),
        repos=[RepoRef(name="webapp", checkout=str(env.checkout))],
    )
    response = env.respond(ForgeListRequest(lane=lane, repo="webapp"))
    assert not response.ok
    assert response.failure is not None
    assert "has no forge on this lane" in response.failure.error
