"""The `reconciler` command's entry point.

`reconciler node` (the far end of every lane transport, started once per batch: by setpriv for a
lane user, by sshd as a forced command) goes straight to the node code, without importing the
control plane (CLI, planner, manifests), so a lane batch pays only for what the node needs.
Everything else is the CLI.
"""

from __future__ import annotations

import gc
import os
import re
import sys
from collections.abc import Sequence

GC_THRESHOLD = 50_000  # allocations between young collections (the default is 700)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    pin: str | None = None
    if args[:1] == ["node"] and len(args) in (1, 3):
        if len(args) == 3 and args[1] == "--pin" and re.fullmatch(r"[0-9a-f]{32}", args[2]):
            pin = args[2]
        if len(args) == 1 or pin is not None:
            # Under an ssh forced command the client's wish is in SSH_ORIGINAL_COMMAND: the
            # node never evaluates it, and nothing it starts inherits it.
            os.environ.pop("SSH_ORIGINAL_COMMAND", None)
            from reconciler.node.server import main as node_main

            return node_main(pin)
    # A pass builds a few containers per task over a heap of tens of thousands of long-lived
    # ones (the manifests, the state's rows): at the default threshold of 700 allocations the
    # collector's older generations walk that heap again and again, a third of a status
    # computation over 10,000 tasks. Cycles are rare here (refcounting frees nearly all), so
    # collecting less often costs little memory.
    gc.set_threshold(GC_THRESHOLD, 20, 100)
    from reconciler.cli import main as cli_main

    return cli_main(args)
