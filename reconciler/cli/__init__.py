"""The command line. Parses, calls the engine, renders; never decides.

One module per group of commands (``converge``: plan, apply, run, poke; ``reading``: status,
describe, logs, doctor; ``validate``: validate, policy, schema; ``serve``: serve and
``run --listen``; ``hooks``, ``keys``, ``state``),
the grammar in ``parser``, the renderings in ``render`` and ``report``. This module runs one.

Exit codes: 0 success; 1 error; 2 ``plan --detailed-exitcode`` with changes; 3 a read command
answered for the last good revision (HEAD's manifests are broken); 75 the state lock is held by
another reconciler. Errors are sentences, never tracebacks (a bug's traceback goes,
redacted, to ``<state>/last-error.txt``). Everything a command writes goes through one
chokepoint, ``terminal.guarded``: redacted everywhere, and on a terminal with every control
character shown rather than obeyed.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from reconciler.cli import completion, hooks, pr
from reconciler.cli import state as state_cli
from reconciler.cli.common import EXIT_ERROR, EXIT_LAST_GOOD, EXIT_LOCKED
from reconciler.cli.converge import cmd_apply, cmd_plan, cmd_poke, cmd_run
from reconciler.cli.keys import cmd_keys
from reconciler.cli.parser import build_parser
from reconciler.cli.reading import cmd_describe, cmd_doctor, cmd_logs, cmd_status
from reconciler.cli.render import err
from reconciler.cli.serve import cmd_serve
from reconciler.cli.terminal import guarded, unguarded
from reconciler.cli.validate import cmd_policy, cmd_schema, cmd_validate
from reconciler.control import ControlError
from reconciler.engine import Context, Engine, UserError
from reconciler.lanes import LaneUnavailable, RequestFailed
from reconciler.lanes.policy import PolicyError
from reconciler.manifests.errors import ManifestErrors
from reconciler.redact import redact, secrets_of_url
from reconciler.state import LockHeld, StateError, state_dir_problem


def main(argv: Sequence[str] | None = None) -> int:
    with guarded() as secrets:
        return _main(argv, secrets)


def _main(argv: Sequence[str] | None, secrets: set[str]) -> int:
    parser = build_parser()
    completion.complete(parser)  # the shell asking for completions: answered, then exit
    args = parser.parse_args(argv)
    if args.command == "node":
        from reconciler.lanes import serve_node

        # Under an ssh forced command the client's wish is in SSH_ORIGINAL_COMMAND: the node
        # never evaluates it, and nothing it starts inherits it.
        os.environ.pop("SSH_ORIGINAL_COMMAND", None)
        with unguarded():  # a protocol: its JSON goes out as the node wrote it
            return serve_node(args.pin)
    if args.command != "run":
        # A one-shot command builds the desired state and a plan, then exits: reference counting
        # frees what it drops, and the cyclic collector would only rescan thousands of live
        # objects (a tenth of a pass over 10k tasks). `run` keeps it, paused per pass.
        gc.disable()
    ctx = Context.resolve(
        getattr(args, "control", None), getattr(args, "state", None), getattr(args, "policy", None)
    )
    secrets.update(secrets_of_url(ctx.control))  # git may quote a control URL's password alone
    handler: Callable[[Engine, argparse.Namespace], int] = COMMANDS[args.command]
    engine = Engine(ctx)
    try:
        code = handler(engine, args)
        return EXIT_LAST_GOOD if engine.fallback is not None and code != EXIT_ERROR else code
    except ManifestErrors as exc:
        for line in exc.shown():
            print(line, file=sys.stderr)
        n = len(exc.errors)
        err(f"{n} error{'s' if n != 1 else ''} in the manifests; nothing was planned or applied")
        return EXIT_ERROR
    except LockHeld as exc:
        err(str(exc))
        return EXIT_LOCKED
    except (
        UserError,
        ControlError,
        LaneUnavailable,
        RequestFailed,
        PolicyError,
        StateError,
    ) as exc:
        err(str(exc))
        return EXIT_ERROR
    except KeyboardInterrupt:
        err("interrupted")
        return 130
    except Exception as exc:  # a bug: say so in one sentence, keep the traceback in a file
        if isinstance(exc, OSError) and (problem := state_dir_problem(exc, ctx.state_dir)):
            err(str(problem))  # not a bug: the state directory's disk or permissions
            return EXIT_ERROR
        err(
            f"unexpected {type(exc).__name__}: {exc}. This is a bug in reconciler; "
            + _save_traceback(ctx.state_dir, secrets)
        )
        return EXIT_ERROR


CRASH_REPORT = "last-error.txt"


def _save_traceback(state_dir: Path, secrets: set[str]) -> str:
    """Write the current exception's traceback, redacted, to ``<state>/last-error.txt`` (mode
    0600, through a fresh temporary file renamed over it: nothing planted there is followed);
    say where. Only there: a shared directory such as /tmp is anyone's to plant links in."""
    import traceback

    from reconciler.safefile import write_atomic

    text = redact(traceback.format_exc(), secrets)
    path = state_dir / CRASH_REPORT
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(path, text.encode("utf-8"), 0o600)
    except OSError as exc:
        return (
            f"its traceback was not saved: the state directory {state_dir} cannot be written "
            f"({exc.strerror or exc}), and it is written nowhere else"
        )
    return f"the traceback is in {path}"


# -------------------------------------------------------------------------------- commands


COMMANDS: dict[str, Callable[[Engine, argparse.Namespace], int]] = {
    "validate": cmd_validate,
    "policy": cmd_policy,
    "plan": cmd_plan,
    "apply": cmd_apply,
    "run": cmd_run,
    "poke": cmd_poke,
    "hook": hooks.cmd_hook,
    "status": cmd_status,
    "describe": cmd_describe,
    "logs": cmd_logs,
    "doctor": cmd_doctor,
    "serve": cmd_serve,
    "schema": cmd_schema,
    "pr": pr.cmd_pr,
    "keys": cmd_keys,
    "state": state_cli.cmd_state,
    "completion": completion.cmd_completion,
}

__all__ = ["main"]
