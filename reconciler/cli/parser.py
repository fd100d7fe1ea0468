"""The command line's grammar: every command, its options and their help."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from reconciler import __version__
from reconciler.cli import completion, hooks, pr, serve
from reconciler.cli import state as state_cli
from reconciler.cli.common import (
    EXIT_ERROR,
)
from reconciler.cli.render import (
    err,
)
from reconciler.durations import parse_duration


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


class _Parser(argparse.ArgumentParser):
    """Usage errors exit 1 like every other error (2 means "changes" for plan)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        err(f"{message}; see `{self.prog} --help`")
        raise SystemExit(EXIT_ERROR)


Command = Callable[[str, str], argparse.ArgumentParser]  # adds a subcommand: (name, help)


def build_parser() -> argparse.ArgumentParser:
    common = _common_options()
    parser = _Parser(
        prog="reconciler",
        description="A declarative GitOps reconciler that dispatches coding agents.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"reconciler {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help_: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_, description=help_, parents=[common])

    _add_converging(command)
    _add_reading(command)
    hooks.add_parser(command, common)
    pr.add_parser(command, common)
    _add_keys(command, common)
    p = command("node", "serve lane requests on stdin/stdout: one JSON batch, or a session of them")
    p.add_argument(
        "--pin",
        type=_pin,
        help="serve only the lane configuration with this digest (set by `keys authorize`)",
    )
    state_cli.add_parser(command, common)
    completion.add_parser(command, common)
    return parser


def _common_options() -> _Parser:
    """What every command takes: where the control repo, the state and the policy are."""
    common = _Parser(add_help=False)
    common.add_argument(
        "--control",
        default=argparse.SUPPRESS,
        help="control repo: a working copy, a bare repository or a URL "
        "(default: $RECONCILER_CONTROL, then the working copy around the current directory)",
    )
    common.add_argument(
        "--state",
        default=argparse.SUPPRESS,
        help="state directory (default: $RECONCILER_STATE, then <control>/.reconciler)",
    )
    common.add_argument(
        "--policy",
        default=argparse.SUPPRESS,
        help="the admin policy: what lanes may be (default: $RECONCILER_POLICY, then "
        "/etc/reconciler/policy.yaml, then the safe defaults)",
    )
    return common


def _output(p: argparse.ArgumentParser, formats: tuple[str, ...]) -> None:
    """``-o FORMAT`` as kubectl users expect it, and ``--json`` (the same as ``-o json``)."""
    p.add_argument(
        "-o",
        "--output",
        choices=formats,
        default="text",
        help=f"how to print it: {', '.join(formats)} (default: text)",
    )
    p.add_argument(
        "--json", dest="output", action="store_const", const="json", help="the same as -o json"
    )


def _add_converging(command: Command) -> None:
    """plan, apply, run and poke: the commands that compute or carry out a pass."""
    p = command("plan", "show what apply would do")
    _output(p, ("text", "json", "yaml"))
    p.add_argument("--out", type=Path, help="save the plan for `apply FILE`")
    p.add_argument(
        "--detailed-exitcode",
        action="store_true",
        help="exit 0 for no changes, 2 for changes, 1 for errors",
    )
    lock_help = "wait this long for the state lock (default: fail at once, exit 75)"
    take_over_help = (
        "move LANE from the state directory that owns it to this one first, recorded as an "
        "event (repeatable; `all`: every lane)"
    )
    p = command("apply", "converge: carry out the plan")
    p.add_argument("--lock-timeout", type=_duration, default=0.0, help=lock_help)
    completion.lanes(
        p.add_argument("--take-over", action="append", metavar="LANE", help=take_over_help)
    )
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument("planfile", nargs="?", type=Path, help="a plan saved by plan --out")
    p = command("run", "reconcile continuously")
    p.add_argument("--lock-timeout", type=_duration, default=0.0, help=lock_help)
    completion.lanes(
        p.add_argument("--take-over", action="append", metavar="LANE", help=take_over_help)
    )
    p.add_argument(
        "--interval",
        type=_duration,
        default=30.0,
        help="the longest wait between passes (triggers start one sooner)",
    )
    p.add_argument("--once", action="store_true", help="one pass, then exit")
    serve.add_listen_options(p, None)
    p.add_argument(
        "--log-format",
        choices=["auto", "text", "json"],
        default="auto",
        help="text lines on a terminal, JSON lines otherwise (auto)",
    )
    p = command("poke", "ask the running `reconciler run` for a pass now")
    p.add_argument(
        "--or-apply",
        action="store_true",
        help="when no `run` holds the state, run one apply pass instead (under the lock)",
    )
    p.add_argument("--lock-timeout", type=_duration, default=0.0, help=argparse.SUPPRESS)


def _add_reading(command: Command) -> None:
    """The commands that only read: validate, policy, status, describe, logs, doctor, schema."""
    command("validate", "check manifests (and the policy); errors as path:line:col: message")
    p = command("policy", "show the admin policy in force: what lanes may be, and from where")
    p.add_argument("--json", action="store_true", help="print the policy as JSON")
    p = command("status", "one row per task")
    _output(p, ("text", "wide", "json", "yaml"))
    p.add_argument(
        "-w",
        "--watch",
        nargs="?",
        const=2.0,
        type=_duration,
        metavar="EVERY",
        help="redraw the table every EVERY (default 2s) until Ctrl-C",
    )
    p = command("describe", "a task's spec, phase, runs, events and PR")
    completion.tasks(p.add_argument("task"))
    _output(p, ("text", "json", "yaml"))
    p = command("logs", "the agent's output for a run")
    completion.tasks(p.add_argument("task"))
    p.add_argument("-f", "--follow", action="store_true", help="keep printing until the run ends")
    p.add_argument(
        "--raw",
        action="store_true",
        help="the agent's output as it wrote it (default: its events as readable lines)",
    )
    p.add_argument("--run", help="ATTEMPT.ITERATION (default: the latest run)")
    command("doctor", "pre-flight checks of every lane, as a table")
    p = command("serve", "serve the HTTP API, /metrics and health read-only, without reconciling")
    serve.serve_parser(p)
    p = command("schema", "write the JSON Schemas of the manifest kinds and of describe --json")
    p.add_argument("--out", type=Path, default=Path("schemas"))


def _add_keys(command: Command, common: argparse.ArgumentParser) -> None:
    p = command("keys", "ssh lanes: the reconciler's key and the hosts' keys")
    keysub = p.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    k = keysub.add_parser(
        "authorize",
        help="print the authorized_keys line for an ssh lane (creates the key if missing)",
        parents=[common],
    )
    k.add_argument("lane")
    k = keysub.add_parser(
        "scan",
        help="fetch an ssh lane's host keys, show their fingerprints, trust them when you agree",
        parents=[common],
    )
    k.add_argument("lane")
    k.add_argument("--yes", action="store_true", help="do not ask (compare the fingerprints first)")
    k.add_argument(
        "--replace",
        action="store_true",
        help="replace the keys already trusted for the host (after it was reinstalled)",
    )


def _pin(text: str) -> str:
    if not re.fullmatch(r"[0-9a-f]{32}", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a lane pin (32 hex digits)")
    return text
