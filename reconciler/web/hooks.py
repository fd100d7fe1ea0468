"""The webhooks: signed deliveries that ask ``run`` for a pass now instead of at the next poll.

- ``POST /hooks/github``: GitHub's deliveries, signed with ``X-Hub-Signature-256``, each taken
  once by its ``X-GitHub-Delivery`` id. A delivery about pull requests (a review, a check run or
  suite, a commit status, the PR itself) names them, by number or by head commit: the pass it
  starts reads their checks and reviews anew, however recently they were read, so feedback
  arrives in seconds (``Recheck``, carried by the observe request to the lane's forge).
- ``POST /hooks/git``: any other git host or a ``post-receive`` script. The reconciler's own
  form signs ``TIMESTAMP.DELIVERY.BODY`` (``X-Reconciler-Signature-256``) so that neither the
  time nor the id can be changed without the secret: a delivery older or newer than ``WINDOW``
  is refused, and so is an id seen before. Gitea's and Forgejo's signature of the body alone
  (``X-Gitea-Signature``, ``X-Forgejo-Signature``) is taken once by its delivery id.

Checks and asks only: a delivery never decides what to do (the pass reads the whole world, as at
any other trigger), and nothing of it but its reason and the PRs it names reaches the loop.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from reconciler.protocol import Recheck
from reconciler.web.views import LoopState

# GitHub deliveries that start a pass: a push (the control repo, or a task's branch or base), and
# what changes a PR's state, reviews or checks. Others are answered and ignored.
PASS_EVENTS = frozenset(
    {"push", "pull_request", "pull_request_review", "check_run", "check_suite", "status"}
)
DELIVERIES_KEPT = 4096  # delivery ids remembered, per hook, to refuse a replay
WINDOW = 300.0  # seconds a signed generic delivery's timestamp may be off this host's clock
NAMED_KEPT = 100  # pull requests or commits one delivery may name for a re-read
DELIVERY_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
SHA = re.compile(r"^[0-9a-f]{40}$|^[0-9a-f]{64}$")
SAID = re.compile(r"[^\x21-\x7e]")  # what a reason may not carry from a body: spaces, controls


class Refused(Exception):
    """A delivery not taken: the HTTP status and the sentence that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Deliveries:
    """The delivery ids taken lately, oldest first, a bounded number: the same id again is a
    replay."""

    def __init__(self, kept: int = DELIVERIES_KEPT) -> None:
        self.kept = kept
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, delivery: str) -> None:
        with self._lock:
            if delivery in self._seen:
                raise Refused(409, f"delivery {delivery} was taken already: a replay is refused")
            self._seen[delivery] = None
            while len(self._seen) > self.kept:
                self._seen.popitem(last=False)


@dataclass
class Hooks:
    """Both webhooks of one listener: the secret, the loop they wake and what they remember."""

    secret: str | None
    loop: LoopState | None
    clock: Callable[[], float] = time.time
    github_seen: Deliveries = field(default_factory=Deliveries)
    git_seen: Deliveries = field(default_factory=Deliveries)

    # ------------------------------------------------------------------ GitHub

    def github(self, headers: Mapping[str, str], body: bytes) -> Any:
        """A GitHub delivery: a pass now for what changes the plan (coalesced like a refresh),
        and the PRs it names read anew on it."""
        secret = self._secret("/hooks/github")
        given = headers.get("x-hub-signature-256", "")
        if not given:
            raise Refused(401, "an unsigned delivery is refused: set the webhook's secret")
        _matches(given, "sha256=" + _hmac(secret, body))
        delivery = headers.get("x-github-delivery", "")
        if not delivery:
            raise Refused(400, "a GitHub delivery names itself in X-GitHub-Delivery")
        self.github_seen.take(delivery)
        event = headers.get("x-github-event", "")
        if event == "ping":
            return {"accepted": True, "message": "pong"}
        if event not in PASS_EVENTS:
            return {"accepted": False, "message": f"{event or 'an unnamed'} event: nothing to do"}
        recheck = named_pulls(event, _github_payload(body))
        self._wake(f"github-{event}", recheck)
        named = (
            f"; the checks and reviews of {_said_pulls(recheck)} are read anew"
            if recheck is not None
            else ""
        )
        return {"accepted": True, "message": f"{event}: a pass was asked for{named}"}

    # ------------------------------------------------------------------ any git host

    def git(self, headers: Mapping[str, str], body: bytes) -> Any:
        """A signed notice from another git host or a script: a pass now."""
        secret = self._secret("/hooks/git")
        own = headers.get("x-reconciler-signature-256", "")
        host = headers.get("x-gitea-signature") or headers.get("x-forgejo-signature") or ""
        if own:
            self._own_signature(secret, own, headers, body)
        elif host:
            _matches(host, _hmac(secret, body))
            delivery = headers.get("x-gitea-delivery") or headers.get("x-forgejo-delivery") or ""
            if not DELIVERY_ID.match(delivery):
                raise Refused(400, "a Gitea or Forgejo delivery names itself in X-Gitea-Delivery")
            self.git_seen.take(delivery)
        else:
            raise Refused(
                401,
                "an unsigned notice is refused: sign it with X-Reconciler-Signature-256 "
                "(see docs/api.md, Webhooks)",
            )
        data = _json(body)
        repository = data.get("repository")
        if isinstance(repository, dict):  # Gitea's and Forgejo's push payloads
            repository = repository.get("full_name")
        what = " ".join(
            _said(value) for value in (repository, data.get("ref")) if isinstance(value, str)
        )
        self._wake(f"git-push {what}".strip(), None)
        return {"accepted": True, "message": f"{what or 'a change'}: a pass was asked for"}

    def _own_signature(
        self, secret: str, given: str, headers: Mapping[str, str], body: bytes
    ) -> None:
        stamp = headers.get("x-reconciler-timestamp", "")
        delivery = headers.get("x-reconciler-delivery", "")
        if not stamp.isdigit():
            raise Refused(400, "X-Reconciler-Timestamp gives the time of sending, UNIX seconds")
        if not DELIVERY_ID.match(delivery):
            raise Refused(
                400, "X-Reconciler-Delivery names the notice once (1-128 of A-Z a-z 0-9 . _ : -)"
            )
        _matches(given, "sha256=" + _hmac(secret, f"{stamp}.{delivery}.".encode() + body))
        off = self.clock() - int(stamp)
        if abs(off) > WINDOW:
            raise Refused(
                401,
                f"the notice was signed {abs(off):.0f}s {'ago' if off > 0 else 'ahead'}, beyond "
                f"the {WINDOW:.0f}s a notice may be off this host's clock: a replay, or a "
                "clock to fix",
            )
        self.git_seen.take(delivery)

    # ------------------------------------------------------------------ both

    def _secret(self, path: str) -> str:
        if self.secret is None:
            raise Refused(
                404, f"no webhook secret is configured for {path}: start with --webhook-secret-file"
            )
        return self.secret

    def _wake(self, reason: str, recheck: Recheck | None) -> None:
        if self.loop is None:
            raise Refused(409, "nothing reconciles here: this is `reconciler serve`")
        self.loop.wake(reason, recheck)


def named_pulls(event: str, data: Mapping[str, Any]) -> Recheck | None:
    """The pull requests a GitHub delivery is about, by number or by head commit (check runs
    and statuses name commits; a check run of a fork names no PR): those whose feedback the
    pass reads anew. None when it names none, or no repository."""
    repo = _dict(data.get("repository")).get("full_name")
    numbers: list[Any] = []
    shas: list[Any] = []
    if event in ("pull_request", "pull_request_review"):
        pull = _dict(data.get("pull_request"))
        numbers.append(pull.get("number") or data.get("number"))
        shas.append(_dict(pull.get("head")).get("sha"))
    elif event in ("check_run", "check_suite"):
        item = _dict(data.get(event))
        numbers.extend(_dict(p).get("number") for p in _list(item.get("pull_requests")))
        shas.append(item.get("head_sha"))
    elif event == "status":
        shas.append(data.get("sha"))
    kept_numbers = sorted({n for n in numbers if isinstance(n, int) and not isinstance(n, bool)})
    kept_shas = sorted({s for s in shas if isinstance(s, str) and SHA.match(s)})
    if not isinstance(repo, str) or not (kept_numbers or kept_shas):
        return None
    return Recheck(repo=repo, numbers=kept_numbers[:NAMED_KEPT], shas=kept_shas[:NAMED_KEPT])


def _said_pulls(recheck: Recheck) -> str:
    """The pull requests a recheck names, as a sentence says them."""
    named = [f"#{n}" for n in recheck.numbers] + [f"those of {s[:12]}" for s in recheck.shas]
    return f"{recheck.repo} {', '.join(named)}"


def _github_payload(body: bytes) -> dict[str, Any]:
    """What a GitHub delivery says: its JSON body, or the ``payload`` field of a form-encoded
    one (a webhook set to ``application/x-www-form-urlencoded``); never refused, since the pass
    is asked for whatever it says (an empty payload names no PRs)."""
    try:
        return _json(body)
    except Refused:
        pass
    form = parse_qs(body.decode("utf-8", "replace"), max_num_fields=16)
    try:
        return _json(form.get("payload", [""])[0].encode())
    except Refused:
        return {}


def _hmac(secret: str, data: bytes) -> str:
    return hmac.new(secret.encode(), data, hashlib.sha256).hexdigest()


def _matches(given: str, expected: str) -> None:
    if not hmac.compare_digest(given.strip().encode(), expected.encode()):
        raise Refused(401, "the delivery's signature does not match the webhook secret")


def _json(body: bytes) -> dict[str, Any]:
    """The signed body as a JSON object (an empty one for an empty body)."""
    if not body.strip():
        return {}
    try:
        data = json.loads(body)
    except ValueError:
        raise Refused(400, "the body is not JSON; send a JSON object") from None
    if not isinstance(data, dict):
        raise Refused(400, "the body is JSON but not an object; send a JSON object")
    return data


def _said(value: str) -> str:
    """What a body says, as a reason in the log may carry it: one short printable word."""
    return SAID.sub("?", value)[:100]


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []
