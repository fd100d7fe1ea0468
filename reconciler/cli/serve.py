"""``serve`` and ``run --listen``: the HTTP API, /metrics and health of a state directory.

The listener is checked (address, TLS, token file) and bound before anything else happens, so a
refused listener is an error at start; the web stack is imported only here, when asked for.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from reconciler.cli.common import EXIT_OK
from reconciler.engine import Engine
from reconciler.web.listen import DEFAULT_LISTEN, Listen, check_listen

if TYPE_CHECKING:
    from reconciler.daemon import Daemon, Listener


def add_listen_options(p: argparse.ArgumentParser, default: str | None) -> None:
    shown = f" (default: {default})" if default else ""
    p.add_argument(
        "--listen",
        metavar="ADDR:PORT",
        default=default,
        help="serve the HTTP API, /metrics and health there; loopback unless you name another "
        f"address (0.0.0.0 for every interface), port 0 for any free one{shown}",
    )
    p.add_argument("--token-file", help="the bearer token, in a file only you can read (0600)")
    p.add_argument(
        "--webhook-secret-file",
        help="the webhook secret (0600): POST /hooks/github and /hooks/git take signed deliveries",
    )
    p.add_argument("--tls-cert", help="serve HTTPS with this certificate (PEM)")
    p.add_argument("--tls-key", help="the certificate's private key (PEM, chmod 600)")
    p.add_argument(
        "--insecure-listen",
        action="store_true",
        help="allow a non-loopback address without TLS (a proxy in front of it does TLS)",
    )


def serve_parser(p: argparse.ArgumentParser) -> None:
    add_listen_options(p, DEFAULT_LISTEN)


def _listen(args: argparse.Namespace) -> Listen:
    return check_listen(
        args.listen,
        token_file=args.token_file,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        insecure=args.insecure_listen,
        webhook_secret_file=args.webhook_secret_file,
    )


def cmd_serve(engine: Engine, args: argparse.Namespace) -> int:
    """A read-only view of the state dir and control repo: nothing is reconciled."""
    listen = _listen(args)
    from reconciler.web.server import Server

    server = Server(engine.ctx, listen)
    engine.state_dir  # noqa: B018 -- refuse a state directory others can write, before serving
    print(f"serving {server.url} (read-only: nothing is reconciled here)", flush=True)
    server.serve_forever()
    return EXIT_OK


def listener(engine: Engine, args: argparse.Namespace, daemon: Daemon) -> Listener:
    """``run --listen``: the server the loop starts beside its passes."""
    listen = _listen(args)
    from reconciler.web.server import Server
    from reconciler.web.views import LoopState

    loop = LoopState(interval=daemon.interval, wake=daemon.wake.fire)
    return Server(engine.ctx, listen, loop)
