"""Refs and worktree lists read from the repository's files: the same answer git gives, after
any change git (or a person) can make, with no git process, and each ref file read again only
once it changed."""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from reconciler import gitfiles
from reconciler.node import git as gitops
from reconciler.node import gitcache
from tests.node.node_support import SETTLED_NS, Env, GitCount, settled
from tests.support.git import commit, git

PATTERNS = ["refs/heads/agent/*", "refs/remotes/origin/agent/*"]
NAMES = [
    "refs/remotes/origin/main",
    "refs/heads/main",
    "refs/heads/agent/t0",
    "refs/heads/agent/deep",
]


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    gitfiles.forget()
    monkeypatch.setattr(gitfiles, "RACY_NS", SETTLED_NS)
    yield
    gitfiles.forget()


class Reads:
    """The files the reader opens, counted by name."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.paths: list[str] = []
        real = gitfiles._read

        def counted(path: str) -> bytes | None:
            self.paths.append(path)
            return real(path)

        monkeypatch.setattr(gitfiles, "_read", counted)

    def of(self, name: str, action: Callable[[], object]) -> int:
        before = len(self.paths)
        action()
        return sum(1 for p in self.paths[before:] if p.endswith(name))


def observe(checkout: str) -> None:
    gitcache.worktrees(checkout)
    gitcache.refs(checkout, PATTERNS)


def same_as_git(checkout: str) -> None:
    assert gitcache.refs(checkout, PATTERNS) == gitops.refs(checkout, PATTERNS)
    assert gitcache.refs(checkout, NAMES) == gitops.refs(checkout, NAMES)  # a start's
    assert gitcache.worktrees(checkout) == gitops.list_worktrees(checkout)


def test_a_repository_is_observed_without_git(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    checkout = str(env.checkout)
    git(checkout, "branch", "agent/one")
    git(checkout, "worktree", "add", "-q", str(env.tmp / "wt-one"), "agent/one")
    count = GitCount(monkeypatch)
    assert count.since(lambda: observe(checkout)) == 0
    commit(env.tmp / "wt-one", "x.txt", "x\n")  # the branch moves, a moment ago
    assert count.since(lambda: observe(checkout)) == 0
    assert gitcache.refs(checkout, PATTERNS)["refs/heads/agent/one"] == git(
        checkout, "rev-parse", "agent/one"
    )


def test_a_ref_file_is_read_again_only_once_it_changed(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkout = str(env.checkout)
    git(checkout, "branch", "agent/one")
    reads = Reads(monkeypatch)
    settled(checkout)
    assert reads.of("/agent/one", lambda: gitcache.refs(checkout, PATTERNS)) == 1
    assert reads.of("/agent/one", lambda: gitcache.refs(checkout, PATTERNS)) == 0
    moved = git(checkout, "commit-tree", "-m", "moved", "main^{tree}")
    git(checkout, "update-ref", "refs/heads/agent/one", moved)
    assert reads.of("/agent/one", lambda: gitcache.refs(checkout, PATTERNS)) == 1
    assert gitcache.refs(checkout, PATTERNS) == {"refs/heads/agent/one": moved}


def test_what_is_kept_is_what_exists(env: Env) -> None:
    """A long-lived reconciler sees branches come and go: what it keeps of a directory is its
    refs as last listed, and a ref looked up alone (a start's) is not kept at all."""
    checkout = str(env.checkout)
    for name in ("a", "b", "c"):
        git(checkout, "branch", f"agent/{name}")
    settled(checkout)
    gitcache.refs(checkout, PATTERNS)
    gitcache.refs(checkout, ["refs/heads/agent/a"])
    common = gitops.common_dir(checkout)
    assert len(gitfiles._dirs[(common, "refs/heads/agent")]) == 3
    git(checkout, "branch", "-D", "agent/a", "agent/b")
    assert set(gitcache.refs(checkout, PATTERNS)) == {"refs/heads/agent/c"}
    assert list(gitfiles._dirs) == [(common, "refs/heads/agent")]
    assert len(gitfiles._dirs[(common, "refs/heads/agent")]) == 1


def test_a_ref_file_younger_than_the_racy_window_is_read_every_time(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Within the file system's timestamp granularity a second write can leave a file's
    identity as the first one left it: what was read while a file was that young is not kept."""
    checkout = str(env.checkout)
    monkeypatch.setattr(gitfiles, "RACY_NS", 3600 * 10**9)  # every change is young
    git(checkout, "branch", "agent/one")
    reads = Reads(monkeypatch)
    for _ in range(3):
        assert reads.of("/agent/one", lambda: gitcache.refs(checkout, PATTERNS)) == 1


def test_a_bare_repository_s_refs_are_read(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    origin = str(env.origin)
    count = GitCount(monkeypatch)
    first = gitcache.refs(origin, ["refs/heads/"])
    git(env.checkout, "push", "-q", "origin", "main:refs/heads/agent/pushed")
    git(env.checkout, "push", "-q", "origin", "main:refs/heads/agent/deep/down")
    assert count.since(lambda: gitcache.refs(origin, ["refs/heads/"])) == 0
    assert gitcache.refs(origin, ["refs/heads/"]) == {
        **first,
        "refs/heads/agent/pushed": first["refs/heads/main"],
        "refs/heads/agent/deep/down": first["refs/heads/main"],
    }
    assert gitcache.refs(origin, ["refs/heads/"]) == gitops.refs(origin, ["refs/heads/"])


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_change_git_makes_is_seen(
    env: Env, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A seeded random walk over what agents, the reconciler and people do to a checkout;
    after each step the answers equal git's own, at once (the files just changed read anew,
    the others as kept) and once the change settled, and no git process answered."""
    checkout = str(env.checkout)
    rng = random.Random(seed)
    places = env.tmp / "places"
    places.mkdir()
    names = [*(f"agent/t{i}" for i in range(4)), "agent/deep/t4"]  # no pattern matches t4

    def trees() -> list[Path]:
        return [p for p in places.iterdir() if (p / ".git").exists()]

    def unused() -> list[str]:
        in_use = {wt.branch for wt in gitops.list_worktrees(checkout)}
        return [n for n in names if n not in in_use]

    def branch() -> None:
        if free := unused():
            git(checkout, "branch", "-f", rng.choice(free), rng.choice(["main", "HEAD~0"]))

    def move() -> None:  # a ref moved to another commit and maybe straight back (same content)
        name = f"refs/heads/{rng.choice(names)}"
        old = gitops.resolve(checkout, name)
        git(checkout, "update-ref", name, git(checkout, "commit-tree", "-m", "m", "main^{tree}"))
        if old is not None and rng.random() < 0.5:
            git(checkout, "update-ref", name, old)

    def by_hand() -> None:  # a loose ref rewritten in place: its directory stays as it was
        loose = [p for p in (env.checkout / ".git" / "refs" / "heads" / "agent").glob("t*")]
        if loose:
            sha = git(checkout, "commit-tree", "-m", f"{rng.random()}", "main^{tree}")
            with open(rng.choice(loose), "r+") as f:
                f.write(sha + "\n")

    def delete() -> None:
        if free := [n for n in unused() if gitops.resolve(checkout, f"refs/heads/{n}")]:
            git(checkout, "branch", "-D", rng.choice(free))

    def add() -> None:
        path = places / f"w{rng.randrange(1000)}"
        if path.exists():
            return
        if (free := unused()) and rng.random() < 0.7:
            git(checkout, "worktree", "add", "-q", "-B", rng.choice(free), str(path), "main")
        else:
            git(checkout, "worktree", "add", "-q", "--detach", str(path), "main")

    def work() -> None:
        if found := trees():
            commit(rng.choice(found), "f.txt", f"{rng.random()}\n")

    def detach() -> None:
        if found := trees():
            git(rng.choice(found), "switch", "-q", "--detach")

    def remove() -> None:
        if found := trees():
            git(checkout, "worktree", "remove", "-f", "-f", str(rng.choice(found)))

    def vanish() -> None:  # deleted by hand: git lists it as prunable
        if found := trees():
            shutil.rmtree(rng.choice(found))

    def prune() -> None:
        git(checkout, "worktree", "prune")

    def lock() -> None:
        if found := trees():
            tree = rng.choice(found)
            locked = any(
                wt.path == str(tree) and "locked" in os.listdir(admin_of(tree))
                for wt in gitops.list_worktrees(checkout)
            )
            git(checkout, "worktree", "unlock" if locked else "lock", str(tree))

    def pack() -> None:
        git(checkout, "pack-refs", "--all")

    def push() -> None:
        name = rng.choice(names)
        if gitops.resolve(checkout, f"refs/heads/{name}"):
            git(checkout, "push", "-q", "--force", "origin", f"{name}:{name}")

    def fetch() -> None:
        git(checkout, "fetch", "-q", "--prune", "origin")

    def main_head() -> None:
        if rng.random() < 0.5:
            git(checkout, "switch", "-q", "--detach", "main")
        else:
            git(checkout, "switch", "-q", "main")

    steps = [
        branch,
        move,
        by_hand,
        delete,
        add,
        work,
        detach,
        remove,
        vanish,
        prune,
        lock,
        pack,
        push,
    ]
    steps += [fetch, main_head]
    count = GitCount(monkeypatch)
    same_as_git(checkout)
    for _ in range(60):
        rng.choice(steps)()
        assert count.since(lambda: observe(checkout)) == 0
        same_as_git(checkout)
        settled(checkout)
        same_as_git(checkout)


def admin_of(tree: Path) -> str:
    return (tree / ".git").read_text().partition("gitdir: ")[2].strip()


def test_a_layout_the_reader_does_not_cover_is_asked_of_git(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A symlinked ref (git follows it) and a ref whose contents git would call broken."""
    checkout = str(env.checkout)
    heads = env.checkout / ".git" / "refs" / "heads"
    (heads / "agent").mkdir()
    target = env.tmp / "elsewhere"
    target.write_text(git(checkout, "rev-parse", "main") + "\n")
    (heads / "agent" / "linked").symlink_to(target)
    count = GitCount(monkeypatch)
    assert count.since(lambda: gitcache.refs(checkout, PATTERNS)) == 1
    assert gitcache.refs(checkout, PATTERNS) == gitops.refs(checkout, PATTERNS)
    (heads / "agent" / "linked").unlink()
    (heads / "agent" / "broken").write_text("not a commit\n")
    assert count.since(lambda: gitcache.refs(checkout, PATTERNS)) == 1
    assert gitcache.refs(checkout, PATTERNS) == gitops.refs(checkout, PATTERNS)


def test_a_ref_deleted_while_its_directory_is_listed_is_gone(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkout = str(env.checkout)
    git(checkout, "branch", "agent/going")
    git(checkout, "branch", "agent/staying")
    going = env.checkout / ".git" / "refs" / "heads" / "agent" / "going"
    real = os.scandir

    def listed_then_deleted(path: str) -> list[os.DirEntry[str]]:
        entries = list(real(path))
        if going.exists() and any(e.path == str(going) for e in entries):
            going.unlink()  # after the listing, before the reader looks at it
        return entries

    monkeypatch.setattr(os, "scandir", listed_then_deleted)
    assert set(gitcache.refs(checkout, PATTERNS)) == {"refs/heads/agent/staying"}


def test_refs_the_reader_cannot_read_are_asked_of_git(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkout = str(env.checkout)
    git(checkout, "branch", "agent/here")

    def unreadable(path: str) -> list[os.DirEntry[str]]:
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(os, "scandir", unreadable)
    count = GitCount(monkeypatch)
    assert count.since(lambda: gitcache.refs(checkout, PATTERNS)) == 1
    assert "refs/heads/agent/here" in gitcache.refs(checkout, PATTERNS)
