"""The worktree pool: a start on a 30,000-file repository, a fresh ``git worktree add`` against
taking a pooled worktree (branch switch, clean, move), side by side."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from bench.options import Options
from bench.sandbox import Sandbox
from bench.table import Table, log, median
from reconciler.node import git as gitops
from reconciler.node import pool

POOL_TARGET = 0.1  # design §8: dispatch on a 30,000-file repository with a warm pool


def big_checkout(box: Sandbox, base: Path, files: int) -> Path:
    """A clone of a bare ``origin`` holding ``files`` files in one commit."""
    seed = base / "seed"
    seed.mkdir(parents=True)
    for i in range(files):
        directory = seed / f"d{i // 500:03d}"
        directory.mkdir(exist_ok=True)
        (directory / f"f{i:05d}.txt").write_text(f"file {i}\n" * 20, encoding="utf-8")
    box.git("init", "-q", "-b", "main", cwd=seed)
    box.git("add", "-A", cwd=seed)
    # no background gc: it would repack the seed's objects while it is removed below
    box.git("-c", "gc.auto=0", "-c", "maintenance.auto=false", "commit", "-qm", "big", cwd=seed)
    origin = base / "origin.git"
    box.git("clone", "-q", "--bare", str(seed), str(origin), cwd=base)
    checkout = base / "checkout"
    box.git("clone", "-q", str(origin), str(checkout), cwd=base)
    shutil.rmtree(seed)
    return checkout


def run(box: Sandbox, table: Table, options: Options) -> None:
    """A fresh worktree against a pooled one, median of ``reps`` each. The pool is filled (and,
    untimed, written out to disk) before each take, as a real pool is filled after a pass's
    starts, long before the next take."""
    files, reps = options.pool_files, options.reps
    log(f"pool: a repository of {files} files")
    base = box.root / "pool"
    checkout = str(big_checkout(box, base, files))
    root = base / "worktrees"
    directory = pool.pool_dir(str(root), "big", "main")
    fresh: list[float] = []
    pooled: list[float] = []
    for rep in range(reps):
        t0 = time.perf_counter()
        gitops.prepare_workspace(
            checkout, str(root / "big" / f"fresh{rep}"), f"agent/fresh{rep}", "main", "origin"
        )
        fresh.append(time.perf_counter() - t0)
        pool.fill(checkout, directory, base="main", remote="origin", size=1, sparse=[])
        gitops.fetch_base(checkout, "origin", "main")  # as the node does before a take
        os.sync()
        t0 = time.perf_counter()
        taken = pool.take(
            checkout,
            directory,
            str(root / "big" / f"pooled{rep}"),
            branch=f"agent/pooled{rep}",
            base="main",
            remote="origin",
        )
        pooled.append(time.perf_counter() - t0)
        if taken is None:
            raise SystemExit("the pool had no worktree to hand out")
    ratio = median(pooled) / median(fresh)
    table.add(
        f"start on a {files}-file repository, pooled / fresh worktree",
        f"{ratio:.2f} ({median(pooled):.3f}s / {median(fresh):.3f}s; median of {reps})",
        f"≤ {POOL_TARGET:g}",
        ratio <= POOL_TARGET,
    )
