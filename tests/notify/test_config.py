"""The Config's notification sinks: what a manifest may say, with every error at its place and
its fix, and the document's published schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reconciler.manifests.errors import ManifestErrors
from reconciler.notify import NotificationDocument, schema_documents
from tests.manifests.manifest_support import load_files

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def config(sinks: str) -> str:
    return f"apiVersion: reconciler/v1\nkind: Config\nmetadata: {{name: default}}\nspec:\n  notifications:\n{sinks}"


def errors(sinks: str) -> list[str]:
    with pytest.raises(ManifestErrors) as caught:
        load_files({"manifests/config.yaml": config(sinks)})
    return [str(e) for e in caught.value]


def test_sinks_of_each_type_load():
    desired = load_files(
        {
            "manifests/config.yaml": config(
                "    - {name: hook, type: webhook, url: 'https://h.example/x?y=1', on: [failed]}\n"
                "    - {name: chat, type: slack, urlFile: /etc/reconciler/slack, on: [done], lanes: [web]}\n"
                "    - name: page\n"
                "      type: command\n"
                "      command: [~/bin/page, --quiet]\n"
                "      on: [control-broken, stalled]\n"
                "      labels: {team: web}\n"
                "      timeout: 30s\n"
                "      attempts: 2\n"
                "      retryDelay: 500ms\n"
            )
        }
    )
    hook, chat, page = desired.config.notifications
    assert (hook.url, hook.timeout, hook.attempts, hook.retry_delay) == (
        "https://h.example/x?y=1",
        10.0,
        5,
        2.0,
    )
    assert (chat.url_file, chat.lanes) == ("/etc/reconciler/slack", ["web"])
    assert (page.command, page.on, page.labels, page.timeout, page.retry_delay) == (
        ["~/bin/page", "--quiet"],
        ["control-broken", "stalled"],
        {"team": "web"},
        30.0,
        0.5,
    )


@pytest.mark.parametrize(
    ("sinks", "expected"),
    [
        (
            "    - {name: chat, type: slack, url: 'https://hooks.slack.com/services/T/B/x', on: [failed]}\n",
            "manifests/config.yaml:6:7: spec.notifications[0]: a Slack webhook URL is a secret"
            "|hint: replace url: with urlFile: PATH",
        ),
        (
            "    - {name: hook, type: webhook, on: [failed]}\n",
            "manifests/config.yaml:6:7: spec.notifications[0]: a webhook sink needs exactly one of url and urlFile"
            "|hint: keep url",
        ),
        (
            "    - {name: hook, type: webhook, url: 'http://a', urlFile: /x, on: [failed]}\n",
            "manifests/config.yaml:6:7: spec.notifications[0]: a webhook sink needs exactly one of url and urlFile",
        ),
        (
            "    - {name: page, type: command, on: [failed]}\n",
            "manifests/config.yaml:6:7: spec.notifications[0]: a command sink needs command"
            "|hint: add command:",
        ),
        (
            "    - {name: page, type: command, command: [x], url: 'http://a', on: [failed]}\n",
            "manifests/config.yaml:6:7: spec.notifications[0]: a command sink takes no url or urlFile"
            "|hint: remove the fields",
        ),
        (
            "    - {name: hook, type: webhook, url: 'http://a', command: [x], on: [failed]}\n",
            "manifests/config.yaml:6:7: spec.notifications[0]: a webhook sink takes no command",
        ),
        (
            "    - {name: hook, type: webhook, url: 'https://bot:s3cret@h.example/x', on: [failed]}\n",
            "manifests/config.yaml:6:40: spec.notifications[0].url: not an http(s) URL without user"
            "|hint: write http(s)://HOST/PATH",
        ),
        (
            "    - {name: hook, type: webhook, url: 'http://a', urlFile: relative/path, on: [failed]}\n",
            "manifests/config.yaml:6:61: spec.notifications[0].urlFile: 'relative/path' is not an absolute path",
        ),
        (
            "    - {name: hook, type: webhook, url: 'http://a', on: [failed, fail]}\n",
            "manifests/config.yaml:6:65: spec.notifications[0].on[1]: 'fail' is not allowed here; expected 'failed', 'pr-open'",
        ),
        (
            "    - {name: hook, type: webhook, url: 'http://a', on: [failed, failed]}\n",
            "manifests/config.yaml:6:56: spec.notifications[0].on: a transition appears twice in on"
            "|hint: list each transition once",
        ),
        (
            "    - {name: hook, type: webhook, url: 'http://a', on: []}\n",
            "manifests/config.yaml:6:56: spec.notifications[0].on: needs at least 1 item",
        ),
        (
            "    - {name: hook, type: webhook, url: 'http://a', on: [failed]}\n"
            "    - {name: hook, type: webhook, url: 'http://b', on: [done]}\n",
            "manifests/config.yaml:6:5: spec.notifications: the notification sink name 'hook' is used twice"
            "|hint: give each sink its own name",
        ),
        (
            "    - {name: hook, type: email, url: 'http://a', on: [failed]}\n",
            "manifests/config.yaml:6:26: spec.notifications[0].type: 'email' is not allowed here",
        ),
        (
            "    - {name: hook, type: webhook, url: 'http://a', on: [failed], attempts: 0}\n",
            "manifests/config.yaml:6:76: spec.notifications[0].attempts: must be at least 1, got 0",
        ),
        (
            "    - {name: hook, type: webhook, url: 'http://a', on: [failed], secret: x}\n",
            "manifests/config.yaml:6:66: unknown field 'secret' in spec.notifications[0]",
        ),
    ],
)
def test_a_bad_sink_is_an_error_at_its_place_with_the_fix(sinks, expected):
    [error] = errors(sinks)
    for part in expected.split("|"):
        assert part in error, error


def test_the_committed_schema_is_the_document_model():
    for name, text in schema_documents().items():
        assert (SCHEMAS / name).read_text(encoding="utf-8") == text, f"run `make schemas` ({name})"
    schema = json.loads(schema_documents()["notification.json"])
    document = NotificationDocument(
        id="x",
        sink="s",
        transition="done",
        task="a",
        lane="web",
        repo="r",
        phase="done",
        reason_code="Merged",
        reason="",
        pr=None,
        labels={},
        revision=None,
        at="2026-01-01T00:00:00Z",
    ).model_dump(by_alias=True, mode="json")
    assert set(schema["properties"]) == set(document)
    assert set(schema["required"]) <= set(document)
