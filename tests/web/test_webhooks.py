"""The webhooks: a signed delivery asks `run` for a pass (and names the PRs whose feedback it
reads anew); unsigned, forged, stale and replayed deliveries are refused, and the secret never
comes back in an answer."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from prometheus_client.parser import text_string_to_metric_families

from reconciler.daemon import Wakeup
from reconciler.engine import Context, PassResult
from reconciler.protocol import RateLimit, Recheck
from reconciler.web.hooks import Hooks, Refused
from reconciler.web.metrics import Metrics
from reconciler.web.views import LoopState, Views
from tests.integration.world import World
from tests.support.daemon_log import RunLog
from tests.web.support import Client, Serving, run_listening, token_file

SECRET = "webhook-secret-of-the-tests-" + "s" * 16
DOCS = Path(__file__).resolve().parents[2] / "docs"


def signed(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def secret_file(world: World) -> Path:
    path = world.root / "webhook-secret"
    path.write_text(SECRET + "\n")
    path.chmod(0o600)
    return path


def listening(world: World) -> tuple[RunLog, Client]:
    daemon, api = run_listening(
        world,
        "--interval",
        "1h",
        "--listen",
        "127.0.0.1:0",
        "--token-file",
        str(token_file(world)),
        "--webhook-secret-file",
        str(secret_file(world)),
    )
    daemon.wait_for(daemon.passes, "the first pass", timeout=60)
    return daemon, api


def asked_for(daemon: RunLog, before: int, reason: str) -> None:
    daemon.wait_for(
        lambda: any(reason in p.get("reasons", {}) for p in daemon.passes()[before:]),
        f"a pass for {reason}",
        timeout=60,
    )


def test_a_signed_push_starts_a_pass_and_forged_or_replayed_ones_are_refused(
    served_world: World,
) -> None:
    daemon, api = listening(served_world)
    try:
        body = json.dumps({"ref": "refs/heads/main", "zen": SECRET}).encode()

        def deliver(event: str, delivery: str, signature: str | None, data: bytes = body) -> int:
            headers = {"X_GitHub_Event": event, "X_GitHub_Delivery": delivery}
            if signature is not None:
                headers["X_Hub_Signature_256"] = signature
            answer = api.request("POST", "/hooks/github", body=data, **headers)
            assert SECRET.encode() not in answer.body
            return answer.status

        assert deliver("ping", "d-0", signed(body)) == 200
        assert deliver("push", "d-1", None) == 401  # unsigned
        assert deliver("push", "d-2", signed(body, "another secret")) == 401  # forged
        tampered = body.replace(b"main", b"evil")
        assert deliver("push", "d-3", signed(body), tampered) == 401  # a body not signed
        before = len(daemon.passes())
        assert deliver("push", "d-4", signed(body)) == 200
        asked_for(daemon, before, "github-push")
        assert deliver("push", "d-4", signed(body)) == 409  # the same delivery again: a replay
        assert deliver("issues", "d-5", signed(body)) == 200  # answered, nothing to do
        check_run = json.dumps(
            {
                "repository": {"full_name": "acme/app"},
                "check_run": {"head_sha": "a" * 40, "pull_requests": [{"number": 7}]},
            }
        ).encode()
        before = len(daemon.passes())
        answer = api.request(
            "POST",
            "/hooks/github",
            body=check_run,
            X_GitHub_Event="check_run",
            X_GitHub_Delivery="d-6",
            X_Hub_Signature_256=signed(check_run),
        )
        assert answer.status == 200 and "acme/app #7" in answer.json()["message"]
        asked_for(daemon, before, "github-check_run")
    finally:
        assert daemon.stop() == 0


def test_without_a_secret_there_is_no_webhook(served_world: World) -> None:
    serving = Serving(served_world, "--listen", "127.0.0.1:0")
    try:
        answer = serving.client.request(
            "POST", "/hooks/github", body=b"{}", X_GitHub_Event="push", X_GitHub_Delivery="x"
        )
        assert answer.status == 404
        assert "--webhook-secret-file" in answer.json()["error"]["message"]
    finally:
        serving.stop()


def _notice(body: bytes, stamp: int, delivery: str, secret: str = SECRET) -> dict[str, str]:
    mac = hmac.new(secret.encode(), f"{stamp}.{delivery}.".encode() + body, hashlib.sha256)
    return {
        "X_Reconciler_Timestamp": str(stamp),
        "X_Reconciler_Delivery": delivery,
        "X_Reconciler_Signature_256": "sha256=" + mac.hexdigest(),
    }


def test_the_generic_hook_takes_signed_fresh_notices_once(served_world: World) -> None:
    daemon, api = listening(served_world)
    try:
        body = json.dumps({"repository": "control", "ref": "refs/heads/main"}).encode()
        now = int(time.time())

        def post(data: bytes, headers: dict[str, str]) -> int:
            answer = api.request("POST", "/hooks/git", body=data, **headers)
            assert SECRET.encode() not in answer.body
            return answer.status

        assert post(body, {}) == 401  # unsigned
        assert post(body, _notice(body, now, "n-1", "another secret")) == 401  # forged
        assert post(body.replace(b"main", b"evil"), _notice(body, now, "n-1")) == 401
        moved = {**_notice(body, now, "n-1"), "X_Reconciler_Timestamp": str(now + 1)}
        assert post(body, moved) == 401  # the time is signed too
        assert post(body, _notice(body, now - 3600, "n-2")) == 401  # signed an hour ago: stale
        assert post(b"not json", _notice(b"not json", now, "n-3")) == 400
        before = len(daemon.passes())
        assert post(body, _notice(body, now, "n-4")) == 200
        asked_for(daemon, before, "git-push control refs/heads/main")
        assert post(body, _notice(body, now, "n-4")) == 409  # the same notice again: a replay
        # Gitea's and Forgejo's own signature, of the body alone, each delivery once
        gitea = json.dumps(
            {"ref": "refs/heads/dev", "repository": {"full_name": "org/control"}}
        ).encode()
        mac = signed(gitea).removeprefix("sha256=")
        headers = {"X_Gitea_Signature": mac, "X_Gitea_Delivery": "g-1"}
        before = len(daemon.passes())
        assert post(gitea, headers) == 200
        asked_for(daemon, before, "git-push org/control refs/heads/dev")
        assert post(gitea, headers) == 409
        assert post(gitea, {"X_Forgejo_Signature": "0" * 64, "X_Forgejo_Delivery": "f-1"}) == 401
    finally:
        assert daemon.stop() == 0


def _documented_script() -> str:
    text = (DOCS / "api.md").read_text(encoding="utf-8")
    found = re.search(r"```sh\n(#!/bin/sh\n# post-receive.*?)```", text, re.S)
    assert found, "docs/api.md shows the post-receive script for /hooks/git"
    return found.group(1)


@pytest.mark.skipif(
    shutil.which("openssl") is None or shutil.which("curl") is None,
    reason="the documented script needs openssl and curl",
)
def test_the_documented_post_receive_script_starts_a_pass(served_world: World) -> None:
    world = served_world
    daemon, api = listening(world)
    try:
        script = world.root / "post-receive"
        script.write_text(_documented_script())
        script.chmod(0o700)
        before = len(daemon.passes())
        subprocess.run(
            [str(script)],
            input="0" * 40 + " " + "1" * 40 + " refs/heads/main\n",
            text=True,
            check=True,
            env={
                **world.env(),
                "RECONCILER_HOOK_URL": f"http://{api.host}:{api.port}/hooks/git",
                "RECONCILER_HOOK_SECRET": str(secret_file(world)),
            },
            timeout=60,
        )
        asked_for(daemon, before, "git-push control refs/heads/main")
    finally:
        assert daemon.stop() == 0


class Now:
    def __init__(self) -> None:
        self.at = 1_900_000_000.0

    def __call__(self) -> float:
        return self.at


def test_a_delivery_hands_the_loop_the_prs_it_names() -> None:
    """What each GitHub event names reaches the loop's next pass, merged per repository; the
    deliveries that name none ask for a pass only."""
    wakeup = Wakeup()
    hooks = Hooks(SECRET, LoopState(interval=60.0, wake=wakeup.fire))
    repository = {"full_name": "acme/app"}
    sha = "b" * 40
    deliveries: list[tuple[str, dict[str, Any]]] = [
        ("pull_request_review", {"pull_request": {"number": 3, "head": {"sha": sha}}}),
        ("check_suite", {"check_suite": {"head_sha": "c" * 40, "pull_requests": [{"number": 4}]}}),
        ("status", {"sha": "d" * 40}),
        ("check_run", {"check_run": {"head_sha": "nonsense", "pull_requests": [{"number": "x"}]}}),
        ("push", {"ref": "refs/heads/main"}),
    ]
    for n, (event, payload) in enumerate(deliveries):
        body = json.dumps({**payload, "repository": repository}).encode()
        headers = {
            "x-github-event": event,
            "x-github-delivery": f"d-{n}",
            "x-hub-signature-256": signed(body),
        }
        assert hooks.github(headers, body)["accepted"] is True
    # a webhook set to send forms: the same payload in its `payload` field
    form = urlencode({"payload": json.dumps({"sha": "e" * 40, "repository": repository})})
    headers = {"x-github-event": "status", "x-github-delivery": "d-form"}
    headers["x-hub-signature-256"] = signed(form.encode())
    assert hooks.github(headers, form.encode())["accepted"] is True
    assert wakeup.take_recheck() == (
        Recheck(repo="acme/app", numbers=[3, 4], shas=[sha, "c" * 40, "d" * 40, "e" * 40]),
    )
    assert wakeup.take_recheck() == ()  # for one pass
    reasons = wakeup.wait(0)
    assert reasons["github-push"] == 1 and reasons["github-status"] == 2
    with pytest.raises(Refused) as refused:
        Hooks(SECRET, None).github(headers, form.encode())  # `serve`: nothing reconciles
    assert refused.value.status == 409


def test_metrics_show_the_rate_limit_the_passes_brought_and_the_loops_ages(
    served_world: World,
) -> None:
    world = served_world
    now = Now()
    views = Views(Context(control=str(world.control), state_dir=world.state), fetch=False)
    loop = LoopState(interval=60.0, wake=lambda reason, recheck=None: None, clock=now)
    metrics = Metrics(views, loop)
    plan = views.status().plan
    rates = {("web", "app"): RateLimit(remaining=4321, limit=5000, at=now.at)}
    loop.passed(0.5, PassResult(plan, None, rates=rates), True)
    now.at += 42.0
    text = metrics.render().decode()
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    where = (("lane", "web"), ("repo", "app"))
    assert samples[("reconciler_github_rate_limit_remaining", where)] == 4321
    assert samples[("reconciler_github_rate_limit_limit", where)] == 5000
    assert samples[("reconciler_seconds_since_last_successful_pass", ())] == 42.0
    assert samples[("reconciler_seconds_since_revision_change", ())] == 42.0
    # a later pass that reads another figure replaces it
    rates = {("web", "app"): RateLimit(remaining=4000, limit=5000, at=now.at)}
    loop.passed(0.5, PassResult(plan, None, rates=rates), True)
    text = metrics.render().decode()
    assert 'reconciler_github_rate_limit_remaining{lane="web",repo="app"} 4000.0' in text
