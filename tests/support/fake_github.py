"""A stateful fake of GitHub's pulls API for one repository, served through ``responses``.

Payload shapes follow GitHub's REST documentation (pulls list/create/get/update, 422 duplicate,
a PR's ``mergeable`` computed from the real remote, a branch's ref, check runs, combined status,
reviews and review comments, issue comments, ``/rate_limit``, ETag/304). It counts the
requests and the rate-limit points they cost (a 304 and ``/rate_limit`` are free), and it can
inject faults: an HTTP status, a dropped connection or a read timeout on the next requests that
match a pattern, before or after the request took effect (a create that succeeded on GitHub but
whose answer was lost is the case that breeds duplicate PRs).

Shared by the node contract tests, the end-to-end tests and the benchmark.
"""

from __future__ import annotations

import calendar
import hashlib
import json
import re
import subprocess
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import responses

API = r"https://api\.github\.com(:443)?"
Reply = tuple[int, dict[str, str], str]


@dataclass
class Fault:
    """Fail the next ``times`` requests whose "METHOD /path?query" matches ``match``.

    ``status`` is an HTTP status (with ``headers``), or ``"reset"`` / ``"timeout"`` for a
    dropped connection or a read timeout. ``after``: the request takes effect first and only
    its answer is lost.
    """

    match: str
    status: int | str
    times: int = 1
    headers: dict[str, str] = field(default_factory=dict)
    after: bool = False
    hits: int = 0

    def reply(self) -> Reply | Exception:
        if self.status == "reset":
            return requests.exceptions.ConnectionError("Connection reset by peer")
        if self.status == "timeout":
            return requests.exceptions.ReadTimeout("Read timed out. (read timeout=15)")
        assert isinstance(self.status, int)
        messages = {
            401: "Bad credentials",
            403: "You have exceeded a secondary rate limit. Please wait a few minutes.",
            404: "Not Found",
            429: "Too Many Requests",
        }
        body = {
            "message": messages.get(self.status, "Server Error"),
            "documentation_url": "https://docs.github.com/rest",
        }
        return self.status, dict(self.headers), json.dumps(body)


class _NotFound(Exception):
    """An unknown PR number: GitHub answers 404."""


class VirtualTime:
    """The forge's clock in tests: it moves only when the forge waits, and nothing sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def wall(self) -> float:
        return 1_800_000_000.0 + self.now


class FakeGitHub:
    """Pull requests of one repository, as GitHub's REST API answers for them."""

    def __init__(
        self,
        rsps: responses.RequestsMock,
        repo: str = "acme/app",
        token: str | None = None,
    ) -> None:
        self.owner, self.name = repo.split("/")
        self.token = token
        self.remote: Path | None = None  # the bare repository the lane pushes to
        self.failing: dict[str, str] = {}  # head sha → output of a failing check
        self.runs: dict[str, list[dict[str, Any]]] = {}  # head sha → more check runs
        self.reviews: dict[int, list[dict[str, Any]]] = {}  # PR number → its reviews
        self.review_comments: dict[int, list[dict[str, Any]]] = {}  # PR number → inline ones
        self.bases: dict[str, str] = {}  # branch → its commit, where there is no remote
        self.pulls: list[dict[str, Any]] = []
        self.comments: list[tuple[int, str]] = []
        self.requests: list[str] = []
        self.faults: list[Fault] = []
        self.points = 0  # rate-limit points spent: 304s and /rate_limit are free
        self.not_modified = 0
        self.version = 0
        self.can_push = True
        self.visible = True
        self.computing = False  # GitHub has not computed mergeability yet: it answers null
        base = f"{API}/repos/{self.owner}/{self.name}"
        routes: list[tuple[str, str, Callable[[Any], Reply]]] = [
            (responses.GET, r"/pulls(\?.*)?$", self.list_pulls),
            (responses.POST, r"/pulls$", self.create),
            (responses.GET, r"/pulls/\d+$", self.get),
            (responses.PATCH, r"/pulls/\d+$", self.patch),
            (responses.POST, r"/issues/\d+/comments$", self.comment),
            (responses.GET, r"/issues/\d+/comments(\?.*)?$", self.issue_comments),
            (responses.POST, r"/issues/\d+/labels$", self.labels),
            (responses.GET, r"$", self.repository),
            (responses.GET, r"/commits/[0-9a-f]+/check-runs$", self.check_runs),
            (responses.GET, r"/commits/[0-9a-f]+/status$", self.status),
            (responses.GET, r"/pulls/\d+/reviews$", self.pr_reviews),
            (responses.GET, r"/pulls/\d+/comments$", self.pr_review_comments),
            (responses.GET, r"/git/ref/heads/.+$", self.branch),
            (responses.POST, r"/pulls/\d+/requested_reviewers$", self.review),
        ]
        for method, suffix, handler in routes:
            rsps.add_callback(method, re.compile(base + suffix), self._serve(handler))
        rsps.add_callback(
            responses.GET, re.compile(API + r"/rate_limit$"), self._serve(self.rate_limit)
        )

    # ------------------------------------------------------------------ plumbing

    def _serve(self, handler: Callable[[Any], Reply]) -> Callable[[Any], Reply | Exception]:
        def serve(request: Any) -> Reply | Exception:
            if self.token is not None:
                assert request.headers.get("Authorization") == f"token {self.token}"
            line = f"{request.method} {request.path_url}"
            try:
                return self._faulty(request, line, handler)
            except _NotFound:
                self._seen(request)
                return 404, {}, json.dumps({"message": "Not Found"})

        return serve

    def _faulty(
        self, request: Any, line: str, handler: Callable[[Any], Reply]
    ) -> Reply | Exception:
        fault = next(
            (f for f in self.faults if f.hits < f.times and re.search(f.match, line)), None
        )
        if fault is None:
            return handler(request)
        fault.hits += 1
        self.requests.append(f"{line} [{fault.status}]")
        if fault.after:
            handler(request)
        return fault.reply()

    def _seen(self, request: Any, free: bool = False) -> None:
        self.requests.append(f"{request.method} {request.path_url}")
        self.points += 0 if free else 1

    def _conditional(self, request: Any, body: Any, etag: str | None = None) -> Reply:
        text = json.dumps(body, sort_keys=True)
        etag = etag or f'W/"{hashlib.sha1(text.encode()).hexdigest()[:16]}"'
        if request.headers.get("If-None-Match") == etag:
            self._seen(request, free=True)
            self.not_modified += 1
            return 304, {"ETag": etag}, ""
        self._seen(request)
        return 200, {"ETag": etag}, json.dumps(body)

    def _number(self, request: Any, index: int = -1) -> int:
        return int(request.path_url.split("?")[0].split("/")[index])

    def _find(self, number: int) -> dict[str, Any]:
        if not 1 <= number <= len(self.pulls):
            raise _NotFound
        return self.pulls[number - 1]

    def head_sha(self, ref: str) -> str:
        assert self.remote is not None
        return subprocess.run(
            ["git", "-C", str(self.remote), "rev-parse", f"refs/heads/{ref}"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()

    def _fresh(self, pr: dict[str, Any]) -> dict[str, Any]:
        """A PR's head sha is whatever its branch points at now, as on GitHub."""
        if self.remote is not None and pr["state"] == "open":
            pr["head"]["sha"] = self.head_sha(pr["head"]["ref"])
        return pr

    # ------------------------------------------------------------------ endpoints

    def repository(self, request: Any) -> Reply:
        if not self.visible:
            self._seen(request)
            return 404, {}, json.dumps({"message": "Not Found"})
        body = {
            "full_name": f"{self.owner}/{self.name}",
            "permissions": {"pull": True, "push": self.can_push, "admin": False},
        }
        return self._conditional(request, body, f'W/"repo-{self.can_push}"')

    def check_runs(self, request: Any) -> Reply:
        sha = request.path_url.split("/")[-2]
        runs = list(self.runs.get(sha, []))
        if sha in self.failing:
            output = {"title": "1 failed", "summary": self.failing[sha], "text": None}
            runs.append(
                {
                    "id": 1,
                    "name": "test",
                    "status": "completed",
                    "conclusion": "failure",
                    "head_sha": sha,
                    "output": output,
                }
            )
        return self._conditional(request, {"total_count": len(runs), "check_runs": runs})

    def status(self, request: Any) -> Reply:
        return self._conditional(request, {"state": "pending", "statuses": [], "total_count": 0})

    def pr_reviews(self, request: Any) -> Reply:
        return self._conditional(request, self.reviews.get(self._number(request, -2), []))

    def pr_review_comments(self, request: Any) -> Reply:
        return self._conditional(request, self.review_comments.get(self._number(request, -2), []))

    def branch(self, request: Any) -> Reply:
        ref = urllib.parse.unquote(request.path_url.split("/git/ref/heads/", 1)[1])
        if self.remote is not None:
            sha = self.head_sha(ref)
        else:
            sha = self.bases.setdefault(ref, hashlib.sha1(ref.encode()).hexdigest())
        body = {"ref": f"refs/heads/{ref}", "object": {"sha": sha, "type": "commit"}}
        return self._conditional(request, body, f'W/"{sha}"')

    def rate_limit(self, request: Any) -> Reply:
        self._seen(request, free=True)
        core = {"limit": 5000, "remaining": 5000 - self.points, "reset": 1_800_003_600}
        return 200, {}, json.dumps({"resources": {"core": core}, "rate": core})

    def list_pulls(self, request: Any) -> Reply:
        query = dict(re.findall(r"([a-z_]+)=([^&]*)", request.path_url.split("?", 1)[-1]))
        items = self.pulls
        if "head" in query:
            head = urllib.parse.unquote(query["head"])
            assert head.startswith(f"{self.owner}:"), "the head filter needs the owner prefix"
            items = [p for p in items if p["head"]["label"] == head]
        per_page = int(query.get("per_page", "30"))
        page = int(query.get("page", "1"))
        chunk = items[(page - 1) * per_page : page * per_page]
        etag = f'W/"v{self.version}-{page}"'
        if request.headers.get("If-None-Match") == etag:
            self._seen(request, free=True)
            self.not_modified += 1
            return 304, {"ETag": etag}, ""
        self._seen(request)
        headers = {"ETag": etag}
        if page * per_page < len(items):
            path = request.path_url.split("?", 1)[0]
            rest = "&".join(f"{k}={v}" for k, v in query.items() if k != "page")
            url = f"https://api.github.com{path}?{rest}&page={page + 1}"
            headers["Link"] = f'<{url}>; rel="next"'
        return 200, headers, json.dumps([self._fresh(p) for p in chunk])

    def create(self, request: Any) -> Reply:
        self._seen(request)
        data = json.loads(request.body)
        if any(p["head"]["ref"] == data["head"] and p["state"] == "open" for p in self.pulls):
            message = f"A pull request already exists for {self.owner}:{data['head']}."
            body = {"message": "Validation Failed", "errors": [{"message": message}]}
            return 422, {}, json.dumps(body)
        number = len(self.pulls) + 1
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        pr = {
            "number": number,
            "html_url": f"https://github.com/{self.owner}/{self.name}/pull/{number}",
            "state": "open",
            "title": data["title"],
            "body": data["body"],
            "draft": data.get("draft", False),
            "head": {
                "ref": data["head"],
                "sha": "0" * 40,
                "label": f"{self.owner}:{data['head']}",
            },
            "base": {"ref": data["base"]},
            "merged_at": None,
            "updated_at": now,
            "labels": [],
        }
        self.pulls.append(pr)
        self.version += 1
        return 201, {}, json.dumps(self._fresh(pr))

    def get(self, request: Any) -> Reply:
        """One PR, with ``mergeable`` as GitHub computes it from the remote's branches (null
        while ``self.computing``: GitHub has not finished yet)."""
        pr = {**self._fresh(self._find(self._number(request)))}
        if pr["state"] == "open":
            pr["mergeable"], pr["mergeable_state"] = self._mergeable(pr)
        text = json.dumps(pr, sort_keys=True)
        return self._conditional(request, pr, f'W/"{hashlib.sha1(text.encode()).hexdigest()}"')

    def _mergeable(self, pr: dict[str, Any]) -> tuple[bool | None, str]:
        if self.computing:
            return None, "unknown"
        if self.remote is None:
            return True, "clean"
        head, base = pr["head"]["sha"], self.head_sha(pr["base"]["ref"])

        def git(*args: str) -> subprocess.CompletedProcess[str]:
            argv = ["git", "-C", str(self.remote), *args]
            return subprocess.run(argv, capture_output=True, text=True, check=False)

        if git("merge-base", "--is-ancestor", base, head).returncode == 0:
            return True, "clean"
        # the fake answers "behind" for every out-of-date head (GitHub: where rules want it current)
        merged = git("merge-tree", "--write-tree", base, head).returncode == 0
        return (True, "behind") if merged else (False, "dirty")

    def issue_comments(self, request: Any) -> Reply:
        number = self._number(request, -2)
        self._find(number)
        items = [
            {"user": {"login": "reconciler-bot"}, "body": body, "created_at": None}
            for n, body in self.comments
            if n == number
        ]
        return self._conditional(request, items)

    def patch(self, request: Any) -> Reply:
        self._seen(request)
        pr = self._find(self._number(request))
        change = json.loads(request.body)
        if change.get("state") == "closed" and pr["state"] == "open":
            change["closed_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        pr.update(change)
        self.version += 1
        return 200, {}, json.dumps(pr)

    def review(self, request: Any) -> Reply:
        self._seen(request)
        pr = self._find(self._number(request, -2))
        pr["requested"] = json.loads(request.body)
        return 201, {}, json.dumps(pr)

    def labels(self, request: Any) -> Reply:
        self._seen(request)
        pr = self._find(self._number(request, -2))
        pr["labels"] = [{"name": n} for n in json.loads(request.body)["labels"]]
        return 200, {}, json.dumps(pr["labels"])

    def comment(self, request: Any) -> Reply:
        self._seen(request)
        number = self._number(request, -2)
        self.comments.append((number, json.loads(request.body)["body"]))
        return 201, {}, json.dumps({"id": len(self.comments)})

    # ------------------------------------------------------------------ what humans do

    def merge(self, number: int) -> None:
        """What a human clicking "Merge" does."""
        self._find(number).update(
            state="closed", merged_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        )
        self.version += 1

    def close(self, number: int) -> None:
        """What a human clicking "Close pull request" does."""
        self._find(number).update(
            state="closed", closed_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        )
        self.version += 1

    def submit_review(
        self, number: int, user: str, state: str, body: str = "", inline: tuple[str, ...] = ()
    ) -> None:
        """What a reviewer submitting a review does: the review on the PR's head commit, its
        ``inline`` comments ("path:line: text"), and the PR's ``updated_at`` moves."""
        pr = self._find(number)
        reviews = self.reviews.setdefault(number, [])
        review_id = 1000 * number + len(reviews) + 1
        reviews.append(
            {
                "id": review_id,
                "user": {"login": user},
                "state": state,
                "body": body,
                "commit_id": self._fresh(pr)["head"]["sha"],
            }
        )
        for text in inline:
            path, line, said = text.split(":", 2)
            self.review_comments.setdefault(number, []).append(
                {
                    "pull_request_review_id": review_id,
                    "path": path,
                    "line": int(line),
                    "body": said.strip(),
                }
            )
        self.touch(pr)

    def touch(self, pr: dict[str, Any]) -> None:
        """The PR's ``updated_at`` moves on (a second later at least), as on any change."""
        was = pr.get("updated_at") or "1970-01-01T00:00:00Z"
        then = calendar.timegm(time.strptime(was, "%Y-%m-%dT%H:%M:%SZ"))
        pr["updated_at"] = time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", time.gmtime(max(time.time(), then + 1))
        )
        self.version += 1

    def check(self, sha: str, name: str, status: str, conclusion: str | None = None) -> None:
        """What CI does: check run ``name`` of ``sha`` is now ``status`` (and ``conclusion``)."""
        runs = [r for r in self.runs.get(sha, []) if r["name"] != name]
        run = {"id": len(runs) + 2, "name": name, "status": status, "conclusion": conclusion}
        self.runs[sha] = [*runs, {**run, "head_sha": sha, "output": {"title": name}}]

    def heads(self) -> list[str]:
        return sorted(p["head"]["ref"] for p in self.pulls)


def unserved(rsps: responses.RequestsMock) -> list[str]:
    """Requests the fake does not serve (responses refused them)."""
    return [
        f"{c.request.method} {c.request.url}"
        for c in rsps.calls
        if isinstance(c.response, requests.ConnectionError)
        and "Connection refused by Responses" in str(c.response)
    ]
