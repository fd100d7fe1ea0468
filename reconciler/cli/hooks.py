"""`reconciler hook`: the git hooks of a bare control repository.

- ``post-receive`` pokes the running ``reconciler run`` (or runs one ``apply`` pass when none
  runs), in the background: a push never waits for agents.
- ``pre-receive`` (``hook install --pre-receive``) refuses a push of the followed branch whose
  manifests do not validate, printing every ``path:line:col`` error on the pusher's terminal, so a
  typo never reaches the reconciler. It reads the pushed commits where git holds them until the
  hook accepts them, and writes nothing.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

from reconciler import safefile
from reconciler.control import ControlError
from reconciler.control.desired import load_desired
from reconciler.control.repo import ControlRepo
from reconciler.engine import Engine, UserError
from reconciler.manifests.errors import ManifestErrors

EXIT_OK, EXIT_ERROR = 0, 1
ZERO = "0" * 40

POST_RECEIVE = """#!/bin/sh
# Installed by `reconciler hook install`: a push to this control repository asks the running
# `reconciler run` for a pass now, or runs one `apply` pass (in the background, under the
# state lock) when none runs. The push itself never waits for agents.
{exe} poke --or-apply --control {control} --state {state} >>{log} 2>&1 </dev/null &
exit 0
"""

PRE_RECEIVE = """#!/bin/sh
# Installed by `reconciler hook install --pre-receive`: a push of the branch the reconciler
# follows is refused when its manifests do not validate; the pusher sees every error.
exec {exe} hook pre-receive --repo {control}
"""

MARK = "reconciler hook install"


def add_parser(
    command: Callable[[str, str], argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    p = command("hook", "git hooks of a control repository")
    hooksub = p.add_subparsers(dest="hook_command", metavar="ACTION", required=True)
    h = hooksub.add_parser(
        "install",
        help="install a post-receive hook in a bare control repository that pokes `run`",
        parents=[common],
    )
    h.add_argument(
        "--repo", dest="bare", type=Path, help="the bare repository (default: --control)"
    )
    h.add_argument(
        "--pre-receive",
        action="store_true",
        help="also install a pre-receive hook that refuses a push whose manifests do not validate",
    )
    r = hooksub.add_parser(
        "pre-receive",
        help="what the pre-receive hook runs: check the pushed manifests (git's input on stdin)",
        parents=[common],
    )
    r.add_argument(
        "--repo", dest="bare", type=Path, help="the bare repository (default: --control)"
    )


def cmd_hook(engine: Engine, args: argparse.Namespace) -> int:
    bare = (args.bare or Path(engine.ctx.control)).expanduser().resolve()
    if args.hook_command == "pre-receive":
        return pre_receive(bare, sys.stdin.read())
    hooks = bare / "hooks"
    if not (bare / "HEAD").is_file() or not (bare / "objects").is_dir() or (bare / ".git").exists():
        raise UserError(
            f"{bare} is not a bare git repository; give the repository people push to "
            "(git init --bare) with --repo, or as --control"
        )
    # this very installation: the script beside the interpreter, else the module
    beside = os.path.join(os.path.dirname(sys.executable), "reconciler")
    exe = (
        shlex.quote(beside)
        if os.path.isfile(beside)
        else f"{shlex.quote(sys.executable)} -m reconciler"
    )
    state = engine.state_dir
    control = shlex.quote(str(bare))
    scripts = {
        "post-receive": POST_RECEIVE.format(
            exe=exe,
            control=control,
            state=shlex.quote(str(state)),
            log=shlex.quote(str(state / "hook.log")),
        )
    }
    if args.pre_receive:
        scripts["pre-receive"] = PRE_RECEIVE.format(exe=exe, control=control)
    hooks.mkdir(exist_ok=True)
    for name, text in scripts.items():
        target = hooks / name
        if target.exists() and MARK not in target.read_text(errors="replace"):
            raise UserError(
                f"{target} exists and was not installed by reconciler; merge this into it by "
                "hand:\n" + text
            )
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    for name, text in scripts.items():
        safefile.write_atomic(hooks / name, text.encode(), 0o755)
    print(f"installed {hooks / 'post-receive'}: a push pokes the reconciler using state {state}")
    if args.pre_receive:
        print(
            f"installed {hooks / 'pre-receive'}: a push whose manifests do not validate is refused"
        )
    return EXIT_OK


def pre_receive(bare: Path, updates: str) -> int:
    """Check each pushed commit of the followed branch (``updates``: git's pre-receive input,
    ``OLD NEW REF`` per line). Errors refuse the push (exit 1); warnings are only shown."""
    try:
        control = ControlRepo.incoming(bare)
        followed = control.followed_ref()
    except ControlError as exc:
        print(f"reconciler: cannot check the push: {exc}", file=sys.stderr)
        return EXIT_ERROR
    refused = False
    for line in updates.splitlines():
        fields = line.split()
        if len(fields) != 3 or fields[2] != followed or fields[1] == ZERO:
            continue  # another branch, or the branch deleted: nothing the reconciler reads
        new = fields[1]
        try:
            desired = load_desired(control, None, rev=new)
        except ManifestErrors as exc:
            refused = True
            print(
                f"reconciler: refusing {followed} at {new[:12]}: {exc.summary()}; fix them and "
                "push again",
                file=sys.stderr,
            )
            print("\n".join(exc.shown()), file=sys.stderr)
            continue
        except ControlError as exc:
            print(f"reconciler: cannot check {new[:12]}: {exc}", file=sys.stderr)
            return EXIT_ERROR
        for warning in desired.warnings:
            print(f"reconciler: warning: {warning}", file=sys.stderr)
    return EXIT_ERROR if refused else EXIT_OK
