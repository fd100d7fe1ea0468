"""The HTTP server: routes each request to the provider module that speaks its wire format and
records every request, so that tests can look at what the agents sent (a resumed session sends
the earlier turns again)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


class Exchange(Protocol):
    """What a provider module gets for one request: the body, and ways to answer."""

    server: ModelServer
    request: Request

    def json(self, status: int, body: object) -> None: ...

    def sse(self, events: list[tuple[str | None, object]]) -> None: ...


Route = Callable[["Exchange"], None]


@dataclass
class ModelServer:
    """``with ModelServer() as api:`` serves on ``api.url`` until the block ends.

    ``fail_status``: answer every model request with this HTTP error (a bad key, an outage);
    ``input_tokens``/``output_tokens``: the usage each response reports (the same every time,
    so that the totals a test expects are sums of known figures)."""

    fail_status: int | None = None
    input_tokens: int = 1200
    output_tokens: int = 300
    model: str | None = None  # the model every response names; None: the one asked for
    requests: list[Request] = field(default_factory=list)
    _httpd: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _ids: int = 0

    @property
    def url(self) -> str:
        assert self._httpd is not None, "the server is not started"
        host, port = self._httpd.server_address[:2]
        assert isinstance(host, str)  # an IP address, not a socket path
        return f"http://{host}:{port}"

    def next_id(self, prefix: str) -> str:
        with self._lock:
            self._ids += 1
            return f"{prefix}{self._ids:06d}"

    def posted(self, fragment: str) -> list[Request]:
        """The POST requests whose path contains ``fragment``."""
        with self._lock:
            return [r for r in self.requests if r.method == "POST" and fragment in r.path]

    def __enter__(self) -> ModelServer:
        from tests.support.model_api import routes  # the provider modules register themselves there

        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _read(self) -> Request:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else {}
                except ValueError:
                    body = {"_raw": raw.decode("utf-8", errors="replace")}
                request = Request(
                    self.command,
                    self.path,
                    {k.lower(): v for k, v in self.headers.items()},
                    body if isinstance(body, dict) else {"_value": body},
                )
                with server._lock:
                    server.requests.append(request)
                return request

            def _answer(self) -> None:
                exchange = _Exchange(server, self._read(), self)
                route = routes.find(exchange.request)
                if route is None:
                    exchange.json(404, {"error": {"message": f"no route {self.path}"}})
                    return
                if server.fail_status is not None and self.command == "POST":
                    exchange.json(
                        server.fail_status,
                        {"error": {"type": "authentication_error", "message": "invalid key"}},
                    )
                    return
                route(exchange)

            do_POST = do_GET = _answer

            def do_HEAD(self) -> None:
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None


class _Exchange:
    def __init__(self, server: ModelServer, request: Request, handler: BaseHTTPRequestHandler):
        self.server = server
        self.request = request
        self._handler = handler

    def json(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        h = self._handler
        h.send_response(status)
        h.send_header("content-type", "application/json")
        h.send_header("content-length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def sse(self, events: list[tuple[str | None, object]]) -> None:
        """Server-sent events, each ``(event name or None, data)``; the stream then ends."""
        chunks = []
        for name, data in events:
            text = data if isinstance(data, str) else json.dumps(data)
            chunks.append((f"event: {name}\n" if name else "") + f"data: {text}\n\n")
        payload = "".join(chunks).encode()
        h = self._handler
        h.send_response(200)
        h.send_header("content-type", "text/event-stream")
        h.send_header("cache-control", "no-cache")
        h.send_header("content-length", str(len(payload)))
        h.end_headers()
        h.wfile.write(payload)
