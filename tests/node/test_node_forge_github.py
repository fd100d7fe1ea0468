"""The GitHub forge against a fake GitHub (``responses``), and the lane's token handling.

Payloads follow the shapes of GitHub's REST documentation. Any request no test registered fails
the test (see the ``github`` fixture), and nothing sleeps for real: the forge gets a fake clock.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import responses
from responses import matchers

from reconciler.node import credentials, github_http
from reconciler.node.credentials import read_token
from reconciler.node.errors import NodeError
from reconciler.node.forge_github import GitHubForge
from reconciler.node.github_feedback import CHECKS_RECHECK, SETTLE
from reconciler.node.pulls import Pulls
from reconciler.protocol import PullRequest
from tests.support.fake_github import FakeGitHub, VirtualTime

REPO = "acme/webapp"
# PyGithub's connection names the port explicitly, and responses matches it literally.
API = "https://api.github.com:443"
PULLS = f"{API}/repos/{REPO}/pulls"
TOKEN = "ghp_" + "Z9y8X7w6V5u4T3s2R1q0" * 2
SHA = "6dcb09b5b57875f334f61aebed695e2e4193db5e"
BASE = "e5bd3914e2e596debea16f433f57875b5b90bcd6"


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    def no_real_sleep(seconds: float) -> None:
        raise AssertionError(f"something slept for real ({seconds} s)")

    monkeypatch.setattr(time, "sleep", no_real_sleep)
    github_http.forget_process_memory()
    yield
    github_http.forget_process_memory()


@pytest.fixture
def github() -> Iterator[responses.RequestsMock]:
    """A fake GitHub; a request nobody registered fails the test even if the forge retried it."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps
        unmatched = [
            f"{c.request.method} {c.request.url}"
            for c in rsps.calls
            if isinstance(c.response, requests.ConnectionError)
            and "Connection refused by Responses" in str(c.response)
        ]
        assert not unmatched, f"unexpected GitHub requests: {unmatched}"


@pytest.fixture
def fake() -> VirtualTime:
    return VirtualTime()


@pytest.fixture
def forge(fake: VirtualTime) -> Pulls:
    return Pulls(
        GitHubForge(
            REPO, TOKEN, retry_deadline=60.0, sleep=fake.sleep, clock=fake.clock, wall=fake.wall
        )
    )


def pull(
    number: int,
    head: str,
    *,
    state: str = "open",
    merged: bool = False,
    body: str | None = "",
    title: str = "Add feature",
    updated: str = "2026-11-02T10:00:00Z",
) -> dict[str, Any]:
    """A pull request as GitHub's REST API returns it (trimmed to the fields that matter)."""
    closed = state == "closed"
    repo = {"id": 1296269, "name": "webapp", "full_name": REPO, "private": True}
    return {
        "url": f"https://api.github.com/repos/{REPO}/pulls/{number}",
        "id": 1000 + number,
        "node_id": f"PR_kwDOABCD{number}",
        "html_url": f"https://github.com/{REPO}/pull/{number}",
        "number": number,
        "state": state,
        "locked": False,
        "title": title,
        "user": {"login": "reconciler-bot", "id": 42, "type": "User"},
        "body": body,
        "labels": [],
        "created_at": "2026-11-01T09:00:00Z",
        "updated_at": updated,
        "closed_at": "2026-11-03T12:00:00Z" if closed else None,
        "merged_at": "2026-11-03T12:00:00Z" if merged else None,
        "merge_commit_sha": SHA if merged else None,
        "draft": False,
        "head": {"label": f"acme:{head}", "ref": head, "sha": SHA, "repo": repo},
        "base": {
            "label": "acme:main",
            "ref": "main",
            "sha": "e5bd3914e2e596debea16f433f57875b5b90bcd6",
            "repo": repo,
        },
        "author_association": "OWNER",
    }


def ref(sha: str) -> dict[str, Any]:
    """A branch's ref as GitHub's git API returns it."""
    return {"ref": "refs/heads/main", "object": {"sha": sha, "type": "commit"}}


def list_query(head: str | None = None) -> list[Any]:
    params = {"state": "all", "per_page": "100"}
    if head is not None:
        params["head"] = f"acme:{head}"
    return [matchers.query_param_matcher(params)]


def sent(call: Any) -> dict[str, Any]:
    body = call.request.body
    return dict(json.loads(body.decode() if isinstance(body, bytes) else body))


MARKED = "Implements the thing.\n\n<!-- reconciler:task=add-login -->"


# ------------------------------------------------------------------------------ listing


def test_list_maps_states_markers_and_times(github: responses.RequestsMock, forge: Pulls) -> None:
    github.get(
        PULLS,
        match=list_query(),
        json=[
            pull(3, "agent/add-login", body=MARKED),
            pull(2, "agent/old", state="closed", merged=True, body="<!-- reconciler:task=old -->"),
            pull(1, "feature/manual", state="closed", body=None),
        ],
        headers={"ETag": 'W/"a1"'},
    )
    pulls = forge.list_pulls()
    assert [(p.number, p.state, p.task) for p in pulls] == [
        (1, "closed", None),
        (2, "merged", "old"),
        (3, "open", "add-login"),
    ]
    opened = pulls[2]
    assert opened.url == f"https://github.com/{REPO}/pull/3"
    assert (opened.head, opened.base, opened.head_sha) == ("agent/add-login", "main", SHA)
    assert opened.updated_at == 1793613600.0  # 2026-11-02T10:00:00Z
    assert pulls[1].updated_at == 1793707200.0  # merged_at, 2026-11-03T12:00:00Z
    assert pulls[0].body == ""


def test_unchanged_list_is_a_conditional_request_answered_304(
    github: responses.RequestsMock, forge: Pulls
) -> None:
    seen: list[str | bytes | None] = []

    def pulls_endpoint(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        seen.append(request.headers.get("If-None-Match"))
        if request.headers.get("If-None-Match") == '"etag-1"':
            return 304, {"ETag": '"etag-1"'}, ""
        return 200, {"ETag": '"etag-1"'}, json.dumps([pull(7, "agent/x", body=MARKED)])

    github.add_callback(responses.GET, PULLS, callback=pulls_endpoint, match=list_query())
    first = forge.list_pulls()
    # A second forge for the same repo and token (the next pass) shares the ETag cache.
    second = Pulls(GitHubForge(REPO, TOKEN, sleep=VirtualTime().sleep)).list_pulls()
    assert first == second
    assert [p.number for p in second] == [7]
    assert seen == [None, '"etag-1"']  # one request per pass; the second cost no rate limit


def test_the_etags_survive_the_process_in_the_lane_cache_file(
    github: responses.RequestsMock, tmp_path: Path
) -> None:
    seen: list[str | bytes | None] = []

    def pulls_endpoint(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        seen.append(request.headers.get("If-None-Match"))
        if request.headers.get("If-None-Match") == '"etag-1"':
            return 304, {"ETag": '"etag-1"'}, ""
        return 200, {"ETag": '"etag-1"'}, json.dumps([pull(7, "agent/x", body=MARKED)])

    github.add_callback(responses.GET, PULLS, callback=pulls_endpoint, match=list_query())
    cache = tmp_path / "lane" / ".cache" / "github"
    first = GitHubForge(REPO, TOKEN, sleep=VirtualTime().sleep, cache_dir=str(cache))
    listed = first.list_pulls()
    first.flush()
    [path] = list(cache.iterdir())
    assert path.stat().st_mode & 0o777 == 0o600
    assert cache.stat().st_mode & 0o777 == 0o700
    assert TOKEN not in path.read_text()
    github_http.forget_process_memory()  # a new process: nothing in memory
    second = GitHubForge(REPO, TOKEN, sleep=VirtualTime().sleep, cache_dir=str(cache))
    assert second.list_pulls() == listed
    assert seen == [None, '"etag-1"']  # the new process asked conditionally: no point spent
    # a file of the first version (etag, items, next page, last use) still serves its ETags
    data = json.loads(path.read_text())
    data["pages"] = {url: page[:4] for url, page in data["pages"].items()}
    path.write_text(json.dumps(data))
    github_http.forget_process_memory()
    older = GitHubForge(REPO, TOKEN, sleep=VirtualTime().sleep, cache_dir=str(cache))
    assert older.list_pulls() == listed
    assert seen == [None, '"etag-1"', '"etag-1"']
    seen.clear()
    # a cache file that is not ours (corrupt, older version) is a cold start, not an error
    path.write_text("{not json")
    github_http.forget_process_memory()
    third = GitHubForge(REPO, TOKEN, sleep=VirtualTime().sleep, cache_dir=str(cache))
    assert third.list_pulls() == listed
    assert seen == [None]


def test_cached_answers_unused_for_a_day_are_dropped(
    github: responses.RequestsMock, tmp_path: Path
) -> None:
    clock = VirtualTime()
    github.get(PULLS, json=[], headers={"ETag": '"e"'}, match=list_query())
    forge = GitHubForge(REPO, TOKEN, sleep=clock.sleep, clock=clock.clock, wall=clock.wall)
    forge.list_pulls()
    forge.flush()
    assert len(forge.client._cache.pages) == 1
    clock.now += 86400 + 1
    forge.flush()
    assert forge.client._cache.pages == {}  # e.g. the checks of a commit no PR points at any more


def test_list_follows_pagination(github: responses.RequestsMock, forge: Pulls) -> None:
    page2 = "https://api.github.com/repositories/1296269/pulls?state=all&per_page=100&page=2"
    github.get(
        PULLS,
        match=list_query(),
        json=[pull(n, f"agent/t{n}") for n in range(200, 100, -1)],
        headers={"Link": f'<{page2}>; rel="next", <{page2}>; rel="last"', "ETag": '"p1"'},
    )
    github.get(
        f"{API}/repositories/1296269/pulls",
        match=[matchers.query_param_matcher({"state": "all", "per_page": "100", "page": "2"})],
        json=[pull(n, f"agent/t{n}") for n in range(100, 0, -1)],
        headers={"ETag": '"p2"'},
    )
    numbers = [p.number for p in forge.list_pulls()]
    assert numbers == list(range(1, 201))
    assert len(github.calls) == 2


def test_head_filter_sends_owner_prefix(github: responses.RequestsMock, forge: Pulls) -> None:
    github.get(
        PULLS, match=list_query("agent/add-login"), json=[pull(3, "agent/add-login", body=MARKED)]
    )
    assert [p.number for p in forge.list_pulls("agent/add-login")] == [3]
    assert "head=acme%3Aagent%2Fadd-login" in str(github.calls[0].request.url)


# ------------------------------------------------------------------------------ writes


def test_open_creates_with_marker_draft_and_labels(
    github: responses.RequestsMock, forge: Pulls
) -> None:
    github.get(PULLS, match=list_query("agent/add-login"), json=[])
    github.post(PULLS, status=201, json=pull(9, "agent/add-login", body=MARKED))
    github.post(
        f"{API}/repos/{REPO}/issues/9/labels",
        json=[{"id": 208045946, "name": "agent", "color": "f29513", "default": False}],
    )
    pr, created = forge.open_pull(
        task="add-login",
        head="agent/add-login",
        base="main",
        title="Add login",
        body="Implements the thing.",
        draft=True,
        labels=["agent"],
    )
    assert created
    assert (pr.number, pr.task, pr.state) == (9, "add-login", "open")
    create = sent(github.calls[1])
    assert create == {
        "title": "Add login",
        "body": MARKED,
        "head": "agent/add-login",
        "base": "main",
        "draft": True,
    }
    assert sent(github.calls[2]) == {"labels": ["agent"]}


def test_open_requests_reviews_from_users_and_teams(
    github: responses.RequestsMock, forge: Pulls
) -> None:
    github.get(PULLS, match=list_query("agent/add-login"), json=[])
    github.post(PULLS, status=201, json=pull(9, "agent/add-login", body=MARKED))
    github.post(
        f"{API}/repos/{REPO}/pulls/9/requested_reviewers",
        status=201,
        json=pull(9, "agent/add-login", body=MARKED),
    )
    pr, created = forge.open_pull(
        task="add-login",
        head="agent/add-login",
        base="main",
        title="Add login",
        body="Implements the thing.",
        reviewers=["octocat", "acme/web-reviewers"],
    )
    assert created and pr.number == 9
    assert sent(github.calls[2]) == {"reviewers": ["octocat"], "team_reviewers": ["web-reviewers"]}


def test_open_adopts_an_existing_open_pr_without_creating(
    github: responses.RequestsMock, forge: Pulls
) -> None:
    github.get(
        PULLS,
        match=list_query("agent/add-login"),
        json=[
            pull(4, "agent/add-login", state="closed", body=MARKED),
            pull(5, "agent/add-login", body=MARKED),
        ],
    )
    pr, created = forge.open_pull(
        task="add-login", head="agent/add-login", base="main", title="t", body="b"
    )
    assert (pr.number, created) == (5, False)
    assert [c.request.method for c in github.calls] == ["GET"]


def test_open_422_duplicate_is_resolved_by_searching_again(
    github: responses.RequestsMock, forge: Pulls
) -> None:
    github.get(PULLS, match=list_query("agent/add-login"), json=[])
    github.get(PULLS, match=list_query("agent/add-login"), json=[pull(6, "agent/add-login")])
    github.post(
        PULLS,
        status=422,
        json={
            "message": "Validation Failed",
            "errors": [
                {
                    "resource": "PullRequest",
                    "code": "custom",
                    "message": "A pull request already exists for acme:agent/add-login.",
                }
            ],
            "documentation_url": "https://docs.github.com/rest/pulls/pulls#create-a-pull-request",
            "status": "422",
        },
    )
    pr, created = forge.open_pull(
        task="add-login", head="agent/add-login", base="main", title="t", body="b"
    )
    assert (pr.number, created) == (6, False)
    assert [c.request.method for c in github.calls] == ["GET", "POST", "GET"]


def test_close_comments_then_closes(github: responses.RequestsMock, forge: Pulls) -> None:
    github.get(f"{PULLS}/5", json=pull(5, "agent/add-login", body=MARKED))
    github.post(
        f"{API}/repos/{REPO}/issues/5/comments",
        status=201,
        json={"id": 1, "body": "Task removed at control revision abc123.", "user": {"login": "x"}},
    )
    github.patch(
        f"{PULLS}/5",
        match=[matchers.json_params_matcher({"state": "closed"})],
        json=pull(5, "agent/add-login", state="closed", body=MARKED),
    )
    pr = forge.close_pull(5, "Task removed at control revision abc123.")
    assert pr.state == "closed"
    assert [c.request.method for c in github.calls] == ["GET", "POST", "PATCH"]
    assert sent(github.calls[1]) == {"body": "Task removed at control revision abc123."}


def test_update_keeps_the_marker(github: responses.RequestsMock, forge: Pulls) -> None:
    github.get(f"{PULLS}/5", json=pull(5, "agent/add-login", body=MARKED))
    github.patch(f"{PULLS}/5", json=pull(5, "agent/add-login", title="New", body=MARKED))
    pr = forge.update_pull(5, title="New", body="Rewritten.")
    assert pr.title == "New"
    assert sent(github.calls[1]) == {
        "title": "New",
        "body": "Rewritten.\n\n<!-- reconciler:task=add-login -->",
    }


def test_writes_are_spaced_a_second_apart(
    github: responses.RequestsMock, forge: Pulls, fake: VirtualTime
) -> None:
    github.get(f"{PULLS}/5", json=pull(5, "agent/add-login", body=MARKED))
    github.post(f"{API}/repos/{REPO}/issues/5/comments", status=201, json={"id": 1})
    forge.update_pull(5, comment="first")
    fake.now += 0.25
    forge.update_pull(5, comment="second")
    assert fake.sleeps == [pytest.approx(0.75)]


# ------------------------------------------------------------------------------ faults


def test_502_is_retried_with_the_injected_sleep(
    github: responses.RequestsMock, forge: Pulls, fake: VirtualTime
) -> None:
    github.get(PULLS, match=list_query(), status=502, body="<html>Bad gateway</html>")
    github.get(PULLS, match=list_query(), json=[pull(1, "agent/a")])
    assert [p.number for p in forge.list_pulls()] == [1]
    assert fake.sleeps == [1.0]


def test_connection_reset_is_retried(
    github: responses.RequestsMock, forge: Pulls, fake: VirtualTime
) -> None:
    github.get(PULLS, body=requests.ConnectionError("Connection reset by peer"))
    github.get(PULLS, json=[pull(1, "agent/a")])
    assert [p.number for p in forge.list_pulls()] == [1]
    assert fake.sleeps == [1.0]


def test_secondary_limit_honours_retry_after(
    github: responses.RequestsMock, forge: Pulls, fake: VirtualTime
) -> None:
    github.post(
        f"{API}/repos/{REPO}/issues/5/comments",
        status=403,
        headers={"Retry-After": "7"},
        json={
            "message": "You have exceeded a secondary rate limit. Please wait a few minutes.",
            "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api",
        },
    )
    github.post(f"{API}/repos/{REPO}/issues/5/comments", status=201, json={"id": 1})
    github.get(f"{PULLS}/5", json=pull(5, "agent/add-login"))
    forge.update_pull(5, comment="hello")
    assert fake.sleeps == [7.0]


def test_primary_limit_waits_for_the_reset(
    github: responses.RequestsMock, forge: Pulls, fake: VirtualTime
) -> None:
    reset = int(fake.wall()) + 30
    github.get(
        PULLS,
        status=403,
        headers={"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(reset)},
        json={"message": "API rate limit exceeded for user ID 42."},
    )
    github.get(PULLS, json=[])
    assert forge.list_pulls() == []
    assert fake.sleeps == [31.0]


def test_a_reset_beyond_the_deadline_gives_up_at_once_naming_the_time(
    github: responses.RequestsMock, forge: Pulls, fake: VirtualTime
) -> None:
    reset = int(fake.wall()) + 3600
    github.get(
        PULLS,
        status=403,
        headers={"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(reset)},
        json={"message": "API rate limit exceeded for user ID 42."},
    )
    with pytest.raises(NodeError) as caught:
        forge.list_pulls()
    assert caught.value.temporary
    assert fake.sleeps == []  # an hour is not waited out inside one request
    until = time.strftime("%H:%M:%S UTC", time.gmtime(reset + 1))
    assert "asked to wait 3601 s" in str(caught.value) and until in str(caught.value)


def test_429_gives_up_after_the_deadline(github: responses.RequestsMock, fake: VirtualTime) -> None:
    forge = GitHubForge(REPO, TOKEN, retry_deadline=10.0, sleep=fake.sleep, clock=fake.clock)
    github.get(PULLS, status=429, json={"message": f"Too many requests for {TOKEN}"})
    with pytest.raises(NodeError) as caught:
        forge.list_pulls()
    assert caught.value.temporary
    assert fake.sleeps == [1.0, 2.0, 4.0]  # the next wait (8 s) would pass the 10 s deadline
    text = str(caught.value)
    assert "gave up" in text
    assert "429" in text
    assert TOKEN not in text


def test_401_says_the_token_was_rejected(github: responses.RequestsMock, forge: Pulls) -> None:
    github.get(
        PULLS,
        status=401,
        json={"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest"},
    )
    with pytest.raises(NodeError) as caught:
        forge.list_pulls()
    assert not caught.value.temporary
    assert "rejected the token" in str(caught.value)
    assert len(github.calls) == 1


def test_404_on_a_pull_request_names_the_pr_not_the_repo(
    github: responses.RequestsMock, forge: Pulls
) -> None:
    github.get(f"{PULLS}/77", status=404, json={"message": "Not Found"})
    with pytest.raises(NodeError) as caught:
        forge.close_pull(77, "bye")
    assert "GET /repos/acme/webapp/pulls/77" in str(caught.value)
    assert "pull request is gone" in str(caught.value)
    assert "not visible" not in str(caught.value)


def test_404_says_the_repo_is_not_visible(github: responses.RequestsMock, forge: Pulls) -> None:
    github.get(PULLS, status=404, json={"message": "Not Found"})
    with pytest.raises(NodeError) as caught:
        forge.list_pulls()
    assert not caught.value.temporary
    assert re.search(r"acme/webapp is not visible to this token", str(caught.value))


def test_forbidden_message_is_redacted(github: responses.RequestsMock, forge: Pulls) -> None:
    github.post(PULLS, status=403, json={"message": f"Resource not accessible by {TOKEN}"})
    github.get(PULLS, json=[])
    with pytest.raises(NodeError) as caught:
        forge.open_pull(task="t", head="agent/t", base="main", title="t", body="b")
    assert TOKEN not in str(caught.value)
    assert "***" in str(caught.value)
    assert TOKEN not in repr(forge)


# ------------------------------------------------------------------------------ credentials


def test_token_file_must_not_be_readable_by_others(tmp_path: Path) -> None:
    path = tmp_path / "github-token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o644)
    with pytest.raises(NodeError) as caught:
        read_token(str(path), {"GH_TOKEN": "ignored"})
    assert f"chmod 600 {path}" in str(caught.value)
    path.chmod(0o600)
    assert read_token(str(path), {}) == TOKEN


def test_token_file_in_home_and_missing(tmp_path: Path) -> None:
    config = Path(os.path.expanduser("~/.config/reconciler"))
    config.mkdir(parents=True)
    (config / "github-token").write_text(TOKEN)
    (config / "github-token").chmod(0o600)
    assert read_token("~/.config/reconciler/github-token", {}) == TOKEN
    with pytest.raises(NodeError, match="does not exist"):
        read_token(str(tmp_path / "nope"), {"GH_TOKEN": "x"})


def test_token_from_environment() -> None:
    assert read_token(None, {"GH_TOKEN": "a", "GITHUB_TOKEN": "b"}) == "a"
    assert read_token(None, {"GITHUB_TOKEN": "b"}) == "b"
    with pytest.raises(NodeError) as caught:
        read_token(None, {})
    assert "GH_TOKEN" in str(caught.value)
    assert "GITHUB_TOKEN" in str(caught.value)


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (f"{TOKEN}\nsecondhalf-of-it\n", "holds 2 lines; write only the token, on one line"),
        (f"token {TOKEN}", "holds white space inside the token; write only the token"),
        (f"{TOKEN}\x00tail-of-it", "holds characters no token has"),
    ],
)
def test_a_token_that_is_not_one_word_is_refused_without_quoting_it(
    tmp_path: Path, content: str, says: str
) -> None:
    path = tmp_path / "github-token"
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(NodeError) as caught:
        read_token(str(path), {})
    message = str(caught.value)
    assert message.startswith(f"token file {path} {says}")
    assert TOKEN not in message and "half" not in message and "tail" not in message
    # remembered all the same: any message that quotes a piece of it is masked
    for piece in content.replace("\x00", " ").split():
        if len(piece) >= 6:
            assert credentials.scrub(f"said {piece}.") == "said ***."
    with pytest.raises(NodeError, match="GH_TOKEN in the lane's login environment holds 2 lines"):
        read_token(None, {"GH_TOKEN": f"{TOKEN}\nmore"})


def test_feedback_reads_failing_checks_statuses_and_change_requests(
    github: responses.RequestsMock, forge: Pulls, fake: VirtualTime
) -> None:
    github.get(
        f"{PULLS}?state=all&per_page=100",
        json=[pull(7, "agent/add-login", body=MARKED)],
        headers={"ETag": 'W/"list-1"'},
    )
    github.get(
        f"{API}/repos/{REPO}/git/ref/heads/main", json=ref(BASE), headers={"ETag": 'W/"main"'}
    )
    (pr,) = forge.list_pulls()
    assert pr.head_sha == SHA
    github.get(
        f"{PULLS}/7",
        json={**pull(7, "agent/add-login"), "mergeable": True, "mergeable_state": "clean"},
        headers={"ETag": 'W/"pr-7"'},
    )
    github.get(
        f"{API}/repos/{REPO}/commits/{SHA}/check-runs",
        json={
            "total_count": 2,
            "check_runs": [
                {
                    "id": 1,
                    "name": "lint",
                    "status": "completed",
                    "conclusion": "success",
                    "output": {"title": None, "summary": None, "text": None},
                },
                {
                    "id": 2,
                    "name": "test",
                    "status": "completed",
                    "conclusion": "failure",
                    "output": {"title": "1 failed", "summary": "E assert 1 == 2", "text": None},
                },
            ],
        },
        headers={"ETag": 'W/"runs-1"'},
    )
    github.get(
        f"{API}/repos/{REPO}/commits/{SHA}/status",
        json={
            "state": "failure",
            "total_count": 1,
            "statuses": [{"context": "ci/legacy", "state": "error", "description": "build broke"}],
        },
        headers={"ETag": 'W/"status-1"'},
    )
    github.get(
        f"{API}/repos/{REPO}/pulls/7/reviews",
        json=[
            {
                "id": 80,
                "user": {"login": "alice"},
                "state": "CHANGES_REQUESTED",
                "body": "Please rename.",
                "commit_id": SHA,
            },
            {"id": 81, "user": {"login": "bob"}, "state": "APPROVED", "body": "", "commit_id": SHA},
            {
                "id": 79,
                "user": {"login": "carol"},
                "state": "CHANGES_REQUESTED",
                "body": "old news",
                "commit_id": "f" * 40,
            },
        ],
        headers={"ETag": 'W/"reviews-1"'},
    )
    github.get(
        f"{API}/repos/{REPO}/pulls/7/comments",
        json=[
            {
                "id": 1,
                "pull_request_review_id": 80,
                "path": "app/login.py",
                "line": 12,
                "body": "Call it authenticate().",
            },
            {"id": 2, "pull_request_review_id": 79, "path": "x.py", "line": 1, "body": "stale"},
        ],
        headers={"ETag": 'W/"comments-1"'},
    )
    seen = forge.with_feedback(pr)
    assert seen.checks == "failure"
    assert seen.check_feedback[0].startswith("check `test` failure:")
    assert "E assert 1 == 2" in seen.check_feedback[0]
    assert seen.check_feedback[1] == "status `ci/legacy` error: build broke"
    assert seen.review_feedback == [
        "review by alice requests changes: Please rename.",
        "app/login.py:12: Call it authenticate().",
    ]
    # unchanged on the next pass (the same head, updated_at and base, every check final): the
    # answers stand (once given a minute after the PR last moved) and nothing is asked but the
    # list and the base branch
    fake.now += SETTLE
    forge.with_feedback(pr)
    asked = len(github.calls)
    (pr,) = forge.list_pulls()
    again = forge.with_feedback(pr)
    assert (again.checks, again.check_feedback, again.review_feedback) == (
        seen.checks,
        seen.check_feedback,
        seen.review_feedback,
    )
    assert [c.request.path_url.split("?")[0] for c in github.calls[asked:]] == [
        f"/repos/{REPO}/pulls",
        f"/repos/{REPO}/git/ref/heads/main",
    ]


def test_mergeable_false_is_a_conflict_and_null_is_asked_again_later(
    github: responses.RequestsMock, forge: Pulls, fake: VirtualTime
) -> None:
    """GitHub computes ``mergeable`` lazily: null means "not known yet", so nothing is decided
    and the next pass asks again (a conditional request: free while nothing changed)."""
    github.get(f"{PULLS}?state=all&per_page=100", json=[pull(7, "agent/add-login", body=MARKED)])
    github.get(f"{API}/repos/{REPO}/git/ref/heads/main", json=ref(BASE))
    (pr,) = forge.list_pulls()
    assert (pr.mergeable, pr.behind, pr.conflicts) == (None, False, [])  # lists never say
    # (GitHub's answer, its ETag, where the base branch is when the pass asks)
    answers: list[tuple[dict[str, Any], str, str]] = [
        ({"mergeable": None, "mergeable_state": "unknown"}, 'W/"m-1"', BASE),
        ({"mergeable": False, "mergeable_state": "dirty"}, 'W/"m-2"', BASE),  # null: asked again
        ({"mergeable": True, "mergeable_state": "behind"}, 'W/"m-3"', "1" * 40),  # base moved
        ({"mergeable": True, "mergeable_state": "clean"}, 'W/"m-4"', "2" * 40),
    ]
    seen = []
    for fields, etag, base in answers:
        github.replace(responses.GET, f"{API}/repos/{REPO}/git/ref/heads/main", json=ref(base))
        github.get(
            f"{PULLS}/7", json={**pull(7, "agent/add-login"), **fields}, headers={"ETag": etag}
        )
        forge.list_pulls()
        got = forge.with_feedback(pr, ())
        seen.append((got.mergeable, got.behind, got.conflicts))
        assert github.calls[-1].request.url == f"{PULLS}/7"
    assert seen == [(None, False, []), (False, True, []), (True, True, []), (True, False, [])]
    # each ask after the first names what it saw: GitHub answers 304 while nothing changed
    assert github.calls[-1].request.headers.get("If-None-Match") == 'W/"m-3"'
    # a known answer stands while the head and the base stay: the PR is asked again only until
    # the answer was given a minute after they moved there
    fake.now += SETTLE
    forge.list_pulls()
    assert forge.with_feedback(pr, ()).mergeable is True
    assert github.calls[-1].request.url == f"{PULLS}/7"
    forge.list_pulls()
    assert forge.with_feedback(pr, ()).mergeable is True
    assert github.calls[-1].request.url == f"{API}/repos/{REPO}/git/ref/heads/main"
    github.replace(responses.GET, f"{API}/repos/{REPO}/git/ref/heads/main", json=ref(BASE))
    forge.list_pulls()
    # an answer about another head commit (a push in between) is not about this one
    other = {**pull(7, "agent/add-login"), "mergeable": False, "mergeable_state": "dirty"}
    other["head"] = {**other["head"], "sha": "f" * 40}
    github.get(f"{PULLS}/7", json=other, headers={"ETag": 'W/"m-5"'})
    assert forge.with_feedback(pr, ()).mergeable is None
    # show: the same answer for one PR, read with its comments
    github.get(f"{PULLS}/7", json={**pull(7, "agent/add-login", body=MARKED), "mergeable": False})
    github.get(
        f"{API}/repos/{REPO}/issues/7/comments?per_page=100",
        json=[
            {
                "user": {"login": "alice"},
                "body": "Rebase please.",
                "created_at": "2026-11-02T10:00:00Z",
            }
        ],
    )
    shown, comments, diff = forge.show(7)
    assert (shown.task, shown.mergeable, diff) == ("add-login", False, None)
    assert [(c.author, c.body) for c in comments] == [("alice", "Rebase please.")]
    with pytest.raises(NodeError, match="lives on GitHub: see its changes there"):
        forge.show(7, diff=True)


def test_a_github_pr_is_merged_on_github_not_by_the_reconciler(forge: Pulls) -> None:
    with pytest.raises(NodeError, match=r"PR #3 of .* lives on GitHub: merge it there"):
        forge.merge_pull(3)


# ------------------------------------------------------------------- what a pass costs


def task_pulls(fake_hub: FakeGitHub, count: int, *, ci: bool = True) -> None:
    """``count`` open task PRs, each on its own head commit, as a busy repository has them;
    with ``ci``, each head with a finished check."""
    for number in range(1, count + 1):
        head = f"agent/task-{number}"
        fake_hub.pulls.append(
            {
                "number": number,
                "html_url": f"https://github.com/{REPO}/pull/{number}",
                "state": "open",
                "title": f"Task {number}",
                "body": f"Task.\n\n<!-- reconciler:task=task-{number} -->",
                "draft": False,
                "head": {"ref": head, "sha": f"{number:040x}", "label": f"acme:{head}"},
                "base": {"ref": "main"},
                "merged_at": None,
                "closed_at": None,
                "updated_at": "2026-11-02T10:00:00Z",
                "labels": [],
            }
        )
        if ci:
            fake_hub.check(f"{number:040x}", "test", "completed", "success")
    fake_hub.version += 1


def a_pass(forge: Pulls, hub: FakeGitHub, clock: VirtualTime) -> dict[int, PullRequest]:
    """What observing the repository does, a minute after the last pass: the list, every open
    task PR's feedback, the cache kept; its requests are in ``hub.requests`` (cleared first)."""
    clock.now += SETTLE
    hub.requests.clear()
    seen = {p.number: forge.with_feedback(p) for p in forge.list_pulls() if p.task}
    forge.flush()
    return seen


@pytest.fixture
def hub(github: responses.RequestsMock) -> FakeGitHub:
    return FakeGitHub(github, REPO, TOKEN)


@pytest.mark.parametrize("count", [3, 90])
def test_an_unchanged_pass_costs_the_list_and_the_base_whatever_the_number_of_prs(
    hub: FakeGitHub, forge: Pulls, fake: VirtualTime, count: int
) -> None:
    task_pulls(hub, count)
    first = a_pass(forge, hub, fake)
    assert len(first) == count and hub.points > count  # the first pass reads every PR
    points = hub.points
    a_pass(forge, hub, fake)
    assert hub.requests == [
        f"GET /repos/{REPO}/pulls?per_page=100&state=all",
        f"GET /repos/{REPO}/git/ref/heads/main",
    ]
    assert hub.points == points  # both answered 304


def test_the_cache_file_keeps_what_was_read_for_a_new_process(
    hub: FakeGitHub, fake: VirtualTime, tmp_path: Path
) -> None:
    def forge() -> Pulls:
        return Pulls(
            GitHubForge(
                REPO,
                TOKEN,
                sleep=fake.sleep,
                clock=fake.clock,
                wall=fake.wall,
                cache_dir=str(tmp_path),
            )
        )

    task_pulls(hub, 5)
    a_pass(forge(), hub, fake)
    github_http.forget_process_memory()
    a_pass(forge(), hub, fake)
    assert len(hub.requests) == 2


def test_a_new_review_rereads_only_that_prs_reviews(
    hub: FakeGitHub, forge: Pulls, fake: VirtualTime
) -> None:
    task_pulls(hub, 4)
    a_pass(forge, hub, fake)
    hub.submit_review(3, "alice", "CHANGES_REQUESTED", "Rename it.", ("app.py:7: Call it x.",))
    seen = a_pass(forge, hub, fake)
    assert [r for r in hub.requests if "/pulls/" in r] == [
        f"GET /repos/{REPO}/pulls/3/reviews",
        f"GET /repos/{REPO}/pulls/3/comments",
    ]
    assert seen[3].review_feedback == [
        "review by alice requests changes: Rename it.",
        "app.py:7: Call it x.",
    ]
    assert all(seen[n].review_feedback == [] for n in (1, 2, 4))
    a_pass(forge, hub, fake)
    assert len(hub.requests) == 2


def test_a_pending_check_is_polled_until_it_settles_then_not(
    hub: FakeGitHub, forge: Pulls, fake: VirtualTime
) -> None:
    task_pulls(hub, 2)
    sha = hub.pulls[0]["head"]["sha"]
    hub.check(sha, "test", "in_progress")
    a_pass(forge, hub, fake)
    checks = f"GET /repos/{REPO}/commits/{sha}/check-runs"
    for _ in range(2):
        assert a_pass(forge, hub, fake)[1].checks == "pending"
        assert checks in hub.requests and len(hub.requests) == 4  # list, base, runs, status
    hub.check(sha, "test", "completed", "failure")
    assert a_pass(forge, hub, fake)[1].checks == "failure"
    assert checks in hub.requests
    seen = a_pass(forge, hub, fake)
    assert seen[1].checks == "failure" and seen[1].check_feedback
    assert len(hub.requests) == 2


def test_a_new_head_rereads_everything_of_that_pr(
    hub: FakeGitHub, forge: Pulls, fake: VirtualTime
) -> None:
    task_pulls(hub, 3)
    a_pass(forge, hub, fake)
    pushed = "a" * 40
    hub.pulls[1]["head"]["sha"] = pushed
    hub.touch(hub.pulls[1])
    seen = a_pass(forge, hub, fake)
    assert sorted(hub.requests[2:]) == sorted(
        [
            f"GET /repos/{REPO}/pulls/2",
            f"GET /repos/{REPO}/commits/{pushed}/check-runs",
            f"GET /repos/{REPO}/commits/{pushed}/status",
            f"GET /repos/{REPO}/pulls/2/reviews",
        ]
    )
    assert seen[2].checks is None  # CI has not reported on the new head yet


def test_final_checks_are_asked_again_after_the_recheck_period(
    hub: FakeGitHub, forge: Pulls, fake: VirtualTime
) -> None:
    """A re-run of a finished check does not move the PR: it is seen within CHECKS_RECHECK."""
    task_pulls(hub, 1)
    sha = hub.pulls[0]["head"]["sha"]
    assert a_pass(forge, hub, fake)[1].checks == "success"
    hub.check(sha, "test", "completed", "failure")  # re-run, and it fails now
    assert a_pass(forge, hub, fake)[1].checks == "success"  # not asked yet
    fake.now += CHECKS_RECHECK
    assert a_pass(forge, hub, fake)[1].checks == "failure"


def test_a_head_without_checks_is_polled_until_the_recheck_period(
    hub: FakeGitHub, forge: Pulls, fake: VirtualTime
) -> None:
    """CI may take a while to report on a new head: none reported is not final at first."""
    task_pulls(hub, 1, ci=False)
    a_pass(forge, hub, fake)
    assert len(a_pass(forge, hub, fake)[1].check_feedback) == 0 and len(hub.requests) == 4
    fake.now += CHECKS_RECHECK
    a_pass(forge, hub, fake)
    assert len(hub.requests) == 4  # asked once more: still none, now final
    a_pass(forge, hub, fake)
    assert len(hub.requests) == 2
