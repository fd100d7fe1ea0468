"""ControlRepo and load_desired against real git repositories in a temporary directory."""

from __future__ import annotations

import os
import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import reconciler.control.desired as desired_module
import reconciler.control.repo as repo_module
from reconciler.control import (
    WORKTREE_REVISION,
    ControlError,
    ControlRepo,
    git_blob_id,
    load_desired,
)
from reconciler.manifests.errors import ManifestErrors
from tests.support.git import commit_all, git

pytestmark = pytest.mark.slow

LANES = """\
apiVersion: reconciler/v1
kind: Lane
metadata: {name: web}
spec:
  repos: [{name: webapp, checkout: ~/src/webapp}]
---
apiVersion: reconciler/v1
kind: Agent
metadata: {name: claude}
spec: {kind: claude}
"""


def task(name: str, prompt: str = "prompt: fix it") -> str:
    return (
        f"apiVersion: reconciler/v1\nkind: Task\nmetadata: {{name: {name}}}\n"
        f"spec: {{lane: web, repo: webapp, agent: claude, {prompt}}}\n"
    )


def write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def commit(root: Path, message: str = "change") -> str:
    return commit_all(root, message)


@pytest.fixture
def work(tmp_path: Path) -> Path:
    root = tmp_path / "control"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    write(
        root,
        {
            "manifests/lanes.yaml": LANES,
            "manifests/tasks/a.yaml": task("a"),
            "manifests/tasks/b.yml": task("b", "promptFile: prompts/b.md"),
            "manifests/README.md": "not a manifest\n",
            "prompts/b.md": "Do b.\n",
            "elsewhere.yaml": "not: under manifests\n",
        },
    )
    commit(root, "initial")
    return root


def counting(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Count every file read through ControlRepo readers."""
    reads: Counter[str] = Counter()
    original = ControlRepo.reader

    def reader(
        self: ControlRepo, worktree: bool = False, *, rev: str | None = None
    ) -> Callable[[str], bytes | None]:
        inner = original(self, worktree, rev=rev)

        class Counting:
            def __call__(self, path: str) -> bytes | None:
                reads[path] += 1
                return inner(path)

            def prefetch(self, paths: list[str]) -> None:
                getattr(inner, "prefetch", lambda _: None)(paths)

            def close(self) -> None:
                getattr(inner, "close", lambda: None)()

        return Counting()

    monkeypatch.setattr(ControlRepo, "reader", reader)
    return reads


# ------------------------------------------------------------------------- working copy


def test_working_copy_files_and_revision(work: Path, tmp_path: Path) -> None:
    repo = ControlRepo.open(work, tmp_path / "state")
    assert repo.kind == "worktree"
    assert repo.revision() == git(work, "rev-parse", "HEAD")
    files = repo.files()
    assert [f.path for f in files] == [
        "manifests/lanes.yaml",
        "manifests/tasks/a.yaml",
        "manifests/tasks/b.yml",
    ]
    for f in files:
        data = (work / f.path).read_bytes()
        assert f.blob == git(work, "rev-parse", f"HEAD:{f.path}") == git_blob_id(data)
        assert f.size == len(data)
    assert not (tmp_path / "state").exists()  # a working copy needs no mirror


def test_load_desired_from_a_commit(work: Path) -> None:
    desired = load_desired(ControlRepo.open(work, work / ".state"), None)
    assert sorted(desired.tasks) == ["a", "b"]
    assert desired.tasks["b"].prompt == "Do b.\n"
    assert desired.revision == git(work, "rev-parse", "HEAD")


def test_uncommitted_edits_are_visible_only_in_worktree_mode(work: Path) -> None:
    write(
        work,
        {
            "manifests/tasks/a.yaml": task("a", "prompt: changed"),
            "manifests/tasks/new.yaml": task("new"),
            "prompts/b.md": "Do b, differently.\n",
        },
    )
    (work / "manifests/lanes.yaml").rename(work / "manifests/lanes.yml")
    repo = ControlRepo.open(work, work / ".state")
    committed = load_desired(repo, None)
    assert sorted(committed.tasks) == ["a", "b"]
    assert committed.tasks["a"].prompt == "fix it"
    assert committed.tasks["b"].prompt == "Do b.\n"
    on_disk = load_desired(repo, None, worktree=True)
    assert on_disk.revision == WORKTREE_REVISION
    assert sorted(on_disk.tasks) == ["a", "b", "new"]
    assert on_disk.tasks["a"].prompt == "changed"
    assert on_disk.tasks["b"].prompt == "Do b, differently.\n"
    assert repo.files(worktree=True)[0].path == "manifests/lanes.yml"
    assert {f.blob for f in repo.files(worktree=True)} == {
        git_blob_id(p.read_bytes()) for p in (work / "manifests").rglob("*.y*ml")
    }


def test_broken_commit_raises_manifest_errors(work: Path) -> None:
    write(work, {"manifests/tasks/a.yaml": task("a") + "  bogus: 1\n"})
    commit(work)
    with pytest.raises(ManifestErrors) as info:
        load_desired(ControlRepo.open(work, work / ".state"), None)
    assert [e.position for e in info.value.errors] == ["manifests/tasks/a.yaml:5:3"]


def test_readers_never_leave_the_repository(work: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.md"
    secret.write_text("secret\n")
    os.symlink(secret, work / "prompts/out.md")
    os.symlink("b.md", work / "prompts/in.md")
    commit(work)
    repo = ControlRepo.open(work, tmp_path / "state")
    for worktree in (False, True):
        repo.files(worktree)
        read = repo.reader(worktree)
        try:
            assert read("prompts/b.md") == b"Do b.\n"
            assert read("prompts/in.md") == b"Do b.\n"  # a link inside the repo is followed
            assert read("prompts/out.md") is None
            assert read("../secret.md") is None
            assert read(str(secret)) is None
            assert read("prompts") is None  # a directory is not a file
            assert read("prompts/nope.md") is None
            assert read("prompts/b.md/x") is None
        finally:
            read.close()  # type: ignore[attr-defined]
    assert repo.reader(True)(".git/config") is None


def test_unborn_repository_and_missing_paths(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    git(empty, "init", "-q")
    repo = ControlRepo.open(empty, tmp_path / "state")
    with pytest.raises(ControlError, match="has no commits yet"):
        repo.revision()
    assert load_desired(repo, None, worktree=True).tasks == {}
    with pytest.raises(ControlError, match="does not exist"):
        ControlRepo.open(tmp_path / "nope", tmp_path / "state")


def test_plain_directory_is_worktree_only(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    write(plain, {"manifests/lanes.yaml": LANES, "manifests/t.yaml": task("t")})
    repo = ControlRepo.open(str(plain), tmp_path / "state")
    assert repo.kind == "directory"
    assert repo.revision() == WORKTREE_REVISION
    assert list(load_desired(repo, None, worktree=True).tasks) == ["t"]
    with pytest.raises(ControlError, match="not a git repository"):
        load_desired(repo, None)


# ------------------------------------------------------------------------------- mirror


@pytest.fixture
def remote(work: Path, tmp_path: Path) -> Path:
    bare = tmp_path / "remote.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(bare)], check=True)
    git(work, "remote", "add", "origin", str(bare))
    return bare


def test_bare_repository_is_mirrored_and_refreshed(
    work: Path, remote: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    repo = ControlRepo.open(remote, state)
    assert repo.kind == "mirror"
    assert (state / "control.git" / "HEAD").is_file()
    first = git(work, "rev-parse", "HEAD")
    assert repo.revision() == first
    assert sorted(load_desired(repo, state).tasks) == ["a", "b"]

    write(work, {"manifests/tasks/c.yaml": task("c")})
    (work / "manifests/tasks/a.yaml").unlink()
    second = commit(work)
    git(work, "push", "-q", "origin", "main")
    assert repo.revision() == first  # not fetched yet
    repo.refresh()
    assert repo.revision() == second
    assert sorted(load_desired(repo, state).tasks) == ["b", "c"]

    again = ControlRepo.open(str(remote), state)  # reopening fetches, does not clone again
    assert again.revision() == second
    with pytest.raises(ControlError, match="no working tree"):
        load_desired(again, state, worktree=True)


def test_the_revision_is_read_from_the_files_as_git_would_answer(
    work: Path, remote: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every pass asks: no git process, whether HEAD's branch is loose or packed, HEAD is
    detached, or the repository is the bare mirror."""
    repo = ControlRepo.open(work, tmp_path / "state")
    mirror = ControlRepo.open(remote, tmp_path / "mirror-state")
    asked: list[list[str]] = []
    real = repo_module._run

    def counted(argv: list[str], **kwargs: Any) -> bytes:
        asked.append(argv)
        return real(argv, **kwargs)

    monkeypatch.setattr(repo_module, "_run", counted)
    assert repo.revision() == git(work, "rev-parse", "HEAD")
    first = git(work, "rev-parse", "HEAD")
    second = commit_all(work, "next")
    assert repo.revision() == second
    git(work, "pack-refs", "--all")
    assert repo.revision() == second
    git(work, "switch", "-q", "--detach", first)
    assert repo.revision() == first
    assert mirror.revision() == git(remote, "rev-parse", "HEAD")
    assert asked == []


def test_url_is_mirrored(remote: Path, tmp_path: Path) -> None:
    repo = ControlRepo.open(f"file://{remote}", tmp_path / "state")
    assert repo.kind == "mirror"
    assert sorted(load_desired(repo, None).tasks) == ["a", "b"]


def test_a_different_remote_replaces_the_mirror(work: Path, remote: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    ControlRepo.open(remote, state)
    other = tmp_path / "other.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(other)], check=True)
    write(work, {"manifests/tasks/z.yaml": task("z")})
    commit(work)
    git(work, "push", "-q", str(other), "main")
    repo = ControlRepo.open(other, state)
    assert "z" in load_desired(repo, None).tasks


def test_unreachable_remote_is_a_control_error(tmp_path: Path) -> None:
    with pytest.raises(ControlError, match="cloning the control repository"):
        ControlRepo.open("file:///nonexistent/repo.git", tmp_path / "state")


SECRET_URL = "https://bot:s3cr3t-Passw0rd@127.0.0.1:9/x.git"


def test_credentials_in_a_control_url_never_reach_a_message(remote: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    with pytest.raises(ControlError) as caught:
        ControlRepo.open(SECRET_URL, state)  # nothing listens on port 9: the clone fails
    assert "s3cr3t-Passw0rd" not in str(caught.value)
    assert "cloning the control repository https://***@127.0.0.1:9/x.git" in str(caught.value)
    # a mirror cloned while the host answered, whose host is now down
    ControlRepo.open(remote, state)
    git(state / "control.git", "config", "remote.origin.url", SECRET_URL)
    repo = ControlRepo.open(SECRET_URL, state)
    assert repo.fetch_error is not None
    assert "s3cr3t-Passw0rd" not in repo.fetch_error
    assert "https://***@127.0.0.1:9/x.git" in repo.fetch_error
    assert repo.location == "https://***@127.0.0.1:9/x.git"
    assert sorted(load_desired(repo, state).tasks) == ["a", "b"]  # the last good revision


# -------------------------------------------------------------------------------- cache


def test_disk_cache_avoids_reading_manifests_again(
    work: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"
    reads = counting(monkeypatch)
    repo = ControlRepo.open(work, state)
    first = load_desired(repo, state)
    cache = state / "cache" / "manifests.pickle"
    whole = state / "cache" / "desired.pickle"
    assert cache.is_file() and whole.is_file()
    assert reads["manifests/tasks/a.yaml"] == 1
    stamps = (cache.stat().st_mtime_ns, whole.stat().st_mtime_ns)

    for forget in (False, True):  # in-process memo, then a fresh process reading the files
        if forget:
            desired_module._memo.clear()
        reads.clear()
        desired = load_desired(repo, state)
        assert sorted(desired.tasks) == ["a", "b"] and desired.revision == first.revision
        assert not reads  # an unchanged tree: the whole desired state comes from the cache
        assert (cache.stat().st_mtime_ns, whole.stat().st_mtime_ns) == stamps  # not rewritten

    # A commit that changes no file (same tree) is the same desired state at a new revision.
    git(work, "commit", "-q", "--allow-empty", "-m", "nothing")
    again = load_desired(repo, state)
    assert again.revision == git(work, "rev-parse", "HEAD") != first.revision
    assert again.tasks == first.tasks and not reads

    # Without the whole-state cache, the per-file cache spares every manifest; prompts are read.
    whole.unlink()
    desired_module._memo.clear()
    assert sorted(load_desired(repo, state).tasks) == ["a", "b"]
    assert not [p for p in reads if p.startswith("manifests/")]
    assert reads["prompts/b.md"] == 1

    write(work, {"manifests/tasks/a.yaml": task("a", "prompt: new")})
    commit(work)
    reads.clear()
    assert load_desired(repo, state).tasks["a"].prompt == "new"
    assert [p for p in reads if p.startswith("manifests/")] == ["manifests/tasks/a.yaml"]

    # A prompt file is part of the tree too: changing only it is a new desired state.
    before = load_desired(repo, state).tasks["b"]
    write(work, {"prompts/b.md": "Do b differently.\n"})
    commit(work)
    after = load_desired(repo, state).tasks["b"]
    assert after.prompt == "Do b differently.\n" and after.generation != before.generation


def test_corrupt_cache_is_ignored_and_rebuilt(work: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    cache = state / "cache" / "manifests.pickle"
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"\x80\x05 this is not a pickle")
    repo = ControlRepo.open(work, state)
    assert sorted(load_desired(repo, state).tasks) == ["a", "b"]
    desired_module._memo.clear()
    assert desired_module._read_cache(cache)  # rebuilt with entries


def test_invalid_files_are_not_cached_but_valid_ones_are(work: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    write(work, {"manifests/tasks/bad.yaml": "a: [\n"})
    commit(work)
    repo = ControlRepo.open(work, state)
    with pytest.raises(ManifestErrors):
        load_desired(repo, state)
    desired_module._memo.clear()
    entries = desired_module._read_cache(state / "cache" / "manifests.pickle")
    blobs = {f.path: f.blob for f in repo.files()}
    assert blobs["manifests/tasks/a.yaml"] in entries
    assert blobs["manifests/tasks/bad.yaml"] not in entries


def test_an_unreachable_remote_keeps_the_last_fetched_revision(
    remote: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    repo = ControlRepo.open(str(remote), state)
    first = repo.revision()
    moved = tmp_path / "moved.git"
    remote.rename(moved)  # the remote is gone (network down, host renamed)
    repo.refresh()
    assert repo.fetch_error is not None and str(remote) in repo.fetch_error
    assert repo.revision() == first  # the last good revision is still there to reconcile
    assert sorted(load_desired(repo, state).tasks) == ["a", "b"]
    again = ControlRepo.open(str(remote), state)  # a new process: the same, not an error
    assert again.fetch_error is not None and again.revision() == first
    moved.rename(remote)
    again.refresh()
    assert again.fetch_error is None


def test_a_commits_tree_is_asked_of_git_once(
    work: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = ControlRepo.open(work, tmp_path / "state")
    head = repo.revision()
    asked: list[tuple[str, ...]] = []
    real = ControlRepo._git

    def spying(self: ControlRepo, *args: str, **kw: object) -> str:
        asked.append(args)
        return real(self, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(ControlRepo, "_git", spying)
    tree = git(work, "rev-parse", f"{head}^{{tree}}")
    assert repo.tree(head) == tree and repo.tree(head) == tree
    assert len(asked) == 1  # a commit's tree never changes
    assert repo.tree("HEAD") == tree and repo.tree("HEAD") == tree
    assert len(asked) == 3  # a name may move: asked each time
    assert repo.tree("0" * 40) is None and repo.tree("0" * 40) is None
    assert len(asked) == 5  # nothing found is not kept
