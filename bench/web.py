"""The HTTP API at scale: a ``/metrics`` scrape and the first page of ``/api/v1/tasks`` over
N tasks, through the real server on 127.0.0.1, against a bare status computation."""

from __future__ import annotations

import http.client
import tempfile
import time
from pathlib import Path

from bench.options import Options
from bench.plan_scale import build
from bench.sandbox import Sandbox
from bench.table import Table, log, median
from reconciler.engine import Context, Engine
from reconciler.record import Run
from reconciler.report import status_view
from reconciler.state import Store
from reconciler.web.listen import check_listen
from reconciler.web.server import Server
from reconciler.web.views import Views

SCRAPE_SECONDS = 0.05  # the target: a scrape at 10k tasks within 50 ms
PAINT_SECONDS = 1.0  # the target: the dashboard's first view drawn within 1 s at 10k tasks
STREAM_SECONDS = 1.0  # the target: a state change on an open stream within 1 s
ROUNDS = 7


def seed_runs(ctx: Context) -> None:
    """One ended, succeeded run per task, with its spend: what a scrape tallies."""
    with Store.open(ctx.state_dir) as store, store.transaction() as tx:
        for name, row in store.tasks().items():
            tx.upsert_run(
                Run(
                    task=name,
                    attempt=1,
                    iteration=1,
                    generation=row.generation or "g",
                    lane=row.lane,
                    repo=row.repo,
                    run_dir=f"/nowhere/{name}/1.1",
                    started_at=1.0,
                    ended_at=2.0,
                    exit_code=0,
                    outcome="succeeded",
                    cost_usd=0.01,
                    input_tokens=100,
                    output_tokens=20,
                )
            )


def get(port: int, path: str) -> tuple[float, int]:
    """Seconds for one GET on a fresh connection, and the body's size."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        t0 = time.perf_counter()
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        elapsed = time.perf_counter() - t0
    finally:
        conn.close()
    if response.status != 200:
        raise SystemExit(f"GET {path} answered {response.status}: {body[:300]!r}")
    return elapsed, len(body)


def run(box: Sandbox, table: Table, options: Options) -> None:
    n = max(options.sizes)
    log(f"web: the API over {n} tasks")
    ctx, _ = build(box, n, name="web")
    seed_runs(ctx)
    engine = Engine(ctx)
    bare = []
    for _ in range(3):
        t0 = time.perf_counter()
        status_view(engine, engine.load())
        bare.append(time.perf_counter() - t0)
    server = Server(
        ctx,
        check_listen("127.0.0.1:0", token_file=None, tls_cert=None, tls_key=None, insecure=False),
    )
    server.start()
    try:
        get(server.port, "/healthz")
        cold_scrape, cold_page = [], []
        scrape, page = [], []
        size = 0
        for _ in range(ROUNDS):
            server.views.invalidate()  # as after a pass: the next request computes anew
            cold_scrape.append(get(server.port, "/metrics")[0])
            scrape.append(get(server.port, "/metrics")[0])
            server.views.invalidate()
            cold_page.append(get(server.port, "/api/v1/tasks")[0])
            took, size = get(server.port, "/api/v1/tasks")
            page.append(took)
        paints = first_paints(server.url, server.views)
        seen = stream_latencies(server.port, ctx)
    finally:
        server.stop()
    base = median(bare)
    table.add(f"web({n}): status computation (baseline)", f"{base:.3f}s")
    table.add(
        f"web({n}): /metrics scrape",
        f"{median(scrape) * 1000:.1f}ms",
        f"≤ {SCRAPE_SECONDS * 1000:.0f}ms",
        median(scrape) <= SCRAPE_SECONDS,
    )
    table.add(
        f"web({n}): /metrics scrape after a pass / status",
        f"{median(cold_scrape) / base:.2f}",
    )
    table.add(
        f"web({n}): /api/v1/tasks first page ({size // 1024} KiB)",
        f"{median(page) * 1000:.1f}ms",
    )
    table.add(
        f"web({n}): /api/v1/tasks first page after a pass / status",
        f"{median(cold_page) / base:.2f}",
    )
    if paints:
        table.add(
            f"web({n}): dashboard first paint, after a pass (chromium)",
            f"{median(paints):.2f}s",
            f"≤ {PAINT_SECONDS:.0f}s",
            median(paints) <= PAINT_SECONDS,
        )
        table.add(
            f"web({n}): dashboard first paint, after a pass / status",
            f"{median(paints) / base:.2f}",
        )
    table.add(
        f"web({n}): new event → on an open stream",
        f"{median(seen) * 1000:.0f}ms",
        f"≤ {STREAM_SECONDS * 1000:.0f}ms",
        median(seen) <= STREAM_SECONDS,
    )


def first_paints(url: str, views: Views) -> list[float]:
    """Seconds from navigation to the task list drawn with its data, in headless chromium, with
    the status computed anew each time (as after a pass). None measured without chromium."""
    try:
        from tests.web.browser import missing
    except ImportError:
        return []
    reason = missing()
    if reason:
        log(f"web: no dashboard figure ({reason})")
        return []
    from selenium.common.exceptions import WebDriverException

    from tests.web.browser import chromium

    paints = []
    try:
        with tempfile.TemporaryDirectory() as tmp, chromium(Path(tmp)) as browser:
            for _ in range(3):
                views.invalidate()
                browser.open(f"{url}/")
                painted = browser.wait(
                    "return document.querySelector('tr[data-task]') "
                    "&& document.body.dataset.painted",
                    "the first view",
                )
                paints.append(int(painted) / 1000)
    except WebDriverException as exc:
        log(f"web: no dashboard figure (chromium failed: {exc.msg})")
        return []
    return paints


def stream_latencies(port: int, ctx: Context) -> list[float]:
    """Seconds from an event's commit to its arrival on an open ``/api/v1/stream``."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/api/v1/stream")
    response = conn.getresponse()
    latencies = []
    try:
        _next_message(response, "hello")
        with Store.open(ctx.state_dir) as store:
            for i in range(ROUNDS):
                t0 = time.perf_counter()
                with store.transaction() as tx:
                    tx.add_event(None, "bench", f"event {i}")
                _next_message(response, "event")
                latencies.append(time.perf_counter() - t0)
    finally:
        conn.close()
    return latencies


def _next_message(response: http.client.HTTPResponse, kind: str) -> None:
    while True:
        line = response.readline()
        if not line:
            raise SystemExit("the stream ended")
        if line.decode().strip() == f"event: {kind}":
            return
