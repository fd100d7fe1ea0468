"""GitHub's webhook: a signed delivery asks `run` for a pass; unsigned, forged and replayed
deliveries are refused, and the secret never comes back in an answer."""

from __future__ import annotations

import hashlib
import hmac
import json

from tests.integration.world import World
from tests.web.support import Serving, run_listening, token_file

SECRET = "webhook-secret-of-the-tests-" + "s" * 16


def signed(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def test_a_signed_push_starts_a_pass_and_forged_or_replayed_ones_are_refused(
    served_world: World,
) -> None:
    world = served_world
    secret_file = world.root / "webhook-secret"
    secret_file.write_text(SECRET + "\n")
    secret_file.chmod(0o600)
    daemon, api = run_listening(
        world,
        "--interval",
        "1h",
        "--listen",
        "127.0.0.1:0",
        "--token-file",
        str(token_file(world)),
        "--webhook-secret-file",
        str(secret_file),
    )
    try:
        daemon.wait_for(daemon.passes, "the first pass", timeout=60)
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
        daemon.wait_for(
            lambda: any("github-push" in p.get("reasons", {}) for p in daemon.passes()[before:]),
            "a pass the push asked for",
            timeout=60,
        )
        assert deliver("push", "d-4", signed(body)) == 409  # the same delivery again: a replay
        assert deliver("issues", "d-5", signed(body)) == 200  # answered, nothing to do
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
