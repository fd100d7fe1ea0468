"""The GitHub REST client of the GitHub forge: one repository as one token sees it.

Requests go through PyGithub's requester, with PyGithub's own retry and throttling switched off
so that exactly one retry layer (tenacity, here) handles transient failures: 5xx, connection
errors and timeouts, 403/429 secondary limits, honouring ``Retry-After`` and
``x-ratelimit-reset`` and giving up after a bounded time. Reads are conditional
(``If-None-Match`` per URL, the answers kept in memory and in the lane's cache file), so an
unchanged repository costs no rate-limit points, and a reader that can tell an answer is still
current (``get_cached`` with ``trust``) reuses it without a request; writes are serialized per
token and spaced at least a second apart. Knows HTTP, not pull requests. Runs inside the lane
with the lane's token: it must never log, store on disk, return or put the token in an exception
(messages go through ``reconciler.redact``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import requests
from github import Auth, Github
from tenacity import RetryCallState, Retrying, retry_if_exception_type

from reconciler.node.errors import NodeError
from reconciler.redact import redact

DEFAULT_API_URL = "https://api.github.com"
WRITE_SPACING = 1.0  # seconds between content-creating requests (secondary-limit guidance)
MAX_BACKOFF = 30.0
RATE_LIMIT_FRESH = 5.0  # seconds a /rate_limit answer serves the other repositories of a pass
NEXT_LINK = re.compile(r'<([^>]+)>\s*;\s*rel="next"')
TRANSIENT_NETWORK = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    requests.exceptions.ChunkedEncodingError,
)

Json = dict[str, Any]
Answer = tuple[int, Mapping[str, Any], Any]  # status, headers, parsed JSON


class GitHubError(NodeError):
    """A GitHub request failed; the message names the repository or PR and the fix."""


class _Transient(Exception):
    """A failure worth retrying; ``wait`` is the server's requested delay, if it named one."""

    def __init__(self, reason: str, wait: float | None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.wait = wait


@dataclass
class Time:
    """Where the client reads the time and how it waits; tests put a virtual clock here."""

    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    wall: Callable[[], float] = time.time


@dataclass
class _Page:
    etag: str
    items: list[Any]  # a list page's items, or [the document]
    next_url: str | None
    used: float = 0.0
    key: str = ""  # what the reader said the answer was about when it last confirmed it
    checked: float = 0.0  # when GitHub last confirmed the answer (wall time)
    first: float = 0.0  # when the URL was first read (wall time)
    since: float = 0.0  # when its ``key`` was seen to change (wall time; 0: never seen)


@dataclass(frozen=True)
class Reading:
    """What the cache knows of one URL: GitHub's last answer, what the reader said it was about
    (``key``), when GitHub last confirmed it, when the URL was first read and when its key was
    seen to change (wall times; ``since`` 0: the first answer, no change was seen)."""

    data: Any
    key: str
    checked: float
    first: float
    since: float


class _Cache:
    """The ETag'd answers of one repository as one token sees them, per URL.

    Kept in memory for the process and, when the lane gives a directory, in a 0600 file there,
    so that a new process (one `apply` from cron, a restart) sends ``If-None-Match`` too and an
    unchanged pass costs no points. Each answer remembers what its reader said it was about and
    when GitHub last confirmed it, so a reader that knows nothing changed need not ask at all.
    Answers unused for a day are dropped (a PR's old head commits). Two processes writing the
    file race harmlessly: an ETag always matches its items.
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
                    url: [
                        page.etag,
                        page.items,
                        page.next_url,
                        page.used,
                        page.key,
                        page.checked,
                        page.first,
                        page.since,
                    ]
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
            str(url): _Page(
                str(etag),
                list(items),
                next_url,
                float(used),
                str(key),
                float(at),
                float(first),
                float(since),
            )
            for url, (etag, items, next_url, used, *seen) in data["pages"].items()
            for key, at, first, since in [seen or ["", 0.0, 0.0, 0.0]]
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


# Shared by every client in the process. Keys hold a digest of the token, never the token.
_PAGES: dict[tuple[str, str, str], _Cache] = {}
_GATES: dict[str, _WriteGate] = {}
_RATES: dict[tuple[str, str], tuple[float, int, int]] = {}  # (api, token digest) → (at, left, of)
_SHARED_LOCK = threading.Lock()


def forget_process_memory() -> None:
    """Forget the answers, write gates and rate limits this process keeps, as a new process
    starts (only the lane's cache file remains)."""
    with _SHARED_LOCK:
        _PAGES.clear()
        _GATES.clear()
        _RATES.clear()


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


class GitHubClient:
    """REST calls about ``repo`` ("OWNER/NAME") with ``token``, at ``api_url``."""

    def __init__(
        self,
        repo: str,
        token: str,
        api_url: str | None,
        *,
        retry_deadline: float,
        timing: Time,
        cache_dir: str | None,
    ) -> None:
        self.repo = repo
        self.api_url = (api_url or DEFAULT_API_URL).rstrip("/")
        self.retry_deadline = retry_deadline
        self.timing = timing
        self._token = token
        self._digest = hashlib.sha256(token.encode()).hexdigest()
        self._cache = _cache(self.api_url, repo, self._digest, cache_dir)
        self._gh = Github(
            auth=Auth.Token(token),
            base_url=self.api_url,
            retry=None,
            seconds_between_requests=None,
            seconds_between_writes=None,
            per_page=100,
        )

    def get(self, url: str) -> Any:
        """A plain GET (an answer that must be current, never from the cache)."""
        return self._request("GET", url)[2]

    def get_cached(
        self, url: str, *, key: str = "", trust: Callable[[Reading], bool] | None = None
    ) -> Any:
        """One document: the cached answer without asking when it was confirmed about the same
        ``key`` and ``trust`` accepts it, else a conditional GET (a 304 answers from the cache,
        for free) that records ``key``."""
        if trust is not None:
            known = self.recall(url)
            if known is not None and known.key == key and trust(known):
                return known.data
        return (self._conditional(url, key=key).items or [None])[0]

    def recall(self, url: str) -> Reading | None:
        """What the cache holds for one document, without asking GitHub."""
        page = self._cache.get(url, self.timing.wall())
        if page is None:
            return None
        return Reading((page.items or [None])[0], page.key, page.checked, page.first, page.since)

    def get_list(self, url: str) -> list[Json]:
        """Every item of a paginated list, each page a conditional GET."""
        next_url: str | None = url
        items: list[Json] = []
        seen: set[str] = set()
        while next_url is not None and next_url not in seen:
            seen.add(next_url)
            page = self._conditional(next_url, listing=True)
            items.extend(page.items)
            next_url = page.next_url
        return items

    def write(self, verb: str, url: str, payload: Json, *, allow: tuple[int, ...] = ()) -> Answer:
        """A content-creating request: one at a time per token, at least a second apart."""
        gate = _gate(self._digest)
        with gate.lock:
            if gate.last is not None:
                wait = gate.last + WRITE_SPACING - self.timing.clock()
                if wait > 0:
                    self.timing.sleep(wait)
            try:
                return self._request(verb, url, payload=payload, allow=allow)
            finally:
                gate.last = self.timing.clock()

    def rate_limit(self) -> tuple[int, int]:
        """(remaining, limit) of the token's core rate limit; this call itself costs nothing,
        and the repositories of one lane sharing a token ask once per pass, not once each."""
        key = (self.api_url, self._digest)
        now = self.timing.clock()
        known = _RATES.get(key)
        if known is not None and now - known[0] < RATE_LIMIT_FRESH:
            return known[1], known[2]
        data = self.get("/rate_limit")
        core = as_dict(as_dict(as_dict(data).get("resources")).get("core"))
        remaining, limit = int(core.get("remaining", 0)), int(core.get("limit", 0))
        self._said_rate(remaining, limit, now)
        return remaining, limit

    def known_rate(self) -> tuple[int, int, float] | None:
        """(remaining, limit, when on the wall clock) of the token's core rate limit as GitHub
        last said it: in a ``/rate_limit`` answer or in the headers of any other answer. Asks
        nothing (None: nothing was said yet in this process)."""
        known = _RATES.get((self.api_url, self._digest))
        if known is None:
            return None
        at, remaining, limit = known
        return remaining, limit, self.timing.wall() - (self.timing.clock() - at)

    def _said_rate(self, remaining: int, limit: int, now: float) -> None:
        with _SHARED_LOCK:
            _RATES[(self.api_url, self._digest)] = (now, remaining, limit)

    def flush(self) -> None:
        """Keep the ETag'd answers for the next process (the lane's cache file), if any."""
        self._cache.flush(self.timing.wall())

    def _conditional(self, url: str, *, listing: bool = False, key: str = "") -> _Page:
        """GET with ``If-None-Match``: an unchanged answer (304) comes from the cache and costs
        no rate-limit point. ``listing``: the answer is a page of a list; ``key``: what the
        answer is about, as the reader names it."""
        now = self.timing.wall()
        cached = self._cache.get(url, now)
        headers = {"If-None-Match": cached.etag} if cached else None
        status, response_headers, data = self._request("GET", url, headers=headers)
        if status == 304 and cached is not None:
            if cached.key != key:
                cached.key, cached.since = key, now
            if cached.checked != now:
                cached.checked = now
                self._cache.put(url, cached)
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
            used=now,
            key=key,
            checked=now,
            first=cached.first if cached is not None and cached.first else now,
            since=(0.0 if cached is None else cached.since if cached.key == key else now),
        )
        if page.etag:
            self._cache.put(url, page)
        return page

    def _request(
        self,
        verb: str,
        url: str,
        *,
        payload: Json | None = None,
        headers: dict[str, str] | None = None,
        allow: tuple[int, ...] = (),
    ) -> Answer:
        """One REST call with the single retry layer."""
        start = self.timing.clock()

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, _Transient) and exc.wait is not None:
                return max(0.0, exc.wait)
            return float(min(MAX_BACKOFF, 2 ** (state.attempt_number - 1)))

        def stop(state: RetryCallState) -> bool:
            return self.timing.clock() - start + state.upcoming_sleep > self.retry_deadline

        retrying = Retrying(
            sleep=self.timing.sleep,
            wait=wait,
            stop=stop,
            retry=retry_if_exception_type(_Transient),
            reraise=True,
        )
        try:
            status, response_headers, data = retrying(self._once, verb, url, payload, headers)
        except _Transient as exc:
            raise self._gave_up(exc, verb, url, start) from None
        if 200 <= status < 300 or status == 304 or status in allow:
            return status, response_headers, data
        raise self.error(status, data, verb, url)

    def _gave_up(self, exc: _Transient, verb: str, url: str, start: float) -> GitHubError:
        if exc.wait is not None and exc.wait > self.retry_deadline:
            until = time.strftime("%H:%M:%S UTC", time.gmtime(self.timing.wall() + exc.wait))
            text = (
                f"GitHub asked to wait {exc.wait:.0f} s before {verb} {_path(url)} of "
                f"{self.repo} ({exc.reason}), longer than the {self.retry_deadline:.0f} s a "
                f"request may take; gave up, passes after {until} will go on"
            )
        else:
            text = (
                f"GitHub kept failing for {verb} {_path(url)} of {self.repo} "
                f"({exc.reason}) for {self.timing.clock() - start:.0f} s; gave up, the next pass "
                "will try again (check https://www.githubstatus.com or the rate limit)"
            )
        return GitHubError(self._redact(text), temporary=True)

    def _once(
        self, verb: str, url: str, payload: Json | None, headers: dict[str, str] | None
    ) -> Answer:
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
        left, limit = (response_headers.get(f"x-ratelimit-{k}") for k in ("remaining", "limit"))
        if (
            str(left).isdigit()
            and str(limit).isdigit()
            and response_headers.get("x-ratelimit-resource", "core") == "core"
        ):
            self._said_rate(int(str(left)), int(str(limit)), self.timing.clock())
        if status >= 500 or status == 429:
            raise _Transient(f"HTTP {status}", self._server_wait(response_headers))
        if status == 403:
            wait = self._server_wait(response_headers)
            if wait is not None or "rate limit" in message(data).lower():
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
                return max(0.0, float(reset) - self.timing.wall()) + 1.0
            except ValueError:
                return None
        return None

    def error(self, status: int, data: Any, verb: str, url: str) -> GitHubError:
        """The sentence for a definite refusal: what GitHub said and the fix."""
        detail = message(data) or "no message"
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


def message(data: Any) -> str:
    """What a GitHub error answer says, its validation errors included."""
    if not isinstance(data, dict):
        return ""
    parts = [str(data.get("message", ""))]
    errors = data.get("errors")
    if isinstance(errors, list):
        parts += [str(e.get("message", "")) for e in errors if isinstance(e, dict)]
    return ": ".join(p for p in parts if p)


def as_dict(value: Any) -> Json:
    """``value`` if it is a JSON object, else an empty one (GitHub omits or nulls fields)."""
    return value if isinstance(value, dict) else {}


def _next_link(link: Any) -> str | None:
    found = NEXT_LINK.search(str(link)) if link else None
    return found.group(1) if found else None


def _path(url: str) -> str:
    return url.split("?", 1)[0]
