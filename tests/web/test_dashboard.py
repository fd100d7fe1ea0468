"""The dashboard's server side, over real sockets: the page and its files with their security
headers, and the documents only the dashboard asks for (summary, the feed, a run's files, a
task's changes, the event stream)."""

from __future__ import annotations

import http.client
import json
from typing import Any

from tests.integration.world import World
from tests.web.conftest import SECRET_SHAPE
from tests.web.support import TOKEN, Serving, token_file


def test_the_page_and_its_files_are_served_with_a_strict_policy(served_world: World) -> None:
    serving = Serving(served_world, "--listen", "127.0.0.1:0")
    try:
        for path in ("/", "/tasks/a", "/lanes", "/plan", "/events"):
            page = serving.client.get(path)
            assert page.status == 200, path
            assert page.headers["content-type"].startswith("text/html")
            policy = page.headers["content-security-policy"]
            assert "script-src 'self'" in policy and "default-src 'none'" in policy
            assert "frame-ancestors 'none'" in policy
            assert b'<script src="/static/app.js" defer></script>' in page.body
            assert b"http://" not in page.body and b"https://" not in page.body  # no CDN
        script = serving.client.get("/static/app.js")
        assert script.status == 200 and script.headers["content-type"].startswith("text/javascript")
        assert b"innerHTML" not in script.body and b"eval(" not in script.body
        assert serving.client.get("/static/../app.py").status == 404
        assert serving.client.get("/static/nope.js").status == 404
    finally:
        serving.stop()


def test_summary_feed_log_and_changes_are_read_from_the_state_and_the_lane(
    served_world: World,
) -> None:
    serving = Serving(
        served_world, "--listen", "127.0.0.1:0", "--token-file", str(token_file(served_world))
    )
    client = serving.client
    try:
        summary = client.json("/api/v1/summary")
        assert summary["total"] == 4 and summary["lanes"] == ["api", "web"]
        assert sum(summary["phases"].values()) == 4 and summary["controlProblem"] is None
        assert summary["reconciling"] is False

        feed = client.json("/api/v1/events?limit=5")
        assert len(feed["events"]) == 5
        ids = [e["id"] for e in feed["events"]]
        assert ids == sorted(ids) and feed["next"] == ids[-1]
        assert {e["task"] for e in feed["events"]} <= {"a", "b", "c", "d", None}
        forward = client.json(f"/api/v1/events?after={ids[0]}&limit=2")
        assert [e["id"] for e in forward["events"]] == ids[1:3]

        prompt = client.json("/api/v1/tasks/a/log?file=prompt")
        assert prompt["attempt"] == 1 and prompt["file"] == "prompt" and prompt["ended"]
        assert "Do a." in prompt["data"]
        assert SECRET_SHAPE not in prompt["data"] and TOKEN not in prompt["data"]  # redacted
        output = client.json("/api/v1/tasks/a/log")
        assert "DONE" in output["data"] and output["offset"] > 0
        rest = client.json(f"/api/v1/tasks/a/log?offset={output['offset']}")
        assert rest["data"] == "" and rest["ended"]
        bad = client.get("/api/v1/tasks/a/log?run=one")
        assert bad.status == 400 and b"ATTEMPT.ITERATION" in bad.body

        change = client.json("/api/v1/tasks/a/diff")
        assert change["source"] == "worktree" and change["base"] and change["head"]
        assert "+run 1.1" in change["diff"] and "a.txt" in change["diff"]
        assert change["untracked"] == [] and change["truncated"] is False
        assert client.get("/api/v1/tasks/nope/diff").status == 404

        shown = client.json("/api/v1/tasks/a/pr")
        assert shown["pr"]["task"] == "a" and shown["pr"]["head"] == "agent/a"
        assert shown["pr"]["state"] == "open" and isinstance(shown["comments"], list)
        nothing = client.get("/api/v1/tasks/c/pr")
        assert nothing.status == 404 and b"no PR yet" in nothing.body

        lanes = client.json("/api/v1/lanes")["lanes"]
        assert all(len(lane["spendByHour"]) in (0, *range(1, 25)) for lane in lanes)
        tasks = client.json("/api/v1/tasks")["tasks"]
        assert all(isinstance(t["firstSeen"], float) for t in tasks)
    finally:
        serving.stop()


def _stream(serving: Serving, headers: dict[str, str]) -> tuple[http.client.HTTPResponse, Any]:
    conn = http.client.HTTPConnection(serving.client.host, serving.client.port, timeout=30)
    conn.request("GET", "/api/v1/stream", headers=headers)
    return conn.getresponse(), conn


def _messages(response: http.client.HTTPResponse, want: int) -> list[tuple[str, dict[str, Any]]]:
    messages: list[tuple[str, dict[str, Any]]] = []
    kind = ""
    while len(messages) < want:
        line = response.readline().decode().rstrip("\n")
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            messages.append((kind, json.loads(line[6:])))
    return messages


def test_the_stream_says_hello_then_each_new_event_and_each_change(served_world: World) -> None:
    serving = Serving(served_world, "--listen", "127.0.0.1:0")
    try:
        response, conn = _stream(serving, {})
        assert response.status == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        ((kind, hello),) = _messages(response, 1)
        assert kind == "hello" and hello["event"] > 0
        # Another process (`reconciler apply`) writes the state: an event, then `changed`.
        served_world.task("e", "web", "succeed")
        served_world.commit("one more")
        assert served_world.cli("apply", "--yes").returncode == 0
        seen = _messages(response, 3)
        kinds = [k for k, _ in seen]
        assert "event" in kinds, seen
        events = [m for k, m in seen if k == "event"]
        assert all(e["id"] > hello["event"] for e in events)
        conn.close()

        # A client that reconnects with Last-Event-ID gets what it missed, from there on.
        response, conn = _stream(serving, {"Last-Event-ID": str(hello["event"])})
        _hello, (kind, first) = _messages(response, 2)
        assert kind == "event" and first["id"] == hello["event"] + 1
        conn.close()
    finally:
        serving.stop()
