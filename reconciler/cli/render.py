"""Human renderings of plans, statuses and tables. Renders only: decides nothing.

Colour only on a terminal, and never when ``NO_COLOR`` is set. ``Painter`` writes no escape
itself: it writes the CLI's colour markers (``terminal.sgr``), which only the guarded stream turns
into escapes, after it has neutralised every control character the text carried.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import TextIO

from ruamel.yaml import YAML

from reconciler.cli.terminal import csi, sgr, visible
from reconciler.durations import format_duration
from reconciler.plan import ActionKind, Phase, Plan, TaskStatus
from reconciler.plan.model import SYMBOLS
from reconciler.report import DescribeReport, PullRequestReport, RunReport

_COLORS = {"green": "32", "yellow": "33", "red": "31", "bold": "1", "dim": "2", "cyan": "36"}

_SYMBOL_COLOR = {"+": "green", "~": "yellow", "-": "red", "!": "red", "✓": "green"}

_PHASE_COLOR = {
    Phase.RUNNING: "cyan",
    Phase.DONE: "green",
    Phase.PR_OPEN: "green",
    Phase.FAILED: "red",
    Phase.BLOCKED: "yellow",
    Phase.BACKOFF: "yellow",
    Phase.UNKNOWN: "red",
    Phase.CLOSING: "yellow",
}

# Summary wording, in display order: (kind, singular phrase).
_SUMMARY = [
    (ActionKind.START, "to start"),
    (ActionKind.STANDBY, "on standby"),
    (ActionKind.ITERATE, "to iterate"),
    (ActionKind.RETRY, "to retry"),
    (ActionKind.MARK_CRASHED, "to mark crashed"),
    (ActionKind.MARK_STALLED, "to mark stalled"),
    (ActionKind.FINISH_RUN, "to finish"),
    (ActionKind.OPEN_PR, "PR to open"),
    (ActionKind.ADOPT_PR, "PR to adopt"),
    (ActionKind.UPDATE_PR, "PR to update"),
    (ActionKind.REBASE, "to rebase"),
    (ActionKind.STOP, "to stop"),
    (ActionKind.WITHDRAW, "to withdraw"),
    (ActionKind.CLOSE_PR, "to close"),
    (ActionKind.CLEANUP, "to clean up"),
    (ActionKind.COMPLETE, "to complete"),
]


def use_color(stream: TextIO) -> bool:
    return stream.isatty() and not os.environ.get("NO_COLOR")


class Painter:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, text: str, *styles: str) -> str:
        if not self.enabled or not styles:
            return text
        codes = ";".join(_COLORS[s] for s in styles)
        return f"{sgr(codes)}{text}{sgr('0')}"


def summary_line(p: Plan) -> str:
    counts = Counter(a.kind for a in p.actions)
    parts = []
    for kind, phrase in _SUMMARY:
        n = counts.get(kind, 0)
        if n:
            plural = phrase.replace("PR ", "PRs ") if n > 1 else phrase
            parts.append(f"{n} {plural}")
    return "Plan: " + ", ".join(parts) + "."


def render_plan(p: Plan, paint: Painter) -> str:
    rev = p.revision[:12]
    if p.empty:
        lines = [
            paint("No changes.", "green", "bold")
            + f" The world matches the control repo (revision {rev})."
        ]
        if p.blocked:
            lines += ["", "Blocked:"]
            lines += [f"  {b.task}: {b.reason}" for b in p.blocked]
        return "\n".join(lines) + "\n"
    lines = [
        f"reconciler will perform the following actions "
        f"(control revision {rev}, state serial {p.serial}):",
        "",
    ]
    width_kind = max(len(a.kind.value) for a in p.actions)
    width_task = max(len(a.task) for a in p.actions)
    width_lane = max(len(a.lane) for a in p.actions) + 2
    for action in p.actions:
        symbol = SYMBOLS[action.kind]
        colored = paint(symbol, _SYMBOL_COLOR[symbol], "bold")
        lines.append(
            f"  {colored} {action.kind.value:<{width_kind}}  {action.task:<{width_task}}  "
            + paint(f"{'[' + action.lane + ']':<{width_lane}}", "dim")
            + f"  {action.reason}"
        )
    if p.blocked:
        lines += ["", "Blocked:"]
        lines += [f"  {paint('#', 'yellow')} {b.task}: {b.reason}" for b in p.blocked]
    lines += ["", paint(summary_line(p), "bold")]
    return "\n".join(lines) + "\n"


def table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    widths = [len(h) for h in header]
    for row in rows:
        widths = [max(w, len(visible(c))) for w, c in zip(widths, row, strict=True)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    for row in rows:
        cells = [c + " " * (w - len(visible(c))) for c, w in zip(row, widths, strict=True)]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out) + "\n"


# What the next pass does for a task in these states; whether "next" is now depends on what drives
# the passes.
def render_status(
    statuses: Sequence[TaskStatus], paint: Painter, ages: dict[str, float], *, wide: bool = False
) -> str:
    """The status table; ``wide`` adds the repo, branch, tokens, the reason code and when the
    next attempt is due (``-o wide``)."""
    if not statuses:
        return "No tasks.\n"
    now = time.time()
    rows = []
    for s in statuses:
        pr = f"#{s.pr.number} {s.pr.state}" if s.pr else "-"
        age = format_duration(now - ages[s.name]) if s.name in ages else "-"
        run = f"{s.attempt}.{s.iteration}" if s.attempt else "-"
        cost = f"${s.cost_usd:.2f}" if s.cost_usd else "-"
        colour = (_PHASE_COLOR[s.phase],) if s.phase in _PHASE_COLOR else ()
        row = [s.name, paint(s.phase.value, *colour), s.lane, run, pr, cost, age]
        if wide:
            due = s.next_attempt_at
            row += [
                s.repo,
                s.branch,
                str(s.tokens) if s.tokens else "-",
                s.why.value,
                format_duration(max(0.0, due - now)) if due is not None else "-",
            ]
        rows.append([*row, s.reason])
    head = ["TASK", "PHASE", "LANE", "RUN", "PR", "COST", "AGE"]
    head += ["REPO", "BRANCH", "TOKENS", "CODE", "NEXT"] if wide else []
    return table(rows, [*head, "REASON"])


def dump(data: object, output: str) -> None:
    """A command's document on stdout as ``json`` (indented) or ``yaml`` (block style)."""
    if output == "json":
        print(json.dumps(data, indent=2))
        return
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    yaml.sort_base_mapping_type_on_output = False  # type: ignore[assignment]
    yaml.dump(data, sys.stdout)


def clear_screen() -> str:
    """Cursor home and erase the display, as ``GuardedStream`` lets the CLI's own write it."""
    return csi("H") + csi("2J")


def render_describe(report: DescribeReport, paint: Painter) -> str:
    """``describe``'s text: the task's head, its runs as a table, its last events."""
    lines = [paint(f"Task {report.name}", "bold"), *_describe_head(report)]
    if report.runs:
        head = ["RUN", "STARTED", "ENDED", "EXIT", "OUTCOME", "TURNS", "TOOLS", "TOKENS", "COST"]
        lines += ["", table([_run_cells(r) for r in report.runs], [*head, "WHY"]).rstrip("\n")]
    if report.events:
        lines += ["", "Events:"]
        lines += [f"  {paint(_clock(e.at), 'dim')} {e.kind:<12} {e.message}" for e in report.events]
    return "\n".join(lines) + "\n"


def _describe_head(report: DescribeReport) -> list[str]:
    """Where the task is and what it is."""
    lines = []
    status = report.status
    if status:
        reason = f" — {status.reason}" if status.reason else ""
        lines += [
            f"  phase:      {status.phase.value}{reason}",
            f"  lane/repo:  {status.lane}/{status.repo}, branch {status.branch}",
        ]
        if status.pr:
            pr = status.pr
            lines.append(f"  PR:         #{pr.number} ({pr.state}{_merging(pr)}) {pr.url}")
        lines.append(f"  spend:      ${status.cost_usd:.2f}, {status.tokens} tokens")
    spec = report.spec
    if spec:
        lines += [
            f"  source:     {report.source} (generation {report.generation})",
            f"  agent:      {spec.agent}; {spec.max_iterations} iterations x "
            f"{spec.max_attempts} attempts; priority {spec.priority}",
        ]
    return lines


def _merging(pr: PullRequestReport) -> str:
    """ ", conflicts with its base in a.txt" for an open PR whose base moved."""
    if pr.state != "open" or pr.mergeable is None:
        return ""
    if not pr.mergeable:
        return ", conflicts with its base" + (
            f" in {', '.join(pr.conflicts)}" if pr.conflicts else ""
        )
    return ", behind its base" if pr.behind else ""


def _run_cells(r: RunReport) -> list[str]:
    """One run as describe's table shows it."""
    exit_ = (
        "-"
        if r.exit_code is None and r.signal is None
        else (f"sig {r.signal}" if r.signal else str(r.exit_code))
    )
    return [
        f"{r.attempt}.{r.iteration}",
        _clock(r.started_at),
        "-" if r.ended_at is None else _clock(r.ended_at),
        exit_,
        r.outcome or r.mark or ("ended" if r.ended_at else "running"),
        str(r.turns) if r.turns is not None else "-",
        str(r.tool_calls) if r.tool_calls is not None else "-",
        str(r.tokens) if r.tokens else "-",
        f"${r.cost_usd:.2f}" if r.cost_usd else "-",
        "; ".join(r.failures)[:80],
    ]


def _clock(at: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(at))


def err(message: str, stream: TextIO | None = None) -> None:
    out = stream or sys.stderr
    paint = Painter(use_color(out))
    print(paint("error:", "red", "bold") + " " + message, file=out)


def warn(message: str, stream: TextIO | None = None) -> None:
    out = stream or sys.stderr
    print(Painter(use_color(out))("warning:", "yellow", "bold") + " " + message, file=out)
