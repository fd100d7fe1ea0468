"""The one redaction rule: known secrets and their pieces, credential shapes, and ordinary text
left alone. Tables of (text, expected) plus properties checked over every row."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from reconciler.redact import MASK, redact, secrets_of_url

GHP = "ghp_" + "A1b2C3d4E5f6G7h8I9j0" * 2
FINE = "github_pat_11ABCDEFG0" + "x1Y2z3" * 10
ANTHROPIC = "sk-ant-api03-" + "Ab3_dE-fG7hIj" * 7 + "AA"
OPENAI = "sk-" + "T3BlbkFJ" * 6
OPENAI_PROJ = "sk-proj-" + "Zx9_Yw8-Vu7Ts6" * 6
GOOGLE = "AIza" + "SyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q"[:35]
AWS = "AKIAIOSFODNN7EXAMPLE"
AWS_TEMP = "ASIAY34FZKBOKMUTVV7A"
SLACK = "xoxb-1234567890-0987654321-AbCdEfGhIjKlMnOp"
GITLAB = "glpat-" + "x1Y2z3A4b5C6d7E8f9G0"

SHAPED = [GHP, "gho_" + GHP[4:], "ghs_" + GHP[4:], FINE, ANTHROPIC, OPENAI, OPENAI_PROJ]
SHAPED += [GOOGLE, AWS, AWS_TEMP, SLACK, GITLAB]


@pytest.mark.parametrize("token", SHAPED)
@pytest.mark.parametrize(
    "template",
    [
        "{}",
        "token {} was refused",
        "GH_TOKEN={}",
        '{{"key": "{}"}}',
        "'{}'",
        "line one\n{}\nline three",
        "export ANTHROPIC_API_KEY={}; run",
    ],
)
def test_credential_shapes_are_masked_wherever_they_stand(template: str, token: str) -> None:
    text = template.format(token)
    out = redact(text)
    assert token not in out
    assert out == template.format(MASK)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("https://bot:s3cr3t@example.com/x.git", "https://***@example.com/x.git"),
        (
            "fatal: https://bot:s3cr3t@127.0.0.1:9/x.git/: refused",
            "fatal: https://***@127.0.0.1:9/x.git/: refused",
        ),
        ("https://x-access-token:abc@github.com/a/b", "https://***@github.com/a/b"),
        ("git clone https://TOKENTOKEN@host/x", "git clone https://***@host/x"),
        ("'http://u:p%40ss@host'", "'http://***@host'"),
        ("ssh://agent-web@build-2:22", "ssh://agent-web@build-2:22"),
        ("git+ssh://git@github.com/a/b", "git+ssh://git@github.com/a/b"),
        ("ssh://agent:pass123@build-2", "ssh://***@build-2"),
        ("Authorization: Bearer abc.def.ghi", "Authorization: Bearer ***"),
        ("authorization: token deadbeefcafe", "authorization: token ***"),
        ("Proxy-Authorization: Basic dXNlcjpwYXNz", "Proxy-Authorization: Basic ***"),
        ('{"Authorization": "Bearer x.y.z", "a": 1}', '{"Authorization": "Bearer ***", "a": 1}'),
        ("AUTHORIZATION=opaque-value next", "AUTHORIZATION=*** next"),
        ("curl -H 'Bearer abcdefghijklmnop0123'", "curl -H 'Bearer ***'"),
        ("sent Bearer abcdefghijklmnop0123==", "sent Bearer ***"),
    ],
)
def test_urls_and_headers(text: str, expected: str) -> None:
    assert redact(text) == expected


ORDINARY = [
    "",
    "Plan: 3 to start, 1 to retry, 1 to close.",
    "manifests/tasks.yaml:12:3: unknown field 'promt' (did you mean 'prompt'?)",
    "/home/agent-web/worktrees/.runs/fix-login/2.1/output.log",
    "revision 3f2a9c0e8b7d6a5f4e3d2c1b0a9f8e7d6c5b4a39 and 16-hex generation 0123456789abcdef",
    "session 0d0c5e1e-7c2b-4d1e-9a3f-5b6c7d8e9f01 resumed",
    "task sk-learn-upgrade-dependencies-to-latest is pending",
    "task risk-assessment-of-the-old-billing-code failed",
    "the Bearer of bad news; authorization needed",
    "https://github.com/acme/webapp/pull/42 and ssh://agent-web@build-2:22",
    "git@github.com:acme/webapp.git",
    "ghp_short and gh_pat and xox and AKIA",
    "AKIAIOSFODNN7EXAMPLEMORE is too long for an access key",
    "emoji ✓ and accents é and CJK 漢字",
    "a\tb\nc\r\n",
]


@pytest.mark.parametrize("text", ORDINARY)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert redact(text) == text
    assert redact(text, ["an-unrelated-secret"]) == text


def test_known_secrets_and_every_piece_of_a_malformed_one() -> None:
    token = "ghp_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\nsecondhalfBBBBBBBBBB"
    first, second = token.split()
    for text in (
        f"header value: {token!r}",  # requests quotes it as a repr: \n glues the halves
        f"first {first} then {second}",
        f"only the second: {second}.",
        token,
    ):
        out = redact(text, [token])
        assert first not in out and second not in out, out
        assert "secondhalf" not in out
    spaced = "opaque-token-part one more-opaque-part"
    out = redact("x opaque-token-part, one, more-opaque-part y", [spaced])
    assert out == "x ***, one, *** y"  # a piece shorter than MIN_SECRET is too common to mask


def test_a_plain_secret_without_a_shape() -> None:
    secret = "c0ffee-not-shaped-like-anything"
    assert redact(f"said {secret}!", [secret]) == "said ***!"
    assert redact(f"said {secret}!", []) == f"said {secret}!"
    assert redact("short ab", ["ab", "", "   "]) == "short ab"


ALL_ROWS = [
    *ORDINARY,
    *(f"x {t} y" for t in SHAPED),
    "https://bot:s3cr3t@example.com/x.git",
    "Authorization: Bearer abc.def.ghi",
]


@pytest.mark.parametrize("text", ALL_ROWS)
def test_properties_idempotent_and_json_safe(text: str) -> None:
    once = redact(text)
    assert redact(once) == once
    dumped = json.dumps({"message": text, "list": [text, 1]})
    assert json.loads(redact(dumped)) == {"message": once, "list": [once, 1]}
    if text not in ORDINARY:  # nothing credential-shaped survives
        assert MASK in once
        assert not any(token in once for token in SHAPED)


def test_secrets_of_url() -> None:
    assert secrets_of_url("https://bot:s3cr3t@host/x") == ["s3cr3t"]
    assert secrets_of_url("https://bot:p%40ss@host/x") == ["p%40ss", "p@ss"]
    assert secrets_of_url("https://TOKEN123@host/x") == ["TOKEN123"]
    assert secrets_of_url("ssh://agent@host/x") == []
    assert secrets_of_url("/srv/control.git") == []
    assert secrets_of_url("git@github.com:a/b") == []
    assert secrets_of_url("https://host/x") == []


def test_the_module_imports_nothing_of_the_reconciler() -> None:
    code = (
        "import sys; import reconciler.redact; "
        "print(sorted(m for m in sys.modules if m.startswith('reconciler')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "['reconciler', 'reconciler.redact']"
    assert not re.search(r"^\s*(import|from)\s+reconciler", _source(), re.M)


def _source() -> str:
    import reconciler.redact

    with open(reconciler.redact.__file__, encoding="utf-8") as f:
        return f.read()


def test_lane_messages_are_masked_before_they_travel() -> None:
    from pydantic import BaseModel

    from reconciler.lanes import LaneClient, LaneUnavailable, RequestFailed, unwrap
    from reconciler.manifests.models import LaneSpec
    from reconciler.protocol import Batch, BatchResult, Failure, ObserveRequest, Response

    said = f"git said https://bot:s3cr3t-Passw0rd@host/x.git and {GHP}"
    failed = Response(ok=False, failure=Failure(error=said, temporary=True))
    with pytest.raises(RequestFailed) as caught:
        unwrap(failed, BaseModel)
    assert str(caught.value) == "git said https://***@host/x.git and ***"
    assert caught.value.temporary

    class Failing:
        def __init__(self, exc: Exception) -> None:
            self.exc = exc

        def exchange(self, batch: Batch) -> BatchResult:
            raise self.exc

    spec = LaneSpec.model_validate({"repos": [{"name": "app", "checkout": "~/src/app"}]})
    for exc in (OSError(said), LaneUnavailable(said, check="host")):
        lane = LaneClient("web", spec, transport=Failing(exc))
        with pytest.raises(LaneUnavailable) as unavailable:
            lane.call([ObserveRequest(lane=lane.ref)])
        assert "s3cr3t" not in str(unavailable.value) and GHP not in str(unavailable.value)
        assert "https://***@host/x.git" in str(unavailable.value)
