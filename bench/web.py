"""The HTTP API at scale: a ``/metrics`` scrape and the first page of ``/api/v1/tasks`` over
N tasks, through the real server on 127.0.0.1, against a bare status computation."""

from __future__ import annotations

import http.client
import time

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

SCRAPE_SECONDS = 0.05  # the target: a scrape at 10k tasks within 50 ms
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
