"""Shell completion for bash, zsh and fish (argcomplete), with task and lane names.

``reconciler completion SHELL`` prints the script to source. When the shell asks for
completions it runs ``reconciler`` with argcomplete's variables set; ``complete`` then answers
from the parser, and for a task or lane argument from the manifests at the control repo's HEAD,
and exits. Completion never fails loudly: a control repo that cannot be read completes nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from reconciler.engine import Context, Engine

SHELLS = ("bash", "zsh", "fish")


def _names(what: Callable[[Any], list[str]]) -> Callable[..., list[str]]:
    def complete(prefix: str, parsed_args: argparse.Namespace, **_: object) -> list[str]:
        try:
            ctx = Context.resolve(
                getattr(parsed_args, "control", None),
                getattr(parsed_args, "state", None),
                getattr(parsed_args, "policy", None),
            )
            desired = Engine(ctx).load()
        except Exception:  # completing must never print a traceback into the shell
            return []
        return [name for name in what(desired) if name.startswith(prefix)]

    return complete


task_names = _names(lambda desired: sorted(desired.tasks))
lane_names = _names(lambda desired: sorted(desired.lanes))


def tasks(action: argparse.Action) -> argparse.Action:
    """``action`` completes with the names of the tasks."""
    action.completer = task_names  # type: ignore[attr-defined]
    return action


def lanes(action: argparse.Action) -> argparse.Action:
    """``action`` completes with the names of the lanes."""
    action.completer = lane_names  # type: ignore[attr-defined]
    return action


def complete(parser: argparse.ArgumentParser) -> None:
    """Answer the shell's completion request and exit, when this run is one."""
    if "_ARGCOMPLETE" not in os.environ:
        return
    import argcomplete

    argcomplete.autocomplete(parser, always_complete_options=False)  # names, not flags


def add_parser(
    command: Callable[[str, str], argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    p = command("completion", "print the shell completion script (bash, zsh or fish)")
    p.add_argument("shell", choices=SHELLS)


def cmd_completion(engine: Engine, args: argparse.Namespace) -> int:
    from argcomplete.shell_integration import shellcode

    sys.stdout.write(shellcode(["reconciler"], shell=args.shell))
    return 0
