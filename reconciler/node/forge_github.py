"""The GitHub forge: the pull requests of one GitHub (or GitHub Enterprise) repository.

Mirrors ``LocalForge`` (``list_pulls``, ``open_pull``, ``update_pull``, ``close_pull``) over the
REST API through PyGithub's requester, with PyGithub's own retry and throttling switched off so
that exactly one retry layer (tenacity, here) handles transient failures: 5xx, connection errors
and timeouts, 403/429 secondary limits, honouring ``Retry-After`` and ``x-ratelimit-reset`` and
giving up after a bounded time. Listing is one paginated call per repository with ``If-None-Match``
per page URL, so an unchanged repository costs no rate-limit points; writes are serialized per
token and spaced at least a second apart. Runs inside the lane with the lane's token: it must
never log, store on disk, return or put the token in an exception (messages go through
``reconciler.redact``), and must never delete branches or reopen PRs.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from urllib.parse import urlencode

import requests
from github import Auth, Github
from tenacity import RetryCallState, Retrying, retry_if_exception_type

from reconciler.node.errors import NodeError
from reconciler.protocol import PullRequest, marked_task, with_marker
from reconciler.redact import redact

DEFAULT_API_URL = "https://api.github.com"
WRITE_SPACING = 1.0  # seconds between content-creating requests (secondary-limit guidance)
MAX_BACKOFF = 30.0
RATE_LIMIT_FRESH = 5.0  # seconds a /rate_limit answer serves the other repositories of a pass
REPO_NAME = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
NEXT_LINK = re.compile(r'<([^>]+)>\s*;\s*rel="next"')
TRANSIENT_NETWORK = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    requests.exceptions.ChunkedEncodingError,
)

Json = dict[str, Any]


# Check-run conclusions that mean "the change is not good yet" (neutral and skipped do not).
_FAILED_CONCLUSIONS = frozenset({"failure", "timed_out", "cancelled", "action_required"})
FEEDBACK_TAIL = 2000


class GitHubError(NodeError):
    """A GitHub request failed; the message names the repository or PR and the fix."""


class _Transient(Exception):
    """A failure worth retrying; ``wait`` is the server's requested delay, if it named one."""

    def __init__(self, reason: str, wait: float | None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.wait = wait


@dataclass
class _Page:
    etag: str
    items: list[Any]  # a list page's items, or [the document]
    next_url: str | None
    used: float = 0.0


class _Cache:
    """The ETag'd answers of one repository as one token sees them, per URL.

    Kept in memory for the process and, when the lane gives a directory, in a 0600 file there,
    so that a new process (one `apply` from cron, a restart) sends ``If-None-Match`` too and an
    unchanged pass costs no points. Answers unused for a day are dropped (a PR's old head
    commits). Two processes writing the file race harmlessly: an ETag always matches its items.
    """

    TTL = 86400.0

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.pages: dict[str, _Page] = {}
        self.dirty = False
        self.loaded = path is None
        self.lock = threading.Lock()

    def get(self, url: str, now: float) -> _Page | None:
        with self.lock:
            if not self.loaded:
                self.loaded = True
                self.pages = _read_cache(self.path) if self.path else {}
            page = self.pages.get(url)
            if page is not None:
                page.used = now
            return page

    def put(self, url: str, page: _Page) -> None:
        with self.lock:
            self.pages[url] = page
            self.dirty = True

    def flush(self, now: float) -> None:
        with self.lock:
            stale = [url for url, page in self.pages.items() if page.used < now - self.TTL]
            for url in stale:
                del self.pages[url]
            if self.path is None or not (self.dirty or stale):
                return
            data = {
                "version": 1,
                "pages": {
                    url: [page.etag, page.items, page.next_url, page.used]
                    for url, page in self.pages.items()
                },
            }
            _write_private(self.path, json.dumps(data, separators=(",", ":")))
            self.dirty = False


def _read_cache(path: str) -> dict[str, _Page]:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        return {
            str(url): _Page(str(etag), list(items), next_url, float(used))
            for url, (etag, items, next_url, used) in data["pages"].items()
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}  # no cache, or one from another version: start cold


def _write_private(path: str, text: str) -> None:
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


class _WriteGate:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.last: float | None = None


# Shared by every forge in the process. Keys hold a digest of the token, never the token.
_PAGES: dict[tuple[str, str, str], _Cache] = {}
_GATES: dict[str, _WriteGate] = {}
_RATES: dict[tuple[str, str], tuple[float, int, int]] = {}  # (api, token digest) → (at, left, of)
_SHARED_LOCK = threading.Lock()


@dataclass
class Time:
    """Where the forge reads the time and how it waits; tests put a virtual clock here."""

    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    wall: Callable[[], float] = time.time


TIME = Time()


def _gate(digest: str) -> _WriteGate:
    with _SHARED_LOCK:
        return _GATES.setdefault(digest, _WriteGate())


def _cache(api_url: str, repo: str, digest: str, directory: str | None) -> _Cache:
    key = (api_url, repo, digest)
    with _SHARED_LOCK:
        cache = _PAGES.get(key)
        if cache is None:
            name = hashlib.sha256("\0".join(key).encode()).hexdigest()[:32]
            path = os.path.join(directory, f"{name}.json") if directory else None
            cache = _PAGES[key] = _Cache(path)
        return cache


class GitHubForge:
    """The pull requests of ``repo`` ("OWNER/NAME") as seen by ``token``."""

    def __init__(
        self,
        repo: str,
        token: str,
        api_url: str | None = None,
        *,
        retry_deadline: float = 60.0,
        sleep: Callable[[float], None] | None = None,
        clock: Callable[[], float] | None = None,
        wall: Callable[[], float] | None = None,
        cache_dir: str | None = None,
    ) -> None:
        if not REPO_NAME.match(repo):
            raise GitHubError(f"forge repo {repo!r} is not OWNER/NAME; fix forge.repo")
        if not token:
            raise GitHubError("the GitHub token is empty; set GH_TOKEN or fill the token file")
        self.repo = repo
        self.owner = repo.split("/", 1)[0]
        self.api_url = (api_url or DEFAULT_API_URL).rstrip("/")
        self.retry_deadline = retry_deadline
        self._token = token
        self._digest = hashlib.sha256(token.encode()).hexdigest()
        self._sleep = sleep or TIME.sleep
        self._clock = clock or TIME.clock
        self._wall = wall or TIME.wall
        self._cache = _cache(self.api_url, repo, self._digest, cache_dir)
        self._gh = Github(
            auth=Auth.Token(token),
            base_url=self.api_url,
            retry=None,
            seconds_between_requests=None,
            seconds_between_writes=None,
            per_page=100,
        )

    def __repr__(self) -> str:
        return f"GitHubForge({self.repo!r}, api_url={self.api_url!r})"

    # ------------------------------------------------------------------------ operations

    def list_pulls(self, head: str | None = None) -> list[PullRequest]:
        """Every PR of the repository (or those from branch ``head``), oldest number first."""
        params = {"state": "all", "per_page": "100"}
        if head is not None:
            params["head"] = f"{self.owner}:{head}"  # a bare branch would be silently ignored
        url: str | None = f"/repos/{self.repo}/pulls?{urlencode(params)}"
        items: list[Json] = []
        seen: set[str] = set()
        while url is not None and url not in seen:
            seen.add(url)
            page = self._conditional(url, listing=True)
            items.extend(page.items)
            url = page.next_url
        pulls = [self._pr(item) for item in items]
        if head is not None:
            pulls = [p for p in pulls if p.head == head]
        return sorted(pulls, key=lambda p: p.number)

    def open_pull(
        self,
        *,
        task: str,
        head: str,
        base: str,
        title: str,
        body: str,
        draft: bool = False,
        labels: list[str] | None = None,
        reviewers: list[str] | None = None,
    ) -> tuple[PullRequest, bool]:
        """Create a PR unless an open one from ``head`` exists; (pr, created)."""
        if head == base:
            raise GitHubError(f"a pull request needs different head and base, both are {head}")
        existing = self._open_from(head)
        if existing is not None:
            return existing, False
        body = with_marker(body, task)
        payload = {"title": title, "body": body, "head": head, "base": base, "draft": draft}
        status, _, data = self._write("POST", f"/repos/{self.repo}/pulls", payload, allow=(422,))
        if status == 422:
            if "already exists" not in _message(data):
                raise self._error(status, data, "POST", f"/repos/{self.repo}/pulls")
            adopted = self._open_from(head)
            if adopted is None:
                raise GitHubError(
                    f"GitHub says a pull request from {self.owner}:{head} already exists in "
                    f"{self.repo}, but no open one was found; retry on the next pass",
                    temporary=True,
                )
            return adopted, False
        pr = self._pr(_object(data, "the created pull request"))
        if labels:
            self._write(
                "POST", f"/repos/{self.repo}/issues/{pr.number}/labels", {"labels": list(labels)}
            )
        if reviewers:
            users = [r for r in reviewers if "/" not in r]
            teams = [r.split("/", 1)[1] for r in reviewers if "/" in r]
            self._write(
                "POST",
                f"/repos/{self.repo}/pulls/{pr.number}/requested_reviewers",
                {"reviewers": users, "team_reviewers": teams},
            )
        return pr, True

    def update_pull(
        self,
        number: int,
        *,
        title: str | None = None,
        body: str | None = None,
        comment: str | None = None,
    ) -> PullRequest:
        path = f"/repos/{self.repo}/pulls/{number}"
        current = self._get_pull(number)
        if comment is not None:
            self._comment(number, comment)
        change: Json = {}
        if title is not None:
            change["title"] = title
        if body is not None:
            change["body"] = with_marker(body, current.task)
        if not change:
            return self._get_pull(number) if comment is not None else current
        _, _, data = self._write("PATCH", path, change)
        return self._pr(_object(data, f"pull request #{number}"))

    def close_pull(self, number: int, comment: str) -> PullRequest:
        current = self._get_pull(number)
        if current.state != "open":
            return current  # closing twice is a no-op, and a merged PR stays merged
        if comment:
            self._comment(number, comment)
        _, _, data = self._write("PATCH", f"/repos/{self.repo}/pulls/{number}", {"state": "closed"})
        return self._pr(_object(data, f"pull request #{number}"))

    def access(self) -> tuple[bool, str]:
        """Whether the token may push and open PRs, and what GitHub says of the repository.

        A conditional request: an unchanged repository answers 304 and costs no points.
        """
        data = self._get_cached(f"/repos/{self.repo}")
        if not isinstance(data, dict):
            raise GitHubError(
                f"GitHub answered the repository {self.repo} with something other than an "
                "object; check forge.apiUrl points at the REST API (…/api/v3 for Enterprise)"
            )
        perms = _dict(data.get("permissions"))
        can_write = bool(perms.get("push"))
        return can_write, str(data.get("full_name") or self.repo)

    def merge_pull(self, number: int) -> PullRequest:
        raise NodeError(
            f"PR #{number} of {self.repo} lives on GitHub: merge it there; the next pass sees "
            "the merge and marks the task done"
        )

    def with_feedback(
        self, pr: PullRequest, kinds: Collection[str] = ("checks", "reviews")
    ) -> PullRequest:
        """The PR with what CI (``checks``) and reviewers (``reviews``) say of its head commit
        (conditional requests: an unchanged PR costs no points). Failing checks carry their
        output's tail; change requests carry their inline comments as ``path:line``."""
        if pr.state != "open" or not pr.head_sha or not kinds:
            return pr
        if "checks" not in kinds:
            return pr.model_copy(update={"review_feedback": self._change_requests(pr)})
        runs = _dict(self._get_cached(f"/repos/{self.repo}/commits/{pr.head_sha}/check-runs"))
        status = _dict(self._get_cached(f"/repos/{self.repo}/commits/{pr.head_sha}/status"))
        pending = False
        failing: list[str] = []
        seen_any = False
        for run in map(_dict, runs.get("check_runs") or []):
            seen_any = True
            if run.get("status") != "completed":
                pending = True
            elif run.get("conclusion") in _FAILED_CONCLUSIONS:
                output = _dict(run.get("output"))
                detail = "\n".join(
                    str(output.get(k) or "") for k in ("title", "summary", "text")
                ).strip()
                line = f"check `{run.get('name')}` {run.get('conclusion')}"
                failing.append(f"{line}:\n```\n{detail[-FEEDBACK_TAIL:]}\n```" if detail else line)
        for item in map(_dict, status.get("statuses") or []):
            seen_any = True
            if item.get("state") == "pending":
                pending = True
            elif item.get("state") in ("failure", "error"):
                failing.append(
                    f"status `{item.get('context')}` {item.get('state')}: "
                    f"{item.get('description') or ''}".rstrip(": ")
                )
        checks: Literal["pending", "success", "failure"] | None = None
        if failing:
            checks = "failure"
        elif pending:
            checks = "pending"
        elif seen_any:
            checks = "success"
        return pr.model_copy(
            update={
                "checks": checks,
                "check_feedback": failing,
                "review_feedback": self._change_requests(pr) if "reviews" in kinds else [],
            }
        )

    def _change_requests(self, pr: PullRequest) -> list[str]:
        reviews = self._get_cached(f"/repos/{self.repo}/pulls/{pr.number}/reviews")
        latest: dict[str, Json] = {}
        for review in map(_dict, reviews if isinstance(reviews, list) else []):
            if review.get("commit_id") not in (None, pr.head_sha):
                continue  # about an older commit: already answered
            user = str(_dict(review.get("user")).get("login") or "?")
            if review.get("state") in ("APPROVED", "CHANGES_REQUESTED", "DISMISSED"):
                latest[user] = review
        wanted = {
            review.get("id"): user
            for user, review in latest.items()
            if review.get("state") == "CHANGES_REQUESTED"
        }
        if not wanted:
            return []
        items = [
            f"review by {user} requests changes: {latest[user].get('body') or '(no summary)'}"
            for user in sorted(set(wanted.values()))
        ]
        comments = self._get_cached(f"/repos/{self.repo}/pulls/{pr.number}/comments")
        for comment in map(_dict, comments if isinstance(comments, list) else []):
            if comment.get("pull_request_review_id") in wanted:
                where = (
                    f"{comment.get('path')}:{comment.get('line') or comment.get('original_line')}"
                )
                items.append(f"{where}: {comment.get('body')}")
        return items

    def _get_cached(self, url: str) -> Any:
        """A conditional GET of one document (a 304 answers from the cache, for free)."""
        return (self._conditional(url).items or [None])[0]

    def _conditional(self, url: str, *, listing: bool = False) -> _Page:
        """GET with ``If-None-Match``: an unchanged answer (304) comes from the cache and costs
        no rate-limit point. ``listing``: the answer is a page of a list."""
        cached = self._cache.get(url, self._wall())
        headers = {"If-None-Match": cached.etag} if cached else None
        status, response_headers, data = self._request("GET", url, headers=headers)
        if status == 304 and cached is not None:
            return cached
        if listing and not isinstance(data, list):
            raise GitHubError(
                f"GitHub answered the pull request list of {self.repo} with something other than "
                "a list; check forge.apiUrl points at the REST API (…/api/v3 for Enterprise)"
            )
        page = _Page(
            etag=str(response_headers.get("etag", "")),
            items=[item for item in data if isinstance(item, dict)] if listing else [data],
            next_url=_next_link(response_headers.get("link")) if listing else None,
            used=self._wall(),
        )
        if page.etag:
            self._cache.put(url, page)
        return page

    def flush(self) -> None:
        """Keep the ETag'd answers for the next process (the lane's cache file), if any."""
        self._cache.flush(self._wall())

    def rate_limit(self) -> tuple[int, int]:
        """(remaining, limit) of the token's core rate limit; this call itself costs nothing,
        and the repositories of one lane sharing a token ask once per pass, not once each."""
        key = (self.api_url, self._digest)
        now = self._clock()
        known = _RATES.get(key)
        if known is not None and now - known[0] < RATE_LIMIT_FRESH:
            return known[1], known[2]
        _, _, data = self._request("GET", "/rate_limit")
        core = _dict(_dict(_dict(data).get("resources")).get("core"))
        remaining, limit = int(core.get("remaining", 0)), int(core.get("limit", 0))
        _RATES[key] = (now, remaining, limit)
        return remaining, limit

    # ------------------------------------------------------------------------ helpers

    def _open_from(self, head: str) -> PullRequest | None:
        return next((p for p in self.list_pulls(head) if p.state == "open"), None)

    def _get_pull(self, number: int) -> PullRequest:
        _, _, data = self._request("GET", f"/repos/{self.repo}/pulls/{number}")
        return self._pr(_object(data, f"pull request #{number}"))

    def _comment(self, number: int, text: str) -> None:
        self._write("POST", f"/repos/{self.repo}/issues/{number}/comments", {"body": text})

    def _pr(self, item: Json) -> PullRequest:
        head, base = _dict(item.get("head")), _dict(item.get("base"))
        body = item.get("body") or ""
        state: Literal["open", "closed", "merged"]
        if item.get("merged_at"):
            state, changed = "merged", item.get("merged_at")
        elif item.get("state") == "closed":
            state, changed = "closed", item.get("closed_at") or item.get("updated_at")
        else:
            state, changed = "open", item.get("updated_at")
        sha = head.get("sha")
        return PullRequest(
            number=int(item["number"]),
            url=str(item.get("html_url") or ""),
            state=state,
            head=str(head.get("ref", "")),
            base=str(base.get("ref", "")),
            title=str(item.get("title") or ""),
            body=str(body),
            task=marked_task(str(body)),
            head_sha=sha if isinstance(sha, str) else None,
            updated_at=_epoch(changed),
        )

    def _write(
        self, verb: str, url: str, payload: Json, *, allow: tuple[int, ...] = ()
    ) -> tuple[int, Mapping[str, Any], Any]:
        """A content-creating request: one at a time per token, at least a second apart."""
        gate = _gate(self._digest)
        with gate.lock:
            if gate.last is not None:
                wait = gate.last + WRITE_SPACING - self._clock()
                if wait > 0:
                    self._sleep(wait)
            try:
                return self._request(verb, url, payload=payload, allow=allow)
            finally:
                gate.last = self._clock()

    def _request(
        self,
        verb: str,
        url: str,
        *,
        payload: Json | None = None,
        headers: dict[str, str] | None = None,
        allow: tuple[int, ...] = (),
    ) -> tuple[int, Mapping[str, Any], Any]:
        """One REST call with the single retry layer; (status, headers, parsed JSON)."""
        start = self._clock()

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, _Transient) and exc.wait is not None:
                return max(0.0, exc.wait)
            return float(min(MAX_BACKOFF, 2 ** (state.attempt_number - 1)))

        def stop(state: RetryCallState) -> bool:
            return self._clock() - start + state.upcoming_sleep > self.retry_deadline

        retrying = Retrying(
            sleep=self._sleep,
            wait=wait,
            stop=stop,
            retry=retry_if_exception_type(_Transient),
            reraise=True,
        )
        try:
            status, response_headers, data = retrying(self._once, verb, url, payload, headers)
        except _Transient as exc:
            if exc.wait is not None and exc.wait > self.retry_deadline:
                until = time.strftime("%H:%M:%S UTC", time.gmtime(self._wall() + exc.wait))
                text = (
                    f"GitHub asked to wait {exc.wait:.0f} s before {verb} {_path(url)} of "
                    f"{self.repo} ({exc.reason}), longer than the {self.retry_deadline:.0f} s a "
                    f"request may take; gave up, passes after {until} will go on"
                )
            else:
                text = (
                    f"GitHub kept failing for {verb} {_path(url)} of {self.repo} "
                    f"({exc.reason}) for {self._clock() - start:.0f} s; gave up, the next pass "
                    "will try again (check https://www.githubstatus.com or the rate limit)"
                )
            raise GitHubError(self._redact(text), temporary=True) from None
        if 200 <= status < 300 or status == 304 or status in allow:
            return status, response_headers, data
        raise self._error(status, data, verb, url)

    def _once(
        self, verb: str, url: str, payload: Json | None, headers: dict[str, str] | None
    ) -> tuple[int, Mapping[str, Any], Any]:
        try:
            status, response_headers, raw = self._gh.requester.requestJson(
                verb, url, headers=headers, input=payload
            )
        except TRANSIENT_NETWORK as exc:
            raise _Transient(f"network error: {type(exc).__name__}", None) from None
        try:
            data: Any = json.loads(raw) if raw else None
        except ValueError:
            data = None
        if status >= 500 or status == 429:
            raise _Transient(f"HTTP {status}", self._server_wait(response_headers))
        if status == 403:
            wait = self._server_wait(response_headers)
            if wait is not None or "rate limit" in _message(data).lower():
                raise _Transient("HTTP 403 rate limit", wait)
        return status, response_headers, data

    def _server_wait(self, headers: Mapping[str, Any]) -> float | None:
        """The delay the server asked for: ``Retry-After``, else the rate-limit reset time."""
        retry_after = headers.get("retry-after")
        if retry_after is not None:
            try:
                return float(retry_after)
            except ValueError:
                pass
        reset = headers.get("x-ratelimit-reset")
        if str(headers.get("x-ratelimit-remaining", "")) == "0" and reset is not None:
            try:
                return max(0.0, float(reset) - self._wall()) + 1.0
            except ValueError:
                return None
        return None

    def _error(self, status: int, data: Any, verb: str, url: str) -> GitHubError:
        detail = _message(data) or "no message"
        where = f"{verb} {_path(url)}"
        if status == 401:
            text = (
                f"GitHub rejected the token for {self.repo} (401 {detail}); create a new token "
                "and put it in the token file or GH_TOKEN/GITHUB_TOKEN"
            )
        elif status == 404 and re.search(r"/(pulls|issues)/\d+", url):
            text = (
                f"{where} of {self.repo} answered 404 ({detail}): the pull request is gone or "
                "the token may not see it; check the PR on GitHub and the token's access"
            )
        elif status == 404:
            text = (
                f"repository {self.repo} is not visible to this token at {self.api_url} "
                f"(404 on {where}); check forge.repo, and give the token access to the repository"
            )
        elif status == 403:
            text = (
                f"GitHub refused {where} (403 {detail}); give the token contents and pull "
                f"requests read/write permission on {self.repo}"
            )
        elif status == 422:
            text = f"GitHub rejected {where} (422 {detail}); fix the pull request spec"
        else:
            text = f"GitHub answered {status} to {where} ({detail}); check the forge settings"
        return GitHubError(self._redact(text))

    def _redact(self, text: str) -> str:
        return redact(text, [self._token])


def _message(data: Any) -> str:
    if not isinstance(data, dict):
        return ""
    parts = [str(data.get("message", ""))]
    errors = data.get("errors")
    if isinstance(errors, list):
        parts += [str(e.get("message", "")) for e in errors if isinstance(e, dict)]
    return ": ".join(p for p in parts if p)


def _object(data: Any, what: str) -> Json:
    if not isinstance(data, dict) or "number" not in data:
        raise GitHubError(f"GitHub returned no JSON object for {what}; retry", temporary=True)
    return data


def _dict(value: Any) -> Json:
    return value if isinstance(value, dict) else {}


def _next_link(link: Any) -> str | None:
    found = NEXT_LINK.search(str(link)) if link else None
    return found.group(1) if found else None


def _path(url: str) -> str:
    return url.split("?", 1)[0]


def _epoch(value: Any) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
