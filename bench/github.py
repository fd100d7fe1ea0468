"""GitHub's cost: the requests and rate-limit points of ``reconciler plan`` passes over 500 tasks
in 5 repositories, each served by a stateful fake of GitHub's REST API (``responses``; nothing
reaches the network): a first pass, an unchanged one, one in a new process, one after a push.
Every open task PR's head has a finished check, as where CI runs."""

from __future__ import annotations

import contextlib
import hashlib
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import responses

from bench.manifests import CONFIG_DOC, agent_doc, spread, task_doc
from bench.options import Options
from bench.sandbox import Sandbox
from bench.table import Table, log
from reconciler.engine import Context, Engine
from reconciler.node import forge_github, github_http
from reconciler.plan import Observed, Plan
from reconciler.protocol import pr_marker
from tests.support.fake_github import FakeGitHub, VirtualTime, unserved

GITHUB_REPOS = 5
GITHUB_PRS = 120  # per repository: the PR list takes two pages of 100
GITHUB_OPEN_TASK_PRS = 90  # per repository: open PRs carrying the reconciler's task marker
GITHUB_OPEN_OTHER_PRS = 10  # per repository: open PRs people opened (no marker)
GITHUB_DONE_TASK_PRS = 10  # per repository: merged PRs of desired tasks (done)
LEAST_TASKS = GITHUB_REPOS * (GITHUB_OPEN_TASK_PRS + GITHUB_DONE_TASK_PRS)  # the seeded task PRs
UNCHANGED_REQUESTS_TARGET = 3  # per repository, for an unchanged pass over 100 open PRs each
GITHUB_TOKEN = "ghp_" + "B3nchT0k3nB3nchT0k3n" * 2
GITHUB_OWNER = "acme"
FEEDBACK_REQUEST = re.compile(
    r"/commits/[0-9a-f]+/(check-runs|status)$|/pulls/\d+(/reviews|/comments)?$"
)
# What a request of an unchanged pass reads: the path without its query, after the method.
REQUEST_KINDS = (
    ("the repository", re.compile(r"^/repos/[^/]+/[^/]+$")),
    ("PR list pages", re.compile(r"^/repos/[^/]+/[^/]+/pulls$")),
    ("the base branch", re.compile(r"^/repos/[^/]+/[^/]+/(branches|git/ref)/")),
)


@dataclass
class Repo:
    name: str
    checkout: Path
    full_name: str  # OWNER/NAME on GitHub
    tasks: list[str]


@dataclass
class ForgePass:
    requests: int
    points: int
    not_modified: int
    feedback: int  # requests about one PR: whether it merges, its head's checks and status, reviews
    rate_limit: int  # /rate_limit requests (free; once per token per pass)
    seconds: float
    kinds: Counter[str]  # the requests by REQUEST_KINDS (the others not counted)


def github_lane_doc(name: str, root: Path, repos: list[Repo], token_file: Path, home: Path) -> str:
    """One lane, one token file, several repositories each with its own GitHub repository."""
    entries = "".join(
        f"""    - name: {repo.name}
      checkout: {repo.checkout}
      forge: {{kind: github, repo: {repo.full_name}}}
"""
        for repo in repos
    )
    return f"""apiVersion: reconciler/v1
kind: Lane
metadata:
  name: {name}
spec:
  maxConcurrency: 4
  workspaceRoot: {root}
  credentials:
    github: {token_file}
  repos:
{entries}  env:
    HOME: {home}
"""


def pushed_commit(box: Sandbox, checkout: Path, branch: str, note: str) -> str:
    """A new commit on ``branch`` as the lane's push left it: the remote-tracking ref moved."""
    tree = "main^{tree}"
    sha = box.git("commit-tree", tree, "-p", "main", "-m", note, cwd=checkout).strip()
    box.git("update-ref", f"refs/remotes/origin/{branch}", sha, cwd=checkout)
    return sha


def seed_pulls(box: Sandbox, fake: FakeGitHub, repo: Repo) -> int:
    """``GITHUB_PRS`` pull requests as a busy repository has them; the open task PRs' count.

    Open task PRs come first, each on its own commit that the lane pushed (its remote-tracking
    ref points there, so the feedback loop reads the commit's checks), then open PRs by people,
    merged PRs of desired tasks, and closed or merged history without marker.
    """
    stamp = "2025-01-01T00:00:00Z"
    open_tasks = GITHUB_OPEN_TASK_PRS
    open_other = open_tasks + GITHUB_OPEN_OTHER_PRS
    done = open_other + GITHUB_DONE_TASK_PRS
    for number in range(1, GITHUB_PRS + 1):
        body = "A change."
        if number <= open_tasks or open_other < number <= done:
            index = number - 1 if number <= open_tasks else number - 1 - GITHUB_OPEN_OTHER_PRS
            task = repo.tasks[index]
            head, body = f"agent/{task}", f"Task {task}.\n\n{pr_marker(task)}"
        else:
            head = f"people/change-{number}"
        state = "open" if number <= open_other else "closed"
        # task PRs that were closed are merged; of the history, two in three were merged
        merged = stamp if open_other < number <= done or (number > done and number % 3) else None
        if number <= open_tasks:
            sha = pushed_commit(box, repo.checkout, head, f"work #{number}")
            fake.check(sha, "ci", "completed", "success")
        else:
            sha = hashlib.sha256(f"{fake.owner}/{fake.name}#{number}".encode()).hexdigest()[:40]
        fake.pulls.append(
            {
                "number": number,
                "html_url": f"https://github.com/{fake.owner}/{fake.name}/pull/{number}",
                "state": state,
                "title": f"Change {number}",
                "body": body,
                "draft": False,
                "head": {"ref": head, "sha": sha, "label": f"{fake.owner}:{head}"},
                "base": {"ref": "main"},
                "merged_at": merged,
                "closed_at": None if state == "open" else stamp,
                "updated_at": stamp,
                "labels": [],
            }
        )
    fake.version += 1
    return open_tasks


def check_clean(result: Plan, observed: Observed, expect: int) -> None:
    """The pass planned every task and saw every repository (else its figures mean nothing)."""
    if len(result.tasks) != expect:
        raise SystemExit(f"the GitHub pass planned {len(result.tasks)} tasks, not {expect}")
    problems = [
        f"{lane.name}: {lane.error}" for lane in observed.lanes.values() if not lane.reachable
    ]
    for lane in observed.lanes.values():
        problems += [f"{name}: {view.error}" for name, view in lane.repos.items() if view.error]
        problems += [
            f"{c.name} {c.subject}: {c.detail}"
            for c in lane.preflight
            if not c.ok and not c.advisory  # advisory checks never hold dispatch back
        ]
    if problems:
        raise SystemExit(f"the GitHub pass did not observe cleanly: {problems[:5]}")


def github_pass(
    engine: Engine, fakes: list[FakeGitHub], rsps: responses.RequestsMock, expect: int
) -> ForgePass:
    """What `reconciler plan` does (observe + plan, read-only), counted at the fake GitHub."""
    before = [(len(f.requests), f.points, f.not_modified) for f in fakes]
    t0 = time.perf_counter()
    desired = engine.load()
    with engine.reading() as store:
        result, observed = engine.observe_and_plan(desired, store)
    seconds = time.perf_counter() - t0
    refused = unserved(rsps)
    if refused:
        raise SystemExit(f"requests the fake GitHub does not serve: {refused[:5]}")
    check_clean(result, observed, expect)
    new = [r for f, (n, _, _) in zip(fakes, before, strict=True) for r in f.requests[n:]]
    return ForgePass(
        requests=len(new),
        points=sum(f.points - p for f, (_, p, _) in zip(fakes, before, strict=True)),
        not_modified=sum(f.not_modified - m for f, (_, _, m) in zip(fakes, before, strict=True)),
        feedback=sum(1 for r in new if FEEDBACK_REQUEST.search(r.split("?", 1)[0])),
        rate_limit=sum(1 for r in new if r.endswith("/rate_limit")),
        seconds=seconds,
        kinds=Counter(kind for r in new if (kind := request_kind(r)) is not None),
    )


def request_kind(request: str) -> str | None:
    """Which of REQUEST_KINDS ``request`` ("METHOD /path?query") is, if any."""
    path = request.partition(" ")[2].split("?", 1)[0].split(" ", 1)[0]
    return next((kind for kind, pattern in REQUEST_KINDS if pattern.search(path)), None)


def push_to_one_pull(box: Sandbox, fake: FakeGitHub, checkout: Path) -> None:
    """The lane pushes a new commit to one open task PR: a new head, a new list ETag."""
    pr = next(p for p in fake.pulls if p["state"] == "open")
    pr["head"]["sha"] = pushed_commit(box, checkout, pr["head"]["ref"], "answer to review")
    pr["updated_at"] = "2025-01-02T00:00:00Z"
    fake.version += 1


@contextlib.contextmanager
def virtual_time(clock: VirtualTime) -> Iterator[None]:
    """The GitHub forge reads the time and waits on ``clock`` (its ``TIME``, where the tests
    put theirs): a retry or a rate-limit wait shows as a sleep instead of taking time."""
    saved = forge_github.TIME
    forge_github.TIME = github_http.Time(clock=clock.clock, sleep=clock.sleep, wall=clock.wall)
    try:
        yield
    finally:
        forge_github.TIME = saved


def forget_pages() -> None:
    """Forget the ETag cache this process holds, as a new process would start: only the lane's
    cache file remains."""
    github_http.forget_process_memory()


def build(box: Sandbox, n: int) -> tuple[Engine, list[Repo]]:
    """``n`` tasks over ``GITHUB_REPOS`` repositories of one lane, each with a GitHub forge."""
    base = box.root / "github"
    token_file = box.home / ".config" / "reconciler" / "github-token"
    token_file.parent.mkdir(parents=True, exist_ok=True)
    token_file.write_text(GITHUB_TOKEN + "\n", encoding="utf-8")
    token_file.chmod(0o600)
    root = box.lane_root(base / "worktrees")
    repos: list[Repo] = []
    files = {"config.yaml": CONFIG_DOC, "agents.yaml": agent_doc("noop", ["/bin/true"])}
    for r, count in enumerate(spread(n, [1] * GITHUB_REPOS)):
        name = f"r{r}"
        tasks = [f"{name}-task-{i:03d}" for i in range(count)]
        repos.append(Repo(name, box.repo(base / "src" / name), f"{GITHUB_OWNER}/{name}", tasks))
        for i, task in enumerate(tasks):
            files[f"tasks/{task}.yaml"] = task_doc(task, "gh", name, "noop", i)
    files["lanes.yaml"] = github_lane_doc("gh", root, repos, token_file, box.home)
    control = box.control(base / "control", files)
    return Engine(Context(control=str(control), state_dir=base / "state")), repos


def run(box: Sandbox, table: Table, options: Options) -> None:
    """A first pass with empty ETag caches, then the same pass with nothing changed, in a new
    process, and after one push."""
    n = options.github_tasks
    log(f"{n} tasks over {GITHUB_REPOS} repositories on a fake GitHub")
    engine, repos = build(box, n)
    clock = VirtualTime()
    with virtual_time(clock), responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        fakes = [FakeGitHub(rsps, repo.full_name, GITHUB_TOKEN) for repo in repos]
        open_prs = sum(seed_pulls(box, fake, repo) for fake, repo in zip(fakes, repos, strict=True))
        first = github_pass(engine, fakes, rsps, n)
        second = github_pass(engine, fakes, rsps, n)
        push_to_one_pull(box, fakes[0], repos[0].checkout)
        third = github_pass(engine, fakes, rsps, n)
        forget_pages()
        fresh = github_pass(engine, fakes, rsps, n)
    if clock.sleeps:  # a retry or a write waited: something failed or wrote
        raise SystemExit(f"the forge waited during read-only passes: {clock.sleeps[:5]}")
    if first.not_modified:
        raise SystemExit(f"the first pass got {first.not_modified} 304s with empty caches")
    rows(table, n, open_prs, [first, second, third, fresh])


def rows(table: Table, n: int, open_prs: int, passes: list[ForgePass]) -> None:
    first, second, third, fresh = passes
    label = f"{n} tasks / {GITHUB_REPOS} repos"
    setup = f"{GITHUB_PRS} PRs per repo, {open_prs} open task PRs"
    table.add(
        f"GitHub requests, first pass, {label}",
        f"{first.requests} requests, {first.points} points ({setup}; {first.seconds:.2f}s)",
    )
    table.add(
        "GitHub points, unchanged second pass",
        f"{second.points} ({second.requests} requests, {second.not_modified} of them 304; "
        f"{second.seconds:.2f}s)",
        "0",
        second.points == 0,
    )
    table.add(
        "GitHub points, unchanged pass in a new process",
        f"{fresh.points} ({fresh.requests} requests, {fresh.not_modified} of them 304: the ETags "
        "come from the lane's cache file, as for `apply` from cron)",
        "0",
        fresh.points == 0,
    )
    pages = -(-GITHUB_PRS // 100)
    table.add(
        "  GitHub points, next pass after one push to one PR",
        f"{third.points} (expected {pages + 3}: the {pages} PR list pages of its repository, "
        f"whether the PR merges, and checks and status of the new head commit; "
        f"{third.requests} requests, {third.feedback} of them about the pushed PR)",
    )
    per_repo = (second.requests - second.rate_limit) / GITHUB_REPOS
    table.measure("github unchanged requests per repo", per_repo)
    table.add(
        "  GitHub requests per repository, unchanged pass",
        f"{per_repo:g} ({GITHUB_OPEN_TASK_PRS + GITHUB_OPEN_OTHER_PRS} open PRs per repo; "
        + ", ".join(f"{kind} {n / GITHUB_REPOS:g}" for kind, n in sorted(second.kinds.items()))
        + f"; {second.feedback} about single PRs; plus {second.rate_limit} /rate_limit for the "
        "lane; the repository itself is read by pre-flight, every 30 s at most)",
        f"≤ {UNCHANGED_REQUESTS_TARGET}",
        per_repo <= UNCHANGED_REQUESTS_TARGET and second.feedback == 0,
    )
    table.add(
        "  GitHub requests per open task PR per pass",
        f"{first.feedback / open_prs:.2f} first, {second.feedback / open_prs:.2f} unchanged, "
        f"{third.feedback} after one push ({open_prs} open task PRs)",
    )
