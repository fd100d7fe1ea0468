"""The HTTP API against the real server on 127.0.0.1: each document is the CLI's JSON, pages and
filters, access, the metrics, and the loop's side (refresh, a client that never reads)."""

from __future__ import annotations

import json
import socket
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from reconciler.report import EventsPage, LanesReport, RunsReport, TasksPage
from tests.integration.world import World
from tests.web.conftest import SECRET_SHAPE
from tests.web.support import TOKEN, Client, Serving, refused, run_listening, token_file


def cli_json(world: World, *args: str) -> Any:
    proc = world.cli(*args, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_every_document_is_the_clis_json(served_world: World) -> None:
    world = served_world
    serving = Serving(world, "--listen", "127.0.0.1:0", "--token-file", str(token_file(world)))
    try:
        api = serving.client
        assert api.json("/api/v1/status") == cli_json(world, "status")
        assert api.json("/api/v1/plan") == cli_json(world, "plan")
        for name in ("a", "b", "c", "d"):
            # the CLI does not know the listener's token: the API masks it as every secret
            described = json.loads(
                json.dumps(cli_json(world, "describe", name)).replace(TOKEN, "***")
            )
            assert api.json(f"/api/v1/tasks/{name}") == described
            runs = api.json(f"/api/v1/tasks/{name}/runs")
            assert runs == {"name": name, "runs": described["runs"]}
            RunsReport.model_validate(runs)
            events = api.json(f"/api/v1/tasks/{name}/events")
            assert events == {"name": name, "events": described["events"], "next": None}
            EventsPage.model_validate(events)
        status = cli_json(world, "status")
        assert {t["name"]: t["phase"] for t in status["tasks"]} == {
            "a": "pr-open",
            "b": "pr-open",
            "c": "failed",
            "d": "pr-open",
        }
        lanes = api.json("/api/v1/lanes")
        LanesReport.model_validate(lanes)
        by_name = {lane["name"]: lane for lane in lanes["lanes"]}
        assert by_name["web"]["slots"] == 2 and by_name["web"]["slotsUsed"] == 0
        assert by_name["api"]["slotsFree"] == 1
        assert by_name["web"]["todayUsd"] == status["lanes"]["web"]["todayUsd"]
        assert by_name["web"]["reachable"] and by_name["web"]["preflight"]
        assert all(check["ok"] for check in by_name["web"]["preflight"])
        # no token and no credential leaves the server, though the prompt holds both
        answer = api.get("/api/v1/tasks/a")
        assert TOKEN.encode() not in answer.body and SECRET_SHAPE.encode() not in answer.body
        assert b"***" in answer.body
        assert answer.headers["cache-control"] == "no-store"
        # the published schemas
        spec = api.json("/api/v1/openapi.json")
        assert {"/api/v1/tasks", "/api/v1/tasks/{name}", "/api/v1/refresh"} <= set(spec["paths"])
        assert "DescribeReport" in spec["components"]["schemas"]
        missing = api.get("/api/v1/tasks/nope")
        assert missing.status == 404
        assert missing.json()["error"] == {
            "status": 404,
            "message": "no task named nope; GET /api/v1/tasks lists the tasks",
        }
        assert api.get("/api/v1/nothing").json()["error"]["status"] == 404
    finally:
        serving.stop()


def test_tasks_come_in_pages_filtered_by_lane_phase_and_label(served_world: World) -> None:
    serving = Serving(served_world, "--listen", "127.0.0.1:0")
    try:
        api = serving.client
        names: list[str] = []
        after = ""
        pages = 0
        while True:
            page = api.json(f"/api/v1/tasks?limit=1&after={after}")
            TasksPage.model_validate(page)
            assert page["total"] == 4 and len(page["tasks"]) == 1
            names += [t["name"] for t in page["tasks"]]
            pages += 1
            if page["next"] is None:
                break
            after = page["next"]
        assert names == ["a", "b", "c", "d"] and pages == 4
        everything = api.json("/api/v1/tasks")
        status = api.json("/api/v1/status")
        assert everything["tasks"] == status["tasks"] and everything["next"] is None

        def names_of(query: str) -> list[str]:
            return [t["name"] for t in api.json(f"/api/v1/tasks?{query}")["tasks"]]

        assert names_of("lane=api") == ["c"]
        assert names_of("phase=pr-open&lane=web") == ["a", "b", "d"]
        assert names_of("phase=failed") == ["c"]
        assert names_of("label=team") == ["d"]
        assert names_of("label=team%3Dweb") == ["d"]
        assert names_of("label=team%3Dother") == []
        bad = api.get("/api/v1/tasks?limit=0")
        assert bad.status == 400 and "limit" in bad.json()["error"]["message"]
        events = api.json("/api/v1/tasks/a/events?limit=2")
        assert len(events["events"]) == 2 and events["next"] == events["events"][-1]["id"]
        rest = api.json(f"/api/v1/tasks/a/events?after={events['next']}&limit=1000")
        every = api.json("/api/v1/tasks/a/events")["events"]
        assert events["events"] + rest["events"] == every and rest["next"] is None
    finally:
        serving.stop()


def test_a_state_changing_request_needs_the_token_and_serve_reconciles_nothing(
    served_world: World,
) -> None:
    world = served_world
    serving = Serving(world, "--listen", "127.0.0.1:0", "--token-file", str(token_file(world)))
    try:
        api = serving.client
        # on loopback the reads are open, and health and metrics too
        assert api.get("/api/v1/status").status == 200
        assert api.get("/healthz").json()["ok"] is True
        assert api.get("/readyz").status == 200
        assert api.get("/metrics").status == 200
        missing = api.request("POST", "/api/v1/refresh")
        assert missing.status == 401 and missing.headers["www-authenticate"].startswith("Bearer")
        assert api.request("POST", "/api/v1/refresh", token="wrong" * 8).status == 401
        cross = api.request("POST", "/api/v1/refresh", TOKEN, Origin="http://evil.example")
        assert cross.status == 403
        site = api.request("POST", "/api/v1/refresh", TOKEN, Sec_Fetch_Site="cross-site")
        assert site.status == 403
        answer = api.request("POST", "/api/v1/refresh", TOKEN)
        assert answer.status == 409
        assert "nothing reconciles here" in answer.json()["error"]["message"]
        assert api.request("GET", "/api/v1/refresh", TOKEN).status == 405
    finally:
        serving.stop()


def test_a_listener_others_can_reach_needs_tls_or_the_flag_and_a_token(
    served_world: World,
) -> None:
    world = served_world
    proc = refused(world, "--listen", "0.0.0.0:0", "--token-file", str(token_file(world)))
    assert "--tls-cert and --tls-key, or --insecure-listen" in proc.stderr
    proc = refused(world, "--listen", "0.0.0.0:0", "--insecure-listen")
    assert "--token-file" in proc.stderr
    proc = refused(world, "--listen", "127.0.0.1:0", "--token-file", str(token_file(world, 0o644)))
    assert "can be read by others (mode 644)" in proc.stderr
    assert "chmod 600" in proc.stderr
    proc = refused(world, "--listen", "example.org:80")
    assert "not an IP address" in proc.stderr
    # every interface, without TLS by choice: the API and metrics need the token, health not
    serving = Serving(
        world, "--listen", "0.0.0.0:0", "--insecure-listen", "--token-file", str(token_file(world))
    )
    try:
        port = serving.url.rsplit(":", 1)[1]
        api = Client(f"http://127.0.0.1:{port}")
        assert api.get("/api/v1/status").status == 401
        assert api.get("/api/v1/status", token="x" * 40).status == 401
        assert api.get("/api/v1/status", token=TOKEN).status == 200
        assert api.get("/metrics").status == 401
        assert api.get("/metrics", token=TOKEN).status == 200
        for path in ("/api/v1/tasks/a/log?file=prompt", "/api/v1/tasks/a/diff", "/api/v1/stream"):
            assert api.get(path).status == 401, path
        assert api.get("/api/v1/tasks/a/diff", token=TOKEN).status == 200
        # the page holds no data: it is open, and asks for the token itself
        page = api.get("/")
        assert page.status == 200 and TOKEN.encode() not in page.body
        assert api.get("/healthz").status == 200
    finally:
        serving.stop()


def _families(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def test_metrics_are_the_states_figures(served_world: World) -> None:
    serving = Serving(served_world, "--listen", "127.0.0.1:0")
    try:
        answer = serving.client.get("/metrics")
        assert answer.status == 200 and answer.headers["content-type"].startswith("text/plain")
        metrics = _families(answer.body.decode())
        tasks = metrics["reconciler_tasks"]
        assert tasks[(("lane", "web"), ("phase", "pr-open"))] == 3
        assert tasks[(("lane", "api"), ("phase", "failed"))] == 1
        assert tasks[(("lane", "api"), ("phase", "running"))] == 0
        assert metrics["reconciler_slots_free"] == {(("lane", "api"),): 1, (("lane", "web"),): 2}
        runs = metrics["reconciler_runs"]
        assert runs[(("lane", "web"), ("outcome", "succeeded"))] == 3
        assert runs[(("lane", "api"), ("outcome", "failed"))] == 1
        assert metrics["reconciler_runs_started_total"][(("lane", "web"),)] == 3
        assert (("agent", "succeed"), ("lane", "web")) in metrics["reconciler_tokens_total"]
        # the loop's own figures exist only where a loop runs
        assert "reconciler_pass_duration_seconds_count" not in metrics
    finally:
        serving.stop()


def test_run_listen_refreshes_on_request_and_a_client_that_never_reads_stalls_nothing(
    served_world: World,
) -> None:
    world = served_world
    daemon, api = run_listening(
        world, "--interval", "1h", "--listen", "127.0.0.1:0", "--token-file", str(token_file(world))
    )
    hostile: list[socket.socket] = []
    try:
        daemon.wait_for(daemon.passes, "the first pass", timeout=60)
        ready = daemon.wait_for(
            lambda: api.get("/readyz").status == 200, "ready after a pass", timeout=60
        )
        assert ready
        before = len(daemon.passes())
        answer = api.request("POST", "/api/v1/refresh", TOKEN)
        assert answer.status == 200 and answer.json()["accepted"] is True
        daemon.wait_for(
            lambda: any("refresh" in p.get("reasons", {}) for p in daemon.passes()[before:]),
            "a pass the refresh asked for",
            timeout=60,
        )
        # clients that ask and never read, and one that never finishes its request
        host, port = api.host, api.port
        for _ in range(5):
            sock = socket.create_connection((host, port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
            sock.sendall(b"GET /api/v1/tasks/a HTTP/1.1\r\nHost: x\r\n\r\n" * 50)
            hostile.append(sock)
        sock = socket.create_connection((host, port))
        sock.sendall(b"GET /api/v1/status HTTP/1.1\r\nHost: x\r\n")
        hostile.append(sock)
        for _ in range(2):
            daemon.poke()  # passes go on, each seen in the log
        assert api.get("/healthz").status == 200  # and other clients are served
        metrics = _families(api.get("/metrics").body.decode())
        assert metrics["reconciler_pass_duration_seconds_count"][(("result", "ok"),)] >= 4
        assert metrics["reconciler_seconds_since_last_successful_pass"][()] >= 0
    finally:
        for sock in hostile:
            sock.close()
        assert daemon.stop() == 0
