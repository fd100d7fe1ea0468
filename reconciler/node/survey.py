"""The node's side of the ``observe`` operation, a survey of the lane: one read-only snapshot of
its repositories and runs (the control plane's ``reconciler.observe`` merges it with state).

Per repository: worktrees under the workspace root, branch heads with the task prefix (local and
pushed) and local-forge pull requests, in a constant number of git calls; commits ahead are
counted only for the runs being inspected (their evaluation needs them). A repository that
cannot be read is reported with ``ok=False`` and an error sentence instead of failing the whole
snapshot. Must not change anything: no fetch, no prune, no lock, no process started but git.
"""

from __future__ import annotations

import os
import time
from collections.abc import Collection, Mapping

from reconciler.node import git as gitops
from reconciler.node import gitcache, pool
from reconciler.node.errors import NodeError
from reconciler.node.lane import Lane, check_ref_name, is_under, parse_run_key
from reconciler.node.procs import boot_id
from reconciler.node.pulls import pulls_for
from reconciler.node.runs import observe_runs, queued_runs
from reconciler.protocol import ObserveRequest, ObserveResult, Recheck, RepoObs, RepoRef


def survey(lane: Lane, req: ObserveRequest) -> ObserveResult:
    check_ref_name(req.branch_prefix, "branch prefix", allow_empty=True)
    inspect = {parse_run_key(key) for key in req.inspect}
    repos = {
        name: _observe_repo(lane, repo, req.branch_prefix, req.feedback, req.recheck)
        for name, repo in lane.repos.items()
    }
    # The queue before the runs: an entry taken between the two reads is then seen twice (the
    # planner counts the run), never missed; see reconciler.node.standby.
    queued = queued_runs(lane)
    return ObserveResult(
        repos=repos,
        standby=queued,
        runs=observe_runs(lane, inspect, req.settled),
        boot_id=boot_id(),
        runs_root=lane.runs_root(),
        now=time.time(),
    )


def _observe_repo(
    lane: Lane,
    repo: RepoRef,
    prefix: str,
    feedback: Mapping[str, Collection[str]],
    recheck: Collection[Recheck] = (),
) -> RepoObs:
    checkout = lane.checkouts[repo.name]
    if not gitops.is_repo(checkout):
        what = "does not exist" if not os.path.exists(checkout) else "is not a git repository"
        return RepoObs(
            name=repo.name,
            ok=False,
            error=f"the checkout {checkout} of repo {repo.name} {what}; clone it there or fix "
            "the lane's checkout path",
        )
    try:
        return _read_repo(lane, repo, checkout, prefix, feedback, recheck=recheck)
    except NodeError as exc:
        return RepoObs(name=repo.name, ok=False, error=str(exc))


def _read_repo(
    lane: Lane,
    repo: RepoRef,
    checkout: str,
    prefix: str,
    feedback: Mapping[str, Collection[str]],
    *,
    recheck: Collection[Recheck],
) -> RepoObs:
    repo_root = os.path.join(lane.root, repo.name)
    worktrees = [wt for wt in gitcache.worktrees(checkout) if is_under(repo_root, wt.path)]
    local_prefix = "refs/heads/"
    remote_prefix = f"refs/remotes/{repo.remote}/"
    patterns = [f"{local_prefix}{prefix}*", f"{remote_prefix}{prefix}*"]
    heads = gitcache.refs(checkout, patterns)
    branches = {
        ref.removeprefix(local_prefix): sha
        for ref, sha in heads.items()
        if ref.startswith(local_prefix + prefix)
    }
    remote_branches = {
        ref.removeprefix(remote_prefix): sha
        for ref, sha in heads.items()
        if ref.startswith(remote_prefix + prefix)
    }
    forge = pulls_for(lane, repo.name)
    prs = forge.list_pulls() if forge is not None else None
    rate = None
    if forge is not None and prs is not None:
        named = [
            r for r in recheck if repo.github_repo and r.repo.lower() == repo.github_repo.lower()
        ]
        numbers = {n for r in named for n in r.numbers}
        shas = {s for r in named for s in r.shas}
        # CI and review verdicts drive the feedback loop, which only acts on them for the
        # reconciler's own open PRs whose head is the commit it pushed last (the tracking ref
        # its push moved) and for the kinds the task's `pr.iterateOn` names. A PR a webhook
        # named has them read anew, however recently they were read.
        prs = [
            forge.with_feedback(
                p,
                feedback.get(p.head, ("checks", "reviews")),
                fresh=p.number in numbers or p.head_sha in shas,
            )
            if p.task and p.state == "open" and p.head_sha == remote_branches.get(p.head)
            else p
            for p in prs
        ]
        forge.flush()
        probe = forge.capabilities.access
        rate = probe.known_rate() if probe is not None else None
    return RepoObs(
        name=repo.name,
        ok=True,
        worktrees=worktrees,
        branches=branches,
        remote_branches=remote_branches,
        prs=prs,
        pool=pool.ready(lane.root, repo.name) if repo.pool > 0 else {},
        rate_limit=rate,
    )
