"""The commands that converge: plan, apply, run, poke."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from reconciler.cli.common import (
    EXIT_CHANGES,
    EXIT_ERROR,
    EXIT_OK,
    readable,
)
from reconciler.cli.render import (
    Painter,
    dump,
    err,
    render_plan,
    summary_line,
    use_color,
)
from reconciler.engine import Engine, UserError, plan_to_json, read_plan, save_plan
from reconciler.plan import Plan


def cmd_plan(engine: Engine, args: argparse.Namespace) -> int:
    desired = readable(engine)
    with engine.reading() as store:
        plan, observed = engine.observe_and_plan(desired, store)
    for foreign in observed.foreign:
        print(f"warning: {foreign.message}", file=sys.stderr)
    if args.out:
        save_plan(plan, args.out)
    if args.output in ("json", "yaml"):
        dump(plan_to_json(plan), args.output)
    else:
        sys.stdout.write(render_plan(plan, Painter(use_color(sys.stdout))))
        if args.out:
            print(f"\nSaved the plan to {args.out}; apply it with `reconciler apply {args.out}`.")
    if args.detailed_exitcode and not plan.empty:
        return EXIT_CHANGES
    return EXIT_OK


def _confirm(plan: Plan) -> bool:
    sys.stdout.write(render_plan(plan, Painter(use_color(sys.stdout))))
    if not sys.stdin.isatty():
        raise UserError("apply needs --yes when not run from a terminal")
    answer = input("\nDo you want to perform these actions? Only 'yes' will be accepted: ")
    if answer.strip() != "yes":
        print("Apply cancelled.")
        return False
    return True


def cmd_apply(engine: Engine, args: argparse.Namespace) -> int:
    saved = read_plan(args.planfile) if args.planfile else None
    desired = engine.load()
    paint = Painter(use_color(sys.stdout))
    engine.take_over = frozenset(getattr(args, "take_over", None) or ())
    with engine.locked(args.lock_timeout) as store:
        confirm = None if args.yes or saved is not None else _confirm
        result = engine.apply(desired, store, saved=saved, confirm=confirm, log=_progress())
    for moved in engine.taken_over:
        print(moved[:1].upper() + moved[1:] + ".")
    if result.report is None:
        return EXIT_OK
    if confirm is None or result.plan.empty:
        sys.stdout.write(render_plan(result.plan, paint))
    if result.plan.empty:
        return EXIT_OK
    report = result.report
    print(
        paint("\nApply complete!", "green", "bold")
        + f" {len(report.applied)} applied, {len(report.failed)} failed."
    )
    for action, message in report.failed:
        err(f"{action.kind.value} {action.task}: {message}")
    return EXIT_OK if report.ok else EXIT_ERROR


def _progress() -> Callable[[str], None]:
    """On a terminal, each action as it is carried out (a long pass is not silent); for a
    script, nothing until the summary."""
    if not sys.stderr.isatty():
        return lambda _message: None
    paint = Painter(use_color(sys.stderr))
    done = 0

    def say(message: str) -> None:
        nonlocal done
        done += 1
        print(paint(f"  [{done}] {message}", "dim"), file=sys.stderr, flush=True)

    return say


def cmd_run(engine: Engine, args: argparse.Namespace) -> int:
    """Passes at start, on triggers (control repo, run exits, pokes) and every --interval;
    SIGTERM/SIGINT finish the current pass and exit (agents keep running and are adopted)."""
    from reconciler.daemon import Daemon, Log

    engine.take_over = frozenset(args.take_over or ())
    daemon = Daemon(
        engine,
        args.interval,
        Log(args.log_format),
        once=args.once,
        summary=lambda result: summary_line(result.plan),
    )
    if args.listen is not None:
        from reconciler.cli.serve import listener

        daemon.listener = listener(engine, args, daemon)
    return daemon.run(args.lock_timeout)


def cmd_poke(engine: Engine, args: argparse.Namespace) -> int:
    """Ask the running `reconciler run` for a pass now; with --or-apply, run one pass
    (under the lock) when none runs."""
    from reconciler.daemon import poke

    pid = poke(engine.state_dir)
    if pid is not None:
        print(f"poked reconciler run (pid {pid})")
        return EXIT_OK
    if not args.or_apply:
        err(
            f"no `reconciler run` holds {engine.state_dir}; start one, or use "
            "`poke --or-apply` to run one pass instead"
        )
        return EXIT_ERROR
    args.yes, args.planfile = True, None
    return cmd_apply(engine, args)
