"""The commands that read: status, describe, logs, doctor."""

from __future__ import annotations

import argparse
import sys
import time

from reconciler.cli import state as state_cli
from reconciler.cli.common import (
    EXIT_ERROR,
    EXIT_OK,
    lane_of,
    readable,
)
from reconciler.cli.render import (
    Painter,
    clear_screen,
    dump,
    err,
    render_describe,
    render_status,
    table,
    use_color,
)
from reconciler.control import ControlError
from reconciler.durations import format_duration
from reconciler.engine import Engine, UserError
from reconciler.lanes import LaneUnavailable, RequestFailed
from reconciler.manifests.errors import ManifestErrors
from reconciler.protocol import (
    LogResult,
    PreflightResult,
    ReadLogRequest,
)
from reconciler.report import StatusView, describe, planned, status_view


def _status_view(engine: Engine) -> StatusView:
    return status_view(engine, readable(engine))


def _status_text(view: StatusView, paint: Painter, wide: bool) -> str:
    tasks = view.plan.tasks
    lines = [render_status(tasks, paint, view.ages, wide=wide).rstrip("\n"), ""]
    counts: dict[str, int] = {}
    for s in tasks:
        counts[s.phase.value] = counts.get(s.phase.value, 0) + 1
    summary = ", ".join(f"{n} {phase}" for phase, n in sorted(counts.items()))
    total = view.data["spendUsd"]
    lines.append(
        f"Revision {view.plan.revision[:12]}: {summary or 'no tasks'}; spend ${total:.2f}."
    )
    today = [
        f"{name} ${v['todayUsd']:.2f}" + (f" of ${v['budgetUsd']:.2f}" if v["budgetUsd"] else "")
        for name, v in sorted(view.data["lanes"].items())
    ]
    if today:
        lines.append(f"Spend today (UTC) per lane: {', '.join(today)}.")
    return "\n".join(lines) + "\n"


def cmd_status(engine: Engine, args: argparse.Namespace) -> int:
    if args.watch is not None:
        return _watch(engine, args)
    view = _status_view(engine)
    if args.output in ("json", "yaml"):
        dump(view.data, args.output)
        return EXIT_OK
    for problem in view.said:
        err(f"control: {problem}")
    paint = Painter(use_color(sys.stdout))
    sys.stdout.write(_status_text(view, paint, wide=args.output == "wide"))
    return EXIT_OK


def _watch(engine: Engine, args: argparse.Namespace) -> int:
    """``status --watch``: the table redrawn every interval until Ctrl-C, like watch(1)."""
    every: float = args.watch
    terminal = sys.stdout.isatty()
    paint = Painter(use_color(sys.stdout))
    try:
        while True:
            engine.control.refresh()
            try:
                view = _status_view(engine)
                body = _status_text(view, paint, wide=args.output == "wide")
                body = "".join(f"control: {p}\n" for p in view.said) + body
            except (ManifestErrors, UserError, ControlError) as exc:
                body = f"{exc}\n"  # the next round may be better: keep watching
            stamp = time.strftime("%H:%M:%S")
            shown = f"{every * 1000:.0f}ms" if every < 1 else format_duration(every)
            head = paint(f"Every {shown}: reconciler status", "bold")
            sys.stdout.write((clear_screen() if terminal else "") + f"{head}    {stamp}\n\n")
            sys.stdout.write(body + ("" if terminal else "\n"))
            sys.stdout.flush()
            time.sleep(every)
    except KeyboardInterrupt:
        return EXIT_OK


def cmd_describe(engine: Engine, args: argparse.Namespace) -> int:
    desired = readable(engine)
    with engine.reading() as store:
        plan, _, _ = planned(engine, desired, store)
        report = describe(args.task, desired, plan, store)
    if report is None:
        raise UserError(f"no task named {args.task}; `reconciler status` lists the tasks")
    if args.output in ("json", "yaml"):
        dump(report.to_json(), args.output)
        return EXIT_OK
    sys.stdout.write(render_describe(report, Painter(use_color(sys.stdout))))
    return EXIT_OK


def cmd_logs(engine: Engine, args: argparse.Namespace) -> int:
    desired = readable(engine)
    lane = lane_of(engine, desired, args.task)
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
    pruned = [r for r in runs if (r.attempt, r.iteration) == (attempt, iteration) and r.pruned]
    if pruned:
        raise UserError(
            f"run {attempt}.{iteration} of task {args.task} is settled and its directory was "
            "removed after the retention period (Config spec.runRetention); `reconciler "
            f"describe {args.task}` still shows what it did and spent"
        )
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
    desired = readable(engine)
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
