"""A webhook receiver on 127.0.0.1 (http.server in a thread) that the notification tests point
sinks at: it answers 500 to its first ``fail_first`` requests, can hold requests until released,
and keeps every body it was sent."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class Receiver:
    def __init__(self, fail_first: int = 0, status: int = 200, path: str = "/hook") -> None:
        self.fail_first = fail_first
        self.status = status
        self.path = path
        self.requests: list[tuple[str, bytes]] = []  # (path, body) of every request, in order
        self.release = threading.Event()  # set: held requests are answered
        self.hold = False
        self.held = threading.Event()  # a request is being held
        self._lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver._lock:
                    receiver.requests.append((self.path, body))
                    n = len(receiver.requests)
                if receiver.hold:
                    receiver.held.set()
                    receiver.release.wait(60)
                code = 500 if n <= receiver.fail_first else receiver.status
                self.send_response(code)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *_args: object) -> None:
                return

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}{self.path}"

    def documents(self) -> list[dict[str, Any]]:
        """The JSON bodies of the requests answered 2xx (the deliveries that arrived)."""
        with self._lock:
            answered = self.requests[self.fail_first :]
        return [json.loads(body) for _path, body in answered]

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@contextmanager
def receiving(fail_first: int = 0, status: int = 200, path: str = "/hook") -> Iterator[Receiver]:
    receiver = Receiver(fail_first, status, path)
    receiver.thread.start()
    try:
        yield receiver
    finally:
        receiver.close()
