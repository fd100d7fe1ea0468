"""The worktree pool: a start on a realistic 30,000-file repository (about 300 MiB), the node's
prepare-workspace request with a fresh ``git worktree add`` against taking a pooled worktree,
side by side."""

from __future__ import annotations

import os
import random
import string
import time
from collections.abc import Iterator
from pathlib import Path

from bench.options import Options
from bench.sandbox import Sandbox
from bench.table import Table, log, median
from reconciler.node import git as gitops
from reconciler.node import pool
from reconciler.node.server import handle
from reconciler.protocol import (
    Batch,
    FillPoolRequest,
    FillPoolResult,
    LaneRef,
    PrepareWorkspaceRequest,
    RepoRef,
    TaskRef,
)

POOL_TARGET = 0.1  # design §8: dispatch on a 30,000-file repository with a warm pool


# A realistic repository's files (path, size): mostly small source files in nested packages,
# some larger generated or vendored ones, and a few assets; about 10 KiB a file on average, so
# 30,000 files are about 300 MiB.
SMALL = (200, 8 * 1024, 0.88)  # source: bytes from, to, share of the files
MEDIUM = (8 * 1024, 48 * 1024, 0.11)  # generated code, fixtures, lock files
LARGE = (128 * 1024, 640 * 1024)  # the rest: images, vendored bundles (half of them binary)
TOP = ("src", "lib", "pkg", "tests", "docs", "tools")  # about 1,500 directories in all
SOURCE = (".py", ".ts", ".go", ".md", ".json", ".yaml", ".c", ".h")


def _corpus(rng: random.Random) -> bytes:
    """About 1 MiB of source-like text that files are cut from (compresses as code does)."""
    words = [
        "".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 12))) for _ in range(4000)
    ]
    lines: list[str] = []
    size = 0
    while size < LARGE[1] + 4096:
        line = " " * 4 * rng.randint(0, 3) + " ".join(rng.choices(words, k=rng.randint(1, 12)))
        lines.append(line)
        size += len(line) + 1
    return "\n".join(lines).encode()


def realistic_files(count: int, seed: int = 16) -> Iterator[tuple[str, bytes]]:
    """``count`` files of a realistic repository, the same for the same arguments."""
    rng = random.Random(seed)
    corpus = _corpus(rng)
    for i in range(count):
        depth = rng.randint(1, 4)
        parts = [TOP[i % len(TOP)], *(f"m{rng.randint(0, 5)}" for _ in range(depth - 1))]
        roll = rng.random()
        if roll < SMALL[2] + MEDIUM[2]:
            low, high = SMALL[:2] if roll < SMALL[2] else MEDIUM[:2]
            size = rng.randint(low, high)
            offset = rng.randint(0, len(corpus) - size)
            body = b"// file %d\n" % i + corpus[offset : offset + size]
            name = f"f{i:05d}{SOURCE[i % len(SOURCE)]}"
        else:
            size = rng.randint(*LARGE)
            binary = i % 2 == 0
            body = rng.randbytes(size) if binary else corpus[:size] + b"%d\n" % i
            name = f"asset{i:05d}{'.bin' if binary else '.js'}"
        yield "/".join([*parts, name]), body


def big_checkout(box: Sandbox, base: Path, files: int) -> Path:
    """A clone of a bare ``origin`` holding ``files`` realistic files in one commit."""
    base.mkdir(parents=True)
    return box.imported_repo(base / "checkout", realistic_files(files))


def _prepare(lane: LaneRef, task: str) -> float:
    """Seconds the node takes to serve one prepare-workspace request for a new task."""
    request = PrepareWorkspaceRequest(
        lane=lane, task=TaskRef(name=task, repo="big", base="main", branch=f"agent/{task}")
    )
    t0 = time.perf_counter()
    [response] = handle(Batch(requests=[request]), env_tokens=False).responses
    took = time.perf_counter() - t0
    if not response.ok:
        raise SystemExit(f"prepare-workspace failed: {response.failure}")
    return took


def run(box: Sandbox, table: Table, options: Options) -> None:
    """The node's prepare-workspace request for a new task on a lane without a pool (a fresh
    ``git worktree add``) against one with a pool of one, median of ``reps`` each. The pool is
    filled (and, untimed, written out to disk) before each take, as a real pool is filled after
    a pass's starts, long before the next take. Each task's worktree is removed, untimed, after
    it is measured, so the disk holds at most three checkouts."""
    files, reps = options.pool_files, options.reps
    log(f"pool: a repository of {files} files")
    base = box.root / "pool"
    checkout = big_checkout(box, base, files)
    repo = RepoRef(name="big", checkout=str(checkout))
    plain = LaneRef(name="pool", workspace_root=str(base / "worktrees"), repos=[repo])
    warm = plain.model_copy(update={"repos": [repo.model_copy(update={"pool": 1})]})
    fresh: list[float] = []
    pooled: list[float] = []
    fills: list[float] = []
    for rep in range(reps):
        os.sync()
        fresh.append(_prepare(plain, f"fresh{rep}"))
        t0 = time.perf_counter()
        [filled] = handle(
            Batch(requests=[FillPoolRequest(lane=warm, bases={"big": ["main"]})]),
            env_tokens=False,
        ).responses
        fills.append(time.perf_counter() - t0)
        if not filled.ok or FillPoolResult.model_validate(filled.result).created != {"big": 1}:
            raise SystemExit(f"the pool was not filled: {filled.failure or filled.result}")
        os.sync()
        pooled.append(_prepare(warm, f"pooled{rep}"))
        if pool.ready(str(base / "worktrees"), "big").get("main"):
            raise SystemExit("the pooled start did not take the pooled worktree")
        for task in (f"fresh{rep}", f"pooled{rep}"):
            gitops.remove_workspace(str(checkout), str(base / "worktrees" / "big" / task))
    ratio = median(pooled) / median(fresh)
    table.add(
        f"start on a {files}-file repository, pooled / fresh worktree",
        f"{ratio:.2f} ({median(pooled):.3f}s / {median(fresh):.3f}s; median of {reps}; "
        f"a refill after the starts {median(fills):.1f}s)",
        f"≤ {POOL_TARGET:g}",
        ratio <= POOL_TARGET,
    )
