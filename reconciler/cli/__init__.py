"""The command line. Parses, calls the engine, renders; never decides.

Exit codes: 0 success; 1 error; 2 ``plan --detailed-exitcode`` with changes; 75 the state lock is
held by another reconciler. Errors are sentences, never tracebacks (a bug's traceback goes,
redacted, to ``<state>/last-error.txt``). Everything a command writes goes through one
chokepoint, ``terminal.guarded``: redacted everywhere, and on a terminal with every control
character shown rather than obeyed.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from reconciler import __version__, safefile
from reconciler.cli import hooks
from reconciler.cli import state as state_cli
from reconciler.cli.render import (
    Painter,
    err,
    render_describe,
    render_plan,
    render_status,
    summary_line,
    table,
    use_color,
    warn,
)
from reconciler.cli.report import DescribeReport, TaskReport, report_schemas
from reconciler.cli.terminal import guarded, unguarded
from reconciler.control import ControlError
from reconciler.durations import parse_duration
from reconciler.engine import Context, Engine, UserError, plan_to_json, read_plan, save_plan
from reconciler.lanes import LaneClient, LaneUnavailable, RequestFailed
from reconciler.lanes.policy import PolicyError, machine_facts, violations
from reconciler.manifests.errors import ManifestErrors
from reconciler.manifests.models import Desired, LaneSpec, SshTarget
from reconciler.manifests.policy import lane_violations
from reconciler.manifests.schema import schema_documents
from reconciler.plan import Plan, branch_of
from reconciler.protocol import (
    ForgeCloseRequest,
    ForgeListRequest,
    ForgeListResult,
    ForgeMergeRequest,
    LogResult,
    PreflightResult,
    PRResult,
    ReadLogRequest,
)
from reconciler.redact import redact, secrets_of_url
from reconciler.state import LockHeld, StateError, Store, state_dir_problem

EXIT_OK, EXIT_ERROR, EXIT_CHANGES, EXIT_LOCKED = 0, 1, 2, 75


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
    _add_pr(command, common)
    _add_keys(command, common)
    p = command("node", "serve one batch of lane requests: JSON on stdin, JSON on stdout")
    p.add_argument(
        "--pin",
        type=_pin,
        help="serve only the lane configuration with this digest (set by `keys authorize`)",
    )
    state_cli.add_parser(command, common)
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


def _add_converging(command: Command) -> None:
    """plan, apply, run and poke: the commands that compute or carry out a pass."""
    p = command("plan", "show what apply would do")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
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
    p.add_argument("--take-over", action="append", metavar="LANE", help=take_over_help)
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument("planfile", nargs="?", type=Path, help="a plan saved by plan --out")
    p = command("run", "reconcile continuously")
    p.add_argument("--lock-timeout", type=_duration, default=0.0, help=lock_help)
    p.add_argument("--take-over", action="append", metavar="LANE", help=take_over_help)
    p.add_argument(
        "--interval",
        type=_duration,
        default=30.0,
        help="the longest wait between passes (triggers start one sooner)",
    )
    p.add_argument("--once", action="store_true", help="one pass, then exit")
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
    p.add_argument("--json", action="store_true")
    p = command("describe", "a task's spec, phase, runs, events and PR")
    p.add_argument("task")
    p.add_argument("--json", action="store_true")
    p = command("logs", "the agent's output for a run")
    p.add_argument("task")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing until the run ends")
    p.add_argument(
        "--raw",
        action="store_true",
        help="the agent's output as it wrote it (default: its events as readable lines)",
    )
    p.add_argument("--run", help="ATTEMPT.ITERATION (default: the latest run)")
    command("doctor", "pre-flight checks of every lane, as a table")
    p = command("schema", "write the JSON Schemas of the manifest kinds and of describe --json")
    p.add_argument("--out", type=Path, default=Path("schemas"))


def _add_pr(command: Command, common: argparse.ArgumentParser) -> None:
    p = command("pr", "pull requests of the local forge")
    prsub = p.add_subparsers(dest="pr_command", metavar="ACTION", required=True)
    m = prsub.add_parser("merge", help="merge a task's open PR (local forge)", parents=[common])
    m.add_argument("task")
    c = prsub.add_parser(
        "close", help="close a task's open PR without merging (local forge)", parents=[common]
    )
    c.add_argument("task")
    c.add_argument("--comment", default="Closed by an operator.", help="comment to leave")


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


def main(argv: Sequence[str] | None = None) -> int:
    with guarded() as secrets:
        return _main(argv, secrets)


def _main(argv: Sequence[str] | None, secrets: set[str]) -> int:
    args = build_parser().parse_args(argv)
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
    try:
        return handler(Engine(ctx), args)
    except ManifestErrors as exc:
        for error in exc.errors:
            print(str(error), file=sys.stderr)
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


def cmd_validate(engine: Engine, args: argparse.Namespace) -> int:
    policy = engine.policy()
    facts = machine_facts()
    desired = engine.load(
        worktree=True, lane_check=lambda name, spec: lane_violations(policy, facts, name, spec)
    )
    counts = ", ".join(
        _plural(n, what)
        for n, what in (
            (len(desired.tasks), "task"),
            (len(desired.lanes), "lane"),
            (len(desired.agents), "agent"),
        )
    )
    for warning in desired.warnings:
        warn(str(warning))
    print(f"{counts}: the manifests are valid, and {policy.origin} allows every lane.")
    return EXIT_OK


def cmd_policy(engine: Engine, args: argparse.Namespace) -> int:
    """What the policy in force allows, with every default spelt out."""
    policy = engine.policy()
    facts = machine_facts()
    spec = policy.spec
    own = spec.reconciler_user if spec.reconciler_user is not None else facts.euid != 0
    data = {
        "source": policy.source,
        "reconcilerUser": own,
        "users": spec.users,
        "sshHosts": spec.ssh_hosts,
        "sshKeys": spec.ssh_keys,
        "knownHosts": spec.known_hosts,
        "githubApiUrls": spec.github_api_urls,
    }
    if args.json:
        print(json.dumps(data, indent=2))
        return EXIT_OK
    print(f"In force: {policy.origin}.")
    who = facts.user + (" (uid 0)" if facts.euid == 0 and facts.user != "root" else "")
    print(f"  lanes as the reconciler's own user ({who}): {'allowed' if own else 'refused'}")
    users = (
        ", ".join(spec.users)
        if spec.users is not None
        else f"regular users (uid {facts.uid_min} and up), never root"
    )
    print(f"  local lane users:       {users}")
    hosts = (
        ", ".join(spec.ssh_hosts) if spec.ssh_hosts is not None else "any host, any user but root"
    )
    print(f"  ssh hosts:              {hosts}")
    print(f"  ssh keys:               {', '.join(spec.ssh_keys)}")
    print(f"  ssh known hosts files:  {', '.join(spec.known_hosts)}")
    print(f"  GitHub API URLs:        {', '.join(spec.github_api_urls)}")
    return EXIT_OK


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def cmd_plan(engine: Engine, args: argparse.Namespace) -> int:
    desired = engine.load()
    with engine.reading() as store:
        plan, observed = engine.observe_and_plan(desired, store)
    for foreign in observed.foreign:
        print(f"warning: {foreign.message}", file=sys.stderr)
    if args.out:
        save_plan(plan, args.out)
    if args.json:
        print(json.dumps(plan_to_json(plan), indent=2))
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
        result = engine.apply(desired, store, saved=saved, confirm=confirm)
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


def _statuses(engine: Engine) -> tuple[Desired, Plan, Store]:
    desired = engine.load()
    store = Store.open_readonly(engine.ctx.state_dir)
    try:
        plan, _ = engine.observe_and_plan(desired, store)
    except BaseException:
        store.close()
        raise
    return desired, plan, store


def status_json(plan: Plan) -> dict[str, Any]:
    return {
        "revision": plan.revision,
        "tasks": [TaskReport.of(s).to_json() for s in plan.tasks],
        "requeue": plan.requeue.to_json(plan.now) if plan.requeue else None,
    }


def _lane_spend(desired: Desired, plan: Plan) -> dict[str, dict[str, Any]]:
    """Per lane: what its runs started since 00:00 UTC spent, as the planner holds it to its
    daily budget (the plan's figures: status never counts differently), and that budget."""
    spent = {s.lane: s for s in plan.lane_spend}
    lanes: dict[str, dict[str, Any]] = {}
    for name, lane in desired.lanes.items():
        today = spent.get(name)
        lanes[name] = {
            "todayUsd": today.today_usd if today else 0.0,
            "todayTokens": today.today_tokens if today else 0,
            "budgetUsd": lane.budget.max_cost_usd,
            "budgetTokens": lane.budget.max_tokens,
        }
    return lanes


def cmd_status(engine: Engine, args: argparse.Namespace) -> int:
    desired, plan, store = _statuses(engine)
    try:
        ages = {name: row.first_seen for name, row in store.tasks().items()}
        problems = [p for p in (store.get_meta("control_problem"),) if p]
    finally:
        store.close()
    fetch = engine.control.fetch_error
    if fetch and not any("could not be fetched" in p for p in problems):
        problems.append(f"the control remote could not be fetched ({fetch})")
    lanes = _lane_spend(desired, plan)
    if args.json:
        data = status_json(plan)
        data["controlProblem"] = "; ".join(problems) or None
        data["lanes"] = lanes
        data["spendUsd"] = round(sum(t.cost_usd for t in plan.tasks), 6)
        print(json.dumps(data, indent=2))
        return EXIT_OK
    for problem in problems:
        err(f"control: {problem}")
    paint = Painter(use_color(sys.stdout))
    sys.stdout.write(render_status(plan.tasks, paint, ages))
    total = sum(s.cost_usd for s in plan.tasks)
    counts: dict[str, int] = {}
    for s in plan.tasks:
        counts[s.phase.value] = counts.get(s.phase.value, 0) + 1
    summary = ", ".join(f"{n} {phase}" for phase, n in sorted(counts.items()))
    print(f"\nRevision {plan.revision[:12]}: {summary or 'no tasks'}; spend ${total:.2f}.")
    today = [
        f"{name} ${v['todayUsd']:.2f}" + (f" of ${v['budgetUsd']:.2f}" if v["budgetUsd"] else "")
        for name, v in sorted(lanes.items())
    ]
    if today:
        print(f"Spend today (UTC) per lane: {', '.join(today)}.")
    return EXIT_OK


def cmd_describe(engine: Engine, args: argparse.Namespace) -> int:
    desired, plan, store = _statuses(engine)
    try:
        status = next((s for s in plan.tasks if s.name == args.task), None)
        task = desired.tasks.get(args.task)
        row = store.task(args.task)
        if status is None and task is None and row is None:
            raise UserError(f"no task named {args.task}; `reconciler status` lists the tasks")
        report = DescribeReport.of(
            args.task,
            status=status,
            task=task,
            row=row,
            runs=store.runs(args.task),
            events=store.events(args.task, limit=30),
        )
    finally:
        store.close()
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
        return EXIT_OK
    sys.stdout.write(render_describe(report, Painter(use_color(sys.stdout))))
    return EXIT_OK


def _lane_of(engine: Engine, desired: Desired, task: str) -> LaneClient:
    spec = desired.tasks.get(task)
    lane_name = spec.spec.lane if spec else None
    if lane_name is None:
        with engine.reading() as store:
            row = store.task(task)
        if row is None:
            raise UserError(f"no task named {task}; `reconciler status` lists the tasks")
        lane_name = row.lane
    if lane_name not in desired.lanes:
        raise UserError(f"task {task} belongs to lane {lane_name}, which is not in the manifests")
    return engine.lanes(desired)[lane_name]


def cmd_logs(engine: Engine, args: argparse.Namespace) -> int:
    desired = engine.load()
    lane = _lane_of(engine, desired, args.task)
    with engine.reading() as store:
        runs = store.runs(args.task)
    if args.run:
        try:
            attempt, iteration = (int(x) for x in args.run.split("."))
        except ValueError as exc:
            raise UserError(f"--run {args.run}: write it as ATTEMPT.ITERATION, e.g. 2.1") from exc
    elif runs:
        attempt, iteration = runs[-1].attempt, runs[-1].iteration
    else:
        raise UserError(f"task {args.task} has no runs yet")
    offset = 0
    while True:
        chunk = lane.one(
            ReadLogRequest(
                lane=lane.ref,
                task=args.task,
                attempt=attempt,
                iteration=iteration,
                offset=offset,
                render=not args.raw,
            ),
            LogResult,
        )
        # no flush between chunks: a line (and a token in it) cut by a chunk's end is written,
        # and redacted, whole
        sys.stdout.write(chunk.data)
        moved = chunk.offset != offset
        offset = chunk.offset
        if not args.follow or (chunk.ended and not moved):
            return EXIT_OK
        if not moved:
            sys.stdout.flush()  # what there is, while the agent writes on
            time.sleep(0.5)


def cmd_doctor(engine: Engine, args: argparse.Namespace) -> int:
    desired = engine.load()
    paint = Painter(use_color(sys.stdout))
    rows = []
    failed = 0
    for name, lane in engine.lanes(desired).items():
        try:
            result = lane.one(lane.preflight_request(desired), PreflightResult)
        except (LaneUnavailable, RequestFailed) as exc:
            failed += 1
            detail, _, fix = str(exc).partition("; ")
            check = exc.check if isinstance(exc, LaneUnavailable) else "lane"
            rows.append([name, check, "", paint("FAIL", "red"), detail, fix])
            continue
        for c in result.checks:
            failed += 0 if c.ok else 1
            rows.append(
                [
                    name,
                    c.name,
                    c.subject,
                    paint("ok", "green") if c.ok else paint("FAIL", "red"),
                    c.detail,
                    "" if c.ok else c.fix + (" (tasks are still dispatched)" * c.advisory),
                ]
            )
    state_rows, state_failed = state_cli.doctor_rows(engine.ctx.state_dir, paint)
    rows, failed = rows + state_rows, failed + state_failed
    sys.stdout.write(table(rows, ["LANE", "CHECK", "SUBJECT", "RESULT", "DETAIL", "FIX"]))
    print(
        f"\n{failed} check{'s' if failed != 1 else ''} failed."
        if failed
        else "\nAll checks passed."
    )
    return EXIT_ERROR if failed else EXIT_OK


def cmd_schema(engine: Engine, args: argparse.Namespace) -> int:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    for name, text in {**schema_documents(), **report_schemas()}.items():
        safefile.write_atomic(out / name, text.encode("utf-8"), 0o644)
        print(f"wrote {out / name}")
    return EXIT_OK


def cmd_pr(engine: Engine, args: argparse.Namespace) -> int:
    """Operator actions on the local forge, which has no web page to click."""
    desired = engine.load()
    lane = _lane_of(engine, desired, args.task)
    task = desired.tasks.get(args.task)
    if task is None:
        raise UserError(f"task {args.task} is not in the manifests")
    branch = branch_of(desired.config, args.task)
    listed = lane.one(
        ForgeListRequest(lane=lane.ref, repo=task.spec.repo, head=branch), ForgeListResult
    )
    open_prs = [p for p in listed.prs if p.state == "open"]
    if not open_prs:
        raise UserError(f"task {args.task} has no open PR; `reconciler status` shows its phase")
    number = open_prs[0].number
    if args.pr_command == "close":
        lane.one(
            ForgeCloseRequest(
                lane=lane.ref, repo=task.spec.repo, number=number, comment=args.comment
            ),
            PRResult,
        )
        print(f"Closed PR #{number} without merging.")
        _poke_after_pr(engine)
        print("The task shows failed until its manifest changes.")
        return EXIT_OK
    merged = lane.one(
        ForgeMergeRequest(lane=lane.ref, repo=task.spec.repo, number=number), PRResult
    )
    print(f"Merged PR #{merged.pr.number} ({branch} into {merged.pr.base}).")
    if _poke_after_pr(engine):
        print("`reconciler run` marks the task done and removes its worktree now.")
    else:
        print("The next `reconciler apply` marks the task done and removes its worktree.")
    return EXIT_OK


def _poke_after_pr(engine: Engine) -> bool:
    """A `reconciler run` holding the state makes its pass now rather than at its next interval:
    nothing else tells it (a forge's PR state is learned by a pass). True when one was poked."""
    from reconciler.daemon import poke

    try:
        pid = poke(engine.state_dir)
    except PermissionError:  # it runs as another user; its interval still sees the change
        return False
    if pid is not None:
        print(f"Poked reconciler run (pid {pid}).")
    return pid is not None


def _ssh_lane(engine: Engine, name: str) -> LaneSpec:
    desired = engine.load()
    spec = desired.lanes.get(name)
    if spec is None:
        known = ", ".join(sorted(desired.lanes)) or "none"
        raise UserError(f"no lane named {name} in the manifests (lanes: {known})")
    if spec.ssh_target is None:
        raise UserError(
            f"lane {name} runs on this machine (host: local); keys are for lanes with "
            "host: ssh://USER@HOST[:PORT]"
        )
    return spec


def cmd_keys(engine: Engine, args: argparse.Namespace) -> int:
    """The two halves of trusting an ssh lane: the host trusts our key, we trust its key."""
    from reconciler.lanes import ssh

    spec = _ssh_lane(engine, args.lane)
    target = spec.ssh_target
    assert target is not None
    options = spec.ssh_options
    # The key, the known hosts file and the host are the manifest's words: only what the admin
    # policy allows is created, read or written (never root's own key, never /etc/passwd).
    refused = violations(engine.policy(), args.lane, spec)
    if refused:
        raise UserError(f"{refused[0].message}; {refused[0].hint}; nothing was read or written")
    try:
        if args.keys_command == "authorize":
            key = ssh.ensure_key(options.identity_file)
            made = "created now" if key.created else "existing"
            err_line = (
                f"The reconciler's key for lane {args.lane} is {key.path} ({made}; keep it "
                f"mode 0600). Append this line to ~{target.user}/.ssh/authorized_keys on "
                f"{target.host}:"
            )
            print(err_line, file=sys.stderr)
            print(ssh.authorized_keys_line(args.lane, spec, key.public))
            return EXIT_OK
        return _keys_scan(args, target, options.known_hosts, options.connect_timeout)
    except ssh.KeyProblem as exc:
        raise UserError(f"lane {args.lane}: {exc}") from None


def _keys_scan(
    args: argparse.Namespace, target: SshTarget, known_hosts: str, timeout: float
) -> int:
    from reconciler.lanes import ssh

    name = target.known_hosts_name
    scanned = ssh.scan_host(target, timeout)
    trusted = ssh.known_keys(known_hosts, target)
    print(f"Host keys of {name} (lane {args.lane}), as the host sent them:")
    for key in scanned:
        print(f"  {key.kind:<22} {key.fingerprint}")
    if set(trusted) == set(scanned):
        print(f"They are already the trusted keys of {name} in {known_hosts}; nothing changed.")
        return EXIT_OK
    if trusted and not args.replace:
        print(f"Already trusted for {name} in {known_hosts}:")
        for key in trusted:
            print(f"  {key.kind:<22} {key.fingerprint}")
        raise UserError(
            f"the host keys of {name} differ from the ones already trusted: the host was "
            "reinstalled, or something is in between. Verify the new fingerprints with the "
            "host's administrator, then run again with --replace"
        )
    print(
        "Compare these fingerprints with the host's own before you trust them (on the host: "
        "ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub); the reconciler will trust exactly "
        "these keys for this host, and verifying them is your job."
    )
    if not args.yes:
        if not sys.stdin.isatty():
            raise UserError(
                "keys scan needs --yes when not run from a terminal; compare the fingerprints "
                "above with the host's first"
            )
        answer = input(f"Trust these keys for {name}? Only 'yes' will be accepted: ")
        if answer.strip() != "yes":
            print("Nothing was trusted.")
            return EXIT_ERROR
    path = ssh.trust_host(known_hosts, target, scanned)
    print(f"Trusted {_plural(len(scanned), 'key')} for {name} in {path}.")
    return EXIT_OK


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
    "schema": cmd_schema,
    "pr": cmd_pr,
    "keys": cmd_keys,
    "state": state_cli.cmd_state,
}

__all__ = ["main"]
