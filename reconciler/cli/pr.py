"""`reconciler pr`: the pull requests of the tasks, for forges with no web page to look at.

``list`` (every PR of the lanes' forges, with whether an open one merges into its base now),
``show TASK`` (one PR: title, state, conflicts, body, comments), ``diff TASK`` (its changes
against its base), and the operator's ``merge`` and ``close``, which play the part of a person on
the local forge. Reads through the lanes (the forge is the authority); the state is never
touched. Renders, never decides.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable

from reconciler.cli import completion
from reconciler.cli.common import lane_of
from reconciler.cli.render import table, warn
from reconciler.engine import Engine, UserError
from reconciler.lanes import LaneClient, LaneUnavailable, RequestFailed
from reconciler.plan import branch_of
from reconciler.protocol import (
    ForgeCloseRequest,
    ForgeListRequest,
    ForgeListResult,
    ForgeMergeRequest,
    ForgeShowRequest,
    ForgeShowResult,
    PRResult,
    PullRequest,
)
from reconciler.report import PullReport, ShowReport, newest_pr

EXIT_OK = 0


def add_parser(
    command: Callable[[str, str], argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    p = command("pr", "pull requests of the tasks: list, show, diff; merge and close (local forge)")
    prsub = p.add_subparsers(dest="pr_command", metavar="ACTION", required=True)
    ls = prsub.add_parser(
        "list",
        help="every PR of the lanes' forges, with whether an open one merges into its base",
        parents=[common],
    )
    ls.add_argument("--json", action="store_true", help="print the PRs as JSON")
    s = prsub.add_parser(
        "show", help="a task's PR: title, state, conflicts, body, comments", parents=[common]
    )
    completion.tasks(s.add_argument("task"))
    s.add_argument("--json", action="store_true", help="print the PR as JSON")
    d = prsub.add_parser(
        "diff",
        help="a task's PR as a unified diff against its base (local forge)",
        parents=[common],
    )
    completion.tasks(d.add_argument("task"))
    m = prsub.add_parser("merge", help="merge a task's open PR (local forge)", parents=[common])
    completion.tasks(m.add_argument("task"))
    c = prsub.add_parser(
        "close", help="close a task's open PR without merging (local forge)", parents=[common]
    )
    completion.tasks(c.add_argument("task"))
    c.add_argument("--comment", default="Closed by an operator.", help="comment to leave")


# ------------------------------------------------------------------------------- reports


def merges(pr: PullReport) -> str:
    """What the MERGEABLE column says of a PR."""
    if pr.state != "open":
        return "-"
    if pr.mergeable is None:
        return "unknown"
    if not pr.mergeable:
        return "conflict" + (f" ({', '.join(pr.conflicts)})" if pr.conflicts else "")
    return "yes, behind" if pr.behind else "yes"


# ------------------------------------------------------------------------------- commands


def cmd_pr(engine: Engine, args: argparse.Namespace) -> int:
    if args.pr_command == "list":
        return _list(engine, args)
    desired = engine.load()
    lane = lane_of(engine, desired, args.task)
    task = desired.tasks.get(args.task)
    if task is None:
        raise UserError(f"task {args.task} is not in the manifests")
    repo = task.spec.repo
    branch = branch_of(desired.config, args.task)
    listed = lane.one(ForgeListRequest(lane=lane.ref, repo=repo, head=branch), ForgeListResult)
    if args.pr_command in ("show", "diff"):
        return _show(lane, repo, args, _newest(listed.prs, args.task))
    open_prs = [p for p in listed.prs if p.state == "open"]
    if not open_prs:
        raise UserError(f"task {args.task} has no open PR; `reconciler status` shows its phase")
    number = open_prs[0].number
    if args.pr_command == "close":
        lane.one(
            ForgeCloseRequest(lane=lane.ref, repo=repo, number=number, comment=args.comment),
            PRResult,
        )
        print(f"Closed PR #{number} without merging.")
        _poke_after_pr(engine)
        print("The task shows failed until its manifest changes.")
        return EXIT_OK
    merged = lane.one(ForgeMergeRequest(lane=lane.ref, repo=repo, number=number), PRResult)
    print(f"Merged PR #{merged.pr.number} ({branch} into {merged.pr.base}).")
    if _poke_after_pr(engine):
        print("`reconciler run` marks the task done and removes its worktree now.")
    else:
        print("The next `reconciler apply` marks the task done and removes its worktree.")
    return EXIT_OK


def _newest(prs: list[PullRequest], task: str) -> PullRequest:
    pr = newest_pr(prs)
    if pr is None:
        raise UserError(f"task {task} has no PR yet; `reconciler status` shows its phase")
    return pr


def _list(engine: Engine, args: argparse.Namespace) -> int:
    desired = engine.load()
    rows: list[PullReport] = []
    for name, lane in engine.lanes(desired).items():
        for repo in lane.spec.repos:
            if repo.forge is None:
                continue
            try:
                listed = lane.one(
                    ForgeListRequest(lane=lane.ref, repo=repo.name, mergeable=True),
                    ForgeListResult,
                )
            except (LaneUnavailable, RequestFailed) as exc:
                warn(f"lane {name}, repo {repo.name}: {exc}")
                continue
            rows += [PullReport.listed(name, repo.name, pr) for pr in listed.prs]
    if args.json:
        print(json.dumps({"pulls": [r.to_json() for r in rows]}, indent=2))
        return EXIT_OK
    if not rows:
        print("No pull requests.")
        return EXIT_OK
    cells = [
        [r.task or "-", f"#{r.number}", r.state, r.head, r.base, merges(r), f"{r.lane}/{r.repo}"]
        for r in rows
    ]
    sys.stdout.write(table(cells, ["TASK", "PR", "STATE", "HEAD", "BASE", "MERGEABLE", "REPO"]))
    return EXIT_OK


def _show(lane: LaneClient, repo: str, args: argparse.Namespace, pr: PullRequest) -> int:
    diff = args.pr_command == "diff"
    shown = lane.one(
        ForgeShowRequest(lane=lane.ref, repo=repo, number=pr.number, diff=diff), ForgeShowResult
    )
    if diff:
        sys.stdout.write(shown.diff or "")
        return EXIT_OK
    report = ShowReport.of(lane.name, repo, shown.pr, shown.comments)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
        return EXIT_OK
    sys.stdout.write(render_show(report))
    return EXIT_OK


def render_show(report: ShowReport) -> str:
    pr = report.pr
    lines = [
        f"PR #{pr.number}: {pr.title}",
        f"  state:      {pr.state}",
        f"  branch:     {pr.head} into {pr.base}"
        + (f" (at {pr.head_sha[:12]})" if pr.head_sha else ""),
        f"  mergeable:  {merges(pr)}",
        f"  url:        {pr.url}",
        "",
        *(f"  {line}" if line else "" for line in report.body.rstrip().splitlines()),
    ]
    if report.comments:
        lines += ["", f"Comments ({len(report.comments)}):"]
        for c in report.comments:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(c.at)) if c.at else "?"
            lines.append(f"  {when} {c.author or '?'}:")
            lines += [f"    {line}" for line in c.body.rstrip().splitlines()]
    return "\n".join(lines) + "\n"


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
