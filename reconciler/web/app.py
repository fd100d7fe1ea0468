"""The ASGI application: one table of routes (what each serves, who may ask, what it answers),
from which both the Starlette routes and the OpenAPI document are made.

Renders only: the documents are the CLI's (``reconciler.report``), computed by ``Views``. Every
answer passes one chokepoint, ``_answer``: JSON rendered once and redacted (``reconciler.redact``,
with the listener's token among the secrets), so no token, credential or secret an agent printed
leaves in a response. Errors are JSON too: ``{"error": {"status": N, "message": "…"}}``.

Access, per route:

- ``open``: anyone who reaches the listener (``/healthz``, ``/readyz``; they say nothing of the
  state but whether it can be read);
- ``read``: on loopback anyone; on any other address the bearer token;
- ``write``: always the bearer token, sent by a script, not a browser's cookie (there are none),
  and never from another site (``Origin`` and ``Sec-Fetch-Site`` are checked).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route as StarletteRoute

from reconciler import __version__
from reconciler.engine import PLAN_FORMAT, plan_to_json
from reconciler.lanes import LaneClient, LaneUnavailable, RequestFailed
from reconciler.manifests.errors import ManifestErrors
from reconciler.protocol import (
    ChangesRequest,
    ChangesResult,
    ForgeListRequest,
    ForgeListResult,
    ForgeShowRequest,
    ForgeShowResult,
    LogResult,
    ReadLogRequest,
    TaskRef,
)
from reconciler.record import Run
from reconciler.redact import redact
from reconciler.report import (
    API_REPORTS,
    ChangesReport,
    DescribeReport,
    EventReport,
    EventsPage,
    FeedPage,
    LogPage,
    RunsReport,
    ShowReport,
    SummaryReport,
    TasksPage,
    describe,
    lanes_report,
    newest_pr,
)
from reconciler.state import StateError
from reconciler.web.dashboard import PAGES, Assets
from reconciler.web.hooks import Hooks, Refused
from reconciler.web.listen import Listen
from reconciler.web.metrics import Metrics
from reconciler.web.stream import STREAMS, Pulse, stream_response
from reconciler.web.views import LoopState, Views

Access = Literal["open", "read", "write", "signed"]  # signed: the hook checks its signature
Handler = Callable[["Api", Request], Any]  # runs in a worker thread; returns a JSON value

PAGE_DEFAULT = 100
PAGE_MAX = 1000
EVENT_STREAM = "text/event-stream"
LOG_PIECE = 256 * 1024  # bytes of a run's file per request


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Param:
    name: str
    description: str
    kind: Literal["string", "integer"] = "string"
    where: Literal["query", "path"] = "query"


@dataclass(frozen=True)
class Route:
    path: str
    summary: str
    handler: Handler
    access: Access = "read"
    method: Literal["GET", "POST"] = "GET"
    model: type[BaseModel] | None = None  # the answer's schema, when it has a report model
    params: tuple[Param, ...] = ()
    media: str = "application/json"


@dataclass
class Api:
    views: Views
    listen: Listen
    loop: LoopState | None
    metrics: Metrics
    routes: list[Route] = field(default_factory=list)
    hooks: Hooks = field(init=False)

    def __post_init__(self) -> None:
        self.hooks = Hooks(self.listen.webhook_secret, self.loop)

    # ------------------------------------------------------------------ the documents

    def status(self, _request: Request) -> Any:
        return self.views.status().data

    def tasks(self, request: Request) -> Any:
        view = self.views.status()
        limit = _int(request, "limit", PAGE_DEFAULT, 1, PAGE_MAX)
        after = request.query_params.get("after", "")
        lane = request.query_params.get("lane")
        phase = request.query_params.get("phase")
        label = request.query_params.get("label")
        want_key, _, want_value = (label or "").partition("=")
        selected = []
        for doc in view.data["tasks"]:  # sorted by name, as the plan lists them
            if lane is not None and doc["lane"] != lane:
                continue
            if phase is not None and doc["phase"] != phase:
                continue
            if label is not None:
                task = view.desired.tasks.get(doc["name"])
                labels = task.labels if task is not None else {}
                if want_key not in labels or ("=" in label and labels[want_key] != want_value):
                    continue
            selected.append(doc)
        page = [doc for doc in selected if doc["name"] > after][:limit]
        more = bool(page) and page[-1]["name"] < selected[-1]["name"]
        # TasksPage's shape; its items are JSON already (validating 10k of them again is waste)
        return {
            "revision": view.plan.revision,
            "tasks": page,
            "total": len(selected),
            "next": page[-1]["name"] if more else None,
        }

    def task(self, request: Request) -> Any:
        return self._describe(request.path_params["name"]).to_json()

    def runs(self, request: Request) -> Any:
        report = self._describe(request.path_params["name"])
        return RunsReport(name=report.name, runs=report.runs).to_json()

    def events(self, request: Request) -> Any:
        name = request.path_params["name"]
        self._describe(name)  # 404 for a task no one knows
        limit = _int(request, "limit", PAGE_DEFAULT, 1, PAGE_MAX)
        after = _int(request, "after", 0, 0, None)
        with self.views.engine.reading() as store:
            rows = store.events_after(name, after, limit + 1)
        events = [EventReport.of(e) for e in rows[:limit]]
        more = len(rows) > limit
        return EventsPage(name=name, events=events, next=events[-1].id if more else None).to_json()

    def summary(self, _request: Request) -> Any:
        return SummaryReport.of(self.views.status(), reconciling=self.loop is not None).to_json()

    def feed(self, request: Request) -> Any:
        """Every task's and lane's events: forward from ``after``, else the newest."""
        limit = _int(request, "limit", PAGE_DEFAULT, 1, PAGE_MAX)
        after = request.query_params.get("after")
        with self.views.engine.reading() as store:
            if after is None or after == "":
                rows = store.events(None, limit=limit)
            else:
                rows = store.events_after(None, _int(request, "after", 0, 0, None), limit)
        events = [EventReport.of(e) for e in rows]
        last = events[-1].id if events else _int(request, "after", 0, 0, None)
        return FeedPage(events=events, next=last).to_json()

    def log(self, request: Request) -> Any:
        """A piece of one of a run's files (the newest run unless ``run=A.I``), from the lane."""
        name = request.path_params["name"]
        file = request.query_params.get("file", "output")
        if file not in ("output", "prompt", "checks"):
            raise ApiError(400, f"file={file!r}: give output, prompt or checks")
        offset = _int(request, "offset", 0, 0, None)
        lane, _ = self._lane_of(name)
        with self.views.engine.reading() as store:
            runs = store.runs(name)
        attempt, iteration = _run_of(request.query_params.get("run"), runs, name)
        chunk = lane.one(
            ReadLogRequest(
                lane=lane.ref,
                task=name,
                attempt=attempt,
                iteration=iteration,
                offset=offset,
                limit=LOG_PIECE,
                render=request.query_params.get("raw") is None,
                file=file,
            ),
            LogResult,
        )
        return LogPage(
            name=name, attempt=attempt, iteration=iteration, file=file, **chunk.model_dump()
        ).to_json()

    def changes(self, request: Request) -> Any:
        """What the task's branch changed against its base, asked of its lane."""
        name = request.path_params["name"]
        lane, ref = self._lane_of(name)
        seen = lane.one(ChangesRequest(lane=lane.ref, task=ref), ChangesResult)
        return ChangesReport(name=name, **seen.model_dump()).to_json()

    def pull(self, request: Request) -> Any:
        """The task's PR with its body and comments (``pr show --json``), asked of its forge."""
        name = request.path_params["name"]
        lane, ref = self._lane_of(name)
        listed = lane.one(
            ForgeListRequest(lane=lane.ref, repo=ref.repo, head=ref.branch), ForgeListResult
        )
        pr = newest_pr(listed.prs)
        if pr is None:
            raise ApiError(404, f"task {name} has no PR yet")
        shown = lane.one(
            ForgeShowRequest(lane=lane.ref, repo=ref.repo, number=pr.number), ForgeShowResult
        )
        return ShowReport.of(lane.name, ref.repo, shown.pr, shown.comments).to_json()

    def _lane_of(self, name: str) -> tuple[LaneClient, TaskRef]:
        view = self.views.status()
        status = next((s for s in view.plan.tasks if s.name == name), None)
        if status is None:
            raise ApiError(404, f"no task named {name}; GET /api/v1/tasks lists the tasks")
        lane = self.views.engine.lanes(view.desired).get(status.lane)
        if lane is None:
            raise ApiError(404, f"task {name}'s lane {status.lane} is not in the manifests")
        task = view.desired.tasks.get(name)
        ref = TaskRef(
            name=name,
            repo=status.repo,
            base=task.spec.base if task is not None else None,
            branch=status.branch,
        )
        return lane, ref

    def lanes(self, _request: Request) -> Any:
        return lanes_report(self.views.status()).to_json()

    def plan(self, _request: Request) -> Any:
        return plan_to_json(self.views.status().plan)

    def refresh(self, _request: Request) -> Any:
        if self.loop is None:
            raise ApiError(
                409,
                "nothing reconciles here: this is `reconciler serve`, a read-only view; "
                "`reconciler run --listen` takes refreshes",
            )
        self.loop.wake("refresh")
        return {"accepted": True, "message": "a pass was asked for (coalesced with others)"}

    def github_hook(self, request: Request) -> Any:
        return self.hooks.github(request.headers, request.state.body)

    def git_hook(self, request: Request) -> Any:
        return self.hooks.git(request.headers, request.state.body)

    def healthz(self, _request: Request) -> Any:
        return {"ok": True, "version": __version__}

    def readyz(self, _request: Request) -> Any:
        try:
            with self.views.engine.reading() as store:
                store.serial()
        except StateError as exc:
            raise ApiError(503, f"the state cannot be read: {exc}") from None
        if self.loop is not None:
            problem = self.loop.ready()
            if problem is not None:
                raise ApiError(503, problem)
        return {"ok": True}

    def metrics_text(self, _request: Request) -> Any:
        return self.metrics.render()

    def openapi(self, _request: Request) -> Any:
        return openapi(self.routes)

    def _describe(self, name: str) -> DescribeReport:
        view = self.views.status()
        with self.views.engine.reading() as store:
            report = describe(name, view.desired, view.plan, store)
        if report is None:
            raise ApiError(404, f"no task named {name}; GET /api/v1/tasks lists the tasks")
        return report

    # ------------------------------------------------------------------ access

    def check(self, route: Route, request: Request, body: bytes = b"") -> None:
        if route.access == "open":
            return
        if route.access == "signed":
            request.state.body = body  # the hook checks its signature on the bytes as sent
            return
        if route.access == "write":
            _same_site(request)
        if route.access == "read" and self.listen.loopback:
            return
        token = self.listen.token
        if token is None:
            raise ApiError(
                401, "this listener has no token: start it with --token-file to allow this"
            )
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), token.encode()
        ):
            raise ApiError(401, "a valid token is needed: send `Authorization: Bearer TOKEN`")


def _same_site(request: Request) -> None:
    """A state-changing request never comes from another site's page (CSRF)."""
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        raise ApiError(403, f"a {fetch_site} request cannot change anything here")
    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
        raise ApiError(403, "a request from another origin cannot change anything here")


def _run_of(given: str | None, runs: list[Run], name: str) -> tuple[int, int]:
    """``run=ATTEMPT.ITERATION``, else the newest run."""
    if given:
        attempt, dot, iteration = given.partition(".")
        if not (dot and attempt.isdigit() and iteration.isdigit()):
            raise ApiError(400, f"run={given!r}: write it as ATTEMPT.ITERATION, e.g. 2.1")
        return int(attempt), int(iteration)
    if not runs:
        raise ApiError(404, f"task {name} has no runs yet")
    return runs[-1].attempt, runs[-1].iteration


def _int(request: Request, name: str, default: int, least: int, most: int | None) -> int:
    text = request.query_params.get(name)
    if text is None or text == "":
        return default
    if not text.isdigit() or int(text) < least or (most is not None and int(text) > most):
        bound = f"{least}..{most}" if most is not None else f"at least {least}"
        raise ApiError(400, f"{name}={text!r}: give a whole number, {bound}")
    return int(text)


# ---------------------------------------------------------------------------- the chokepoint


def _answer(status: int, body: Any, secrets: tuple[str, ...], media: str) -> Response:
    if isinstance(body, bytes):
        text = body.decode("utf-8")
    else:
        text = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    headers = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="reconciler"'
    return Response(redact(text, secrets), status, headers=headers, media_type=media)


def _error(status: int, message: str, secrets: tuple[str, ...]) -> Response:
    return _answer(
        status, {"error": {"status": status, "message": message}}, secrets, "application/json"
    )


def build_app(api: Api) -> Starlette:
    secrets = tuple(s for s in (api.listen.token, api.listen.webhook_secret) if s)

    pulse = Pulse(api.views, follow_state=api.loop is None)

    def endpoint(route: Route) -> Callable[[Request], Awaitable[Response]]:
        async def serve(request: Request) -> Response:
            try:
                raw = await request.body() if route.method == "POST" else b""
                api.check(route, request, raw)
                if route.media == EVENT_STREAM:
                    stream = stream_response(pulse, request, secrets)
                    if stream is None:
                        raise ApiError(503, f"{STREAMS} streams are open: try again later")
                    return stream
                body = await run_in_threadpool(route.handler, api, request)
            except (ApiError, Refused) as exc:
                return _error(exc.status, exc.message, secrets)
            except ManifestErrors as exc:
                return _error(503, f"{exc.summary()}; nothing can be shown yet", secrets)
            except (RequestFailed, LaneUnavailable) as exc:
                return _error(502, f"the lane could not answer: {exc}", secrets)
            except Exception as exc:  # a sentence, never a traceback
                return _error(500, f"{type(exc).__name__}: {exc}", secrets)
            return _answer(200, body, secrets, route.media)

        return serve

    api.routes = routes()
    assets = Assets()
    pages = [StarletteRoute(path, assets.page, methods=["GET"]) for path in PAGES]
    app = Starlette(
        routes=[
            *(StarletteRoute(r.path, endpoint(r), methods=[r.method]) for r in api.routes),
            *pages,
            StarletteRoute("/static/{file}", assets.static, methods=["GET"]),
        ],
        exception_handlers={
            HTTPException: lambda _req, exc: _error(exc.status_code, str(exc.detail), secrets),
        },
    )
    return app


def routes() -> list[Route]:
    """Every route: the process's own, the task documents, the rest of the API, the hooks."""
    return [*_process_routes(), *_task_routes(), *_api_routes()]


def _process_routes() -> list[Route]:
    return [
        Route("/healthz", "the process is alive", Api.healthz, access="open"),
        Route(
            "/readyz",
            "the state is readable; under run, a pass succeeded recently",
            Api.readyz,
            access="open",
        ),
        Route(
            "/metrics",
            "Prometheus metrics",
            Api.metrics_text,
            media="text/plain; version=0.0.4; charset=utf-8",
        ),
    ]


def _task_routes() -> list[Route]:
    name = Param("name", "the task's name", where="path")
    limit = Param(
        "limit", f"items per page (default {PAGE_DEFAULT}, at most {PAGE_MAX})", "integer"
    )
    return [
        Route(
            "/api/v1/tasks",
            "the tasks, by name, a page at a time",
            Api.tasks,
            model=TasksPage,
            params=(
                limit,
                Param("after", "the name the previous page ended with (its `next`)"),
                Param("lane", "only the tasks of this lane"),
                Param("phase", "only the tasks in this phase"),
                Param("label", "only the tasks with this label: KEY or KEY=VALUE"),
            ),
        ),
        Route(
            "/api/v1/tasks/{name}",
            "the `describe --json` document",
            Api.task,
            model=DescribeReport,
            params=(name,),
        ),
        Route(
            "/api/v1/tasks/{name}/runs",
            "the task's runs, oldest first",
            Api.runs,
            model=RunsReport,
            params=(name,),
        ),
        Route(
            "/api/v1/tasks/{name}/events",
            "the task's events, oldest first, a page at a time",
            Api.events,
            model=EventsPage,
            params=(
                name,
                limit,
                Param("after", "the id the previous page ended with (its `next`)", "integer"),
            ),
        ),
        Route(
            "/api/v1/tasks/{name}/log",
            "a piece of a run's output, prompt or checks' output, read from its lane",
            Api.log,
            model=LogPage,
            params=(
                name,
                Param("run", "ATTEMPT.ITERATION (default: the newest run)"),
                Param("file", "output (default), prompt or checks"),
                Param("offset", "where to start: the previous piece's `offset`", "integer"),
                Param("raw", "present: the output as the agent wrote it, not rendered"),
            ),
        ),
        Route(
            "/api/v1/tasks/{name}/pr",
            "the task's PR with its body and comments (`pr show --json`), read from its forge",
            Api.pull,
            model=ShowReport,
            params=(name,),
        ),
        Route(
            "/api/v1/tasks/{name}/diff",
            "what the task's branch changed against its base, read from its lane",
            Api.changes,
            model=ChangesReport,
            params=(name,),
        ),
    ]


def _api_routes() -> list[Route]:
    return [
        Route("/api/v1/openapi.json", "this API's OpenAPI document", Api.openapi),
        Route("/api/v1/status", "the `status --json` document", Api.status),
        Route(
            "/api/v1/summary",
            "the revision, tasks by phase, the lanes and the control repo's problems",
            Api.summary,
            model=SummaryReport,
        ),
        Route(
            "/api/v1/stream",
            "server-sent events: `event` for each new event, `changed` when the state changed",
            Api.status,  # never called: the stream is answered by reconciler.web.stream
            media=EVENT_STREAM,
        ),
        Route(
            "/api/v1/events",
            "every task's and lane's events: forward from `after`, else the newest",
            Api.feed,
            model=FeedPage,
            params=(
                Param("limit", f"events per page (default {PAGE_DEFAULT}, at most {PAGE_MAX})"),
                Param("after", "the `next` of the previous page", "integer"),
            ),
        ),
        Route(
            "/api/v1/lanes",
            "slots, spend today against the budget, pre-flight",
            Api.lanes,
            model=API_REPORTS["lanes"],
        ),
        Route("/api/v1/plan", "the `plan --json` document: what the next pass would do", Api.plan),
        Route(
            "/api/v1/refresh",
            "ask the running loop for a pass now (coalesced)",
            Api.refresh,
            access="write",
            method="POST",
        ),
        Route(
            "/hooks/github",
            "a GitHub webhook delivery, signed with the webhook secret: a pass now, and the "
            "PRs it names read anew",
            Api.github_hook,
            access="signed",
            method="POST",
        ),
        Route(
            "/hooks/git",
            "a notice from another git host or a script, signed with the webhook secret: a pass "
            "now",
            Api.git_hook,
            access="signed",
            method="POST",
        ),
    ]


def openapi(table: list[Route]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``table``: the report models' JSON Schemas as components."""
    components: dict[str, Any] = {}
    paths: dict[str, Any] = {}
    for route in table:
        if route.model is not None:
            schema = route.model.model_json_schema(
                by_alias=True, mode="serialization", ref_template="#/components/schemas/{model}"
            )
            components.update(schema.pop("$defs", {}))
            components[route.model.__name__] = schema
            content = {"schema": {"$ref": f"#/components/schemas/{route.model.__name__}"}}
        else:
            content = {}
        operation: dict[str, Any] = {
            "summary": route.summary,
            "parameters": [
                {
                    "name": p.name,
                    "in": p.where,
                    "required": p.where == "path",
                    "description": p.description,
                    "schema": {"type": p.kind},
                }
                for p in route.params
            ],
            "responses": {
                "200": {"description": "OK", "content": {route.media: content}},
                "default": {"description": 'an error: {"error": {"status", "message"}}'},
            },
        }
        if route.access in ("read", "write"):
            operation["security"] = [{"bearer": []}]
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "reconciler", "version": __version__, "x-plan-format": PLAN_FORMAT},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
