"""A proxy on 127.0.0.1 that lets nothing out and records what tried: pointed at by the lane
user's ``HTTPS_PROXY``/``HTTP_PROXY`` (``NO_PROXY`` keeps the scripted model API direct), it
shows every connection an agent CLI attempts beyond the model API (telemetry, update checks,
price lists), whether or not the machine has a network.

It sees what honours the proxy variables (Python's requests and httpx, Node's fetch with them
set); a client that ignores them is not caught.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Egress:
    """``with Egress() as out:``; ``out.env`` for the agent's environment; ``out.attempts``:
    ``CONNECT host:port`` for HTTPS, ``GET http://…`` for plain HTTP, each refused (403)."""

    def __init__(self) -> None:
        self.attempts: list[str] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._httpd is not None, "the proxy is not started"
        host, port = self._httpd.server_address[:2]
        assert isinstance(host, str)  # an IP address, not a socket path
        return f"http://{host}:{port}"

    @property
    def env(self) -> dict[str, str]:
        """Proxy variables, in both spellings (requests, httpx and curl each read one)."""
        direct = "127.0.0.1,localhost"
        env = {}
        for name in ("https_proxy", "http_proxy", "all_proxy"):
            env[name] = env[name.upper()] = self.url
        env["no_proxy"] = env["NO_PROXY"] = direct
        return env

    def __enter__(self) -> Egress:
        egress = self

        class Refuse(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _refuse(self) -> None:
                with egress._lock:
                    egress.attempts.append(f"{self.command} {self.path}")
                self.send_response(403)
                self.send_header("content-length", "0")
                self.send_header("connection", "close")
                self.end_headers()

            do_CONNECT = do_GET = do_POST = do_HEAD = do_PUT = _refuse

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
