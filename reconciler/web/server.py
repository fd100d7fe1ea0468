"""The HTTP server: uvicorn on its own thread, beside the loop (``run --listen``) or alone
(``serve``).

The loop never waits for it: requests are served by an event loop on the server's thread (a
client that stops reading holds only its own connection) and computed in worker threads that
read through read-only state connections; the loop only calls ``passed`` (a few counters) at the
end of each pass. Connections beyond ``CONNECTIONS`` are refused with 503, idle keep-alive
connections are closed after a few seconds, and a request's head is bounded by h11.
"""

from __future__ import annotations

import asyncio
import socket
import threading

import uvicorn

from reconciler.engine import Context, PassResult
from reconciler.web.app import Api, build_app
from reconciler.web.listen import Listen
from reconciler.web.metrics import Metrics
from reconciler.web.views import LoopState, Views

CONNECTIONS = 64  # at once; more are answered 503 at once


class Server:
    def __init__(self, ctx: Context, listen: Listen, loop: LoopState | None = None) -> None:
        self.listen = listen
        self.loop = loop
        self.views = Views(ctx, fetch=loop is None)
        metrics = Metrics(self.views, loop)
        self.app = build_app(Api(self.views, listen, loop, metrics))
        self.socket: socket.socket = listen.bind()
        self.port: int = self.socket.getsockname()[1]
        self.url = listen.address.url(self.port, listen.tls)
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            limit_concurrency=CONNECTIONS,
            timeout_keep_alive=5,
            timeout_graceful_shutdown=3,
            server_header=False,
            ssl_certfile=str(listen.tls_cert) if listen.tls_cert else None,
            ssl_keyfile=str(listen.tls_key) if listen.tls_key else None,
        )
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ the loop's side

    def start(self) -> None:
        """Serve on a daemon thread (it never keeps the process alive on its own)."""
        self._thread = threading.Thread(target=self._serve, name="reconciler-web", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        # The loop's signals may land on this thread: the daemon's relay carries them out from
        # any thread (``reconciler.daemon.SignalRelay``).
        asyncio.run(self._server.serve(sockets=[self.socket]))

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.socket.close()

    def passed(self, seconds: float, result: PassResult | None, ok: bool) -> None:
        """A pass ended: what the API shows is computed anew; the loop's figures move."""
        self.views.invalidate()
        if self.loop is not None:
            self.loop.passed(seconds, result, ok)

    def serve_forever(self) -> None:
        """``serve``: in the foreground until SIGINT/SIGTERM (uvicorn's own handlers)."""
        self._server.run(sockets=[self.socket])
        self.socket.close()
