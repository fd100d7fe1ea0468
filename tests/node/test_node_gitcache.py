"""Refs and worktree lists kept between observations: the same answer git gives, after any
change git can make, and no git process while nothing changed."""

from __future__ import annotations

import os
import random
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.node import git as gitops
from reconciler.node import gitcache
from tests.node.node_support import Env
from tests.support.git import commit, git
from tests.support.waiting import wait_for

PATTERNS = ["refs/heads/agent/*", "refs/remotes/origin/agent/*"]
SETTLED_NS = 20_000_000  # the tests' racy window: short, so that their changes settle soon


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    gitcache.forget()
    monkeypatch.setattr(gitcache, "RACY_NS", SETTLED_NS)
    monkeypatch.setattr(gitcache, "BUSY_SECONDS", 0.0)
    yield
    gitcache.forget()


def settled(checkout: str, patterns: list[str] = PATTERNS) -> None:
    """Wait until no file the digests look at changed within the racy window."""
    wait_for(
        lambda: (
            gitcache._refs_digest(checkout, patterns) is not None
            and gitcache._worktrees_digest(checkout) is not None
        ),
        "the repository's files to be older than the racy window",
    )


class GitCount:
    """The git processes the node starts, counted."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = gitops.run

        def counted(*args: object, **kwargs: object) -> object:
            self.calls += 1
            return real(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(gitops, "run", counted)

    def since(self, action: Callable[[], object]) -> int:
        before = self.calls
        action()
        return self.calls - before


def observe(checkout: str) -> None:
    gitcache.worktrees(checkout)
    gitcache.refs(checkout, PATTERNS)


def same_as_git(checkout: str) -> None:
    assert gitcache.refs(checkout, PATTERNS) == gitops.refs(checkout, PATTERNS)
    assert gitcache.worktrees(checkout) == gitops.list_worktrees(checkout)


def test_an_unchanged_repository_is_observed_without_git(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkout = str(env.checkout)
    git(checkout, "branch", "agent/one")
    git(checkout, "worktree", "add", "-q", str(env.tmp / "wt-one"), "agent/one")
    count = GitCount(monkeypatch)
    settled(checkout)
    assert count.since(lambda: observe(checkout)) == 2
    assert count.since(lambda: observe(checkout)) == 0
    commit(env.tmp / "wt-one", "x.txt", "x\n")  # the branch moves: both answers change
    settled(checkout)
    assert count.since(lambda: observe(checkout)) == 2
    assert count.since(lambda: observe(checkout)) == 0


def test_a_change_younger_than_the_racy_window_is_always_asked(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Within the file system's timestamp granularity a second write can leave a file's
    identity as the first one left it: while a change is that young, git answers."""
    checkout = str(env.checkout)
    monkeypatch.setattr(gitcache, "RACY_NS", 3600 * 10**9)  # every change is young
    git(checkout, "branch", "agent/one")
    count = GitCount(monkeypatch)
    assert count.since(lambda: observe(checkout)) == 2
    assert count.since(lambda: observe(checkout)) == 2


def test_a_repository_that_keeps_changing_is_asked_without_a_digest(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once a digest saw a change too young to vouch for, git answers alone for a while: a
    busy repository would pay the digest on top of git every pass."""
    checkout = str(env.checkout)
    monkeypatch.setattr(gitcache, "RACY_NS", 3600 * 10**9)  # every change is young
    monkeypatch.setattr(gitcache, "BUSY_SECONDS", 3600.0)
    digests: list[str] = []
    real = gitcache._refs_digest

    def counted(*args: Any) -> Any:
        digests.append("refs")
        return real(*args)

    monkeypatch.setattr(gitcache, "_refs_digest", counted)
    count = GitCount(monkeypatch)
    for _ in range(3):
        assert count.since(lambda: gitcache.refs(checkout, PATTERNS)) == 1
    assert digests == ["refs"]  # the first call's, which found the change young


def test_a_bare_repository_s_refs_are_kept(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    origin = str(env.origin)
    count = GitCount(monkeypatch)
    settled(origin, ["refs/heads/"])
    first = gitcache.refs(origin, ["refs/heads/"])
    assert count.since(lambda: gitcache.refs(origin, ["refs/heads/"])) == 0
    git(env.checkout, "push", "-q", "origin", "main:refs/heads/agent/pushed")
    assert gitcache.refs(origin, ["refs/heads/"]) == {
        **first,
        "refs/heads/agent/pushed": first["refs/heads/main"],
    }


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_change_git_makes_is_seen(
    env: Env, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A seeded random walk over what agents, the reconciler and people do to a checkout;
    after each step the answers equal git's own, at once and once the change settled, when
    they are the kept ones."""
    checkout = str(env.checkout)
    rng = random.Random(seed)
    places = env.tmp / "places"
    places.mkdir()
    names = [f"agent/t{i}" for i in range(4)]

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
        loose = [p for p in (env.checkout / ".git" / "refs" / "heads" / "agent").glob("*")]
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
        same_as_git(checkout)
        settled(checkout)
        same_as_git(checkout)
        assert count.since(lambda: observe(checkout)) == 0  # the kept answers, checked above


def admin_of(tree: Path) -> str:
    return (tree / ".git").read_text().partition("gitdir: ")[2].strip()


def test_an_answer_git_gave_while_the_refs_changed_is_not_kept(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The digest taken before git ran vouches only for the state git would have read then: a
    branch made after it and before git answers is in the answer, not in that digest, so the
    answer is not kept under it."""
    checkout = str(env.checkout)
    settled(checkout)  # else the first digest is racy and nothing would be kept anyway
    real = gitops.refs

    def racing(*args: object, **kwargs: object) -> dict[str, str]:
        git(checkout, "branch", "-f", "agent/late", "main")  # after the first digest
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(gitops, "refs", racing)
    assert "refs/heads/agent/late" in gitcache.refs(checkout, PATTERNS)
    assert not gitcache._answers  # kept under the digest of a state without the branch: never
    monkeypatch.setattr(gitops, "refs", real)
    assert "refs/heads/agent/late" in gitcache.refs(checkout, PATTERNS)


def test_a_layout_the_digest_does_not_cover_is_always_asked(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A symlinked ref: git follows it, the digest would not see its target change."""
    checkout = str(env.checkout)
    heads = env.checkout / ".git" / "refs" / "heads"
    (heads / "agent").mkdir()
    target = env.tmp / "elsewhere"
    target.write_text(git(checkout, "rev-parse", "main") + "\n")
    (heads / "agent" / "linked").symlink_to(target)
    # Past the racy window, so that only the layout sends the question to git.
    wait_for(lambda: older_than_window(env.checkout / ".git"), "the repository to settle")
    count = GitCount(monkeypatch)
    assert count.since(lambda: gitcache.refs(checkout, PATTERNS)) == 1
    assert count.since(lambda: gitcache.refs(checkout, PATTERNS)) == 1


def older_than_window(root: Path) -> bool:
    """Whether every file and directory under ``root`` was last changed before the racy
    window began."""
    recent = time.time_ns() - SETTLED_NS
    for where, dirs, names in os.walk(root):
        for name in [".", *dirs, *names]:
            st = os.lstat(os.path.join(where, name))
            if max(st.st_mtime_ns, st.st_ctime_ns) >= recent:
                return False
    return True


def test_a_ref_deleted_while_the_digest_lists_its_directory_is_a_change(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkout = str(env.checkout)
    git(checkout, "branch", "agent/going")
    going = env.checkout / ".git" / "refs" / "heads" / "agent" / "going"
    real = os.scandir

    def listed_then_deleted(path: str) -> list[os.DirEntry[str]]:
        entries = list(real(path))
        if going.exists() and any(e.path == str(going) for e in entries):
            going.unlink()  # after the listing, before the digest looks at it
        return entries

    monkeypatch.setattr(os, "scandir", listed_then_deleted)
    assert gitcache._refs_digest(checkout, PATTERNS) is None  # racy: it vouches for nothing
    assert "refs/heads/agent/going" not in gitcache.refs(checkout, PATTERNS)


def test_refs_the_digest_cannot_read_are_asked_of_git(
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
