"""The control repo as a source of files: a working copy, a plain directory, or a mirror.

A working copy (a directory with ``.git``) is read in place. A bare repository or a URL is
mirrored into ``<state>/control.git`` (cloned once, ``git fetch --prune`` on every refresh) and
read at the remote's default branch. A directory that is no git repository at all can only be
read as it is on disk (``validate``).

Git runs through argv lists, never a shell. Nothing here writes to the operator's repository;
the only thing written is the mirror under the state directory. Paths that would leave the
repository read as missing. A URL may carry credentials (``https://bot:TOKEN@host/x.git``): git
is given it as it is, but no message built here (``ControlError``, ``fetch_error``,
``location``) shows them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Literal

from reconciler import gitfiles
from reconciler.gitenv import git_env
from reconciler.manifests.loader import MAX_FILE_SIZE, SourceFile, safe_relpath
from reconciler.redact import redact

Kind = Literal["worktree", "directory", "mirror", "incoming"]
# What git tells a pre-receive hook about the objects of a push it has not accepted yet.
QUARANTINE_VARS = (
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_QUARANTINE_PATH",
)

MANIFESTS_DIR = "manifests"
MANIFEST_SUFFIXES = (".yaml", ".yml")
WORKTREE_REVISION = "worktree"
"""The revision of files read from disk rather than from a commit."""

_LOCAL_TIMEOUT = 120.0
_NETWORK_TIMEOUT = 600.0


class ControlError(Exception):
    """The control repo cannot be opened or read; the message is a sentence for users, with any
    credentials (of the control URL, or quoted by git) masked."""

    def __init__(self, message: str) -> None:
        super().__init__(redact(message))


def git_blob_id(data: bytes) -> str:
    """The id git gives a blob with this content."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def _looks_like_url(spec: str) -> bool:
    return "://" in spec or spec.startswith("file:") or bool(re.match(r"^[\w.-]+@[\w.-]+:", spec))


COMMIT_ID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")  # a full SHA-1 or SHA-256 object id
TREES_KEPT = 64


class ControlRepo:
    """Files of the control repo at a commit (or on disk), listed with their git blob ids."""

    def __init__(self, root: Path, kind: Kind, source: str) -> None:
        self.root = root
        self.kind: Kind = kind
        self.source = source
        self._listing: tuple[str, dict[str, SourceFile]] = ("", {})
        self.fetch_error: str | None = None
        self._disk: dict[str, bytes] = {}
        self._env: dict[str, str] = {}  # git's location variables this repo keeps
        self._trees: dict[str, str] = {}  # commit id → its root tree (never changes)

    # ------------------------------------------------------------------------------- opening

    @classmethod
    def open(cls, spec: str | Path, state_dir: Path, *, fetch: bool = True) -> ControlRepo:
        """Open ``spec``: a working copy, a bare repository, a URL, or a plain directory.

        Bare repositories and URLs are mirrored under ``state_dir`` (and fetched unless
        ``fetch`` is false and a mirror already exists).
        """
        text = str(spec)
        path = Path(text).expanduser()
        if isinstance(spec, Path) or path.exists() or not _looks_like_url(text):
            path = path.resolve()
            if not path.exists() and cls._mirrored(str(path), state_dir):
                # a bare repository that went away (an unmounted disk, a renamed host path):
                # its mirror is the last good revision, and fetch_error says why it is stale
                return cls._mirror(str(path), state_dir, fetch=fetch)
            if not path.is_dir():
                what = "is not a directory" if path.exists() else "does not exist"
                raise ControlError(f"control repository {text!r} {what}")
            if (path / ".git").exists():
                repo = cls(path, "worktree", text)
                repo._git("rev-parse", "--git-dir")
                return repo
            if _is_bare(path):
                return cls._mirror(str(path), state_dir, fetch=fetch)
            return cls(path, "directory", text)
        return cls._mirror(text, state_dir, fetch=fetch)

    @classmethod
    def incoming(cls, bare: Path) -> ControlRepo:
        """A bare repository as its pre-receive hook sees it: the pushed objects git holds in
        quarantine until the hook accepts them stay readable (every other reading drops git's
        location variables). Read in place, never mirrored."""
        if not _is_bare(bare):
            raise ControlError(f"{bare} is not a bare git repository")
        repo = cls(bare, "incoming", str(bare))
        repo._env = {k: os.environ[k] for k in QUARANTINE_VARS if k in os.environ}
        return repo

    def followed_ref(self) -> str:
        """The branch the reconciler reads (HEAD's), e.g. ``refs/heads/main``."""
        return self._git("symbolic-ref", "--quiet", "HEAD", check=False).strip()

    @classmethod
    def _mirrored(cls, url: str, state_dir: Path) -> bool:
        mirror = cls(state_dir / "control.git", "mirror", url)
        if not mirror.root.is_dir():
            return False
        return mirror._git("config", "--get", "remote.origin.url", check=False).strip() == url

    @classmethod
    def _mirror(cls, url: str, state_dir: Path, *, fetch: bool) -> ControlRepo:
        mirror = state_dir / "control.git"
        repo = cls(mirror, "mirror", url)
        if mirror.is_dir():
            current = repo._git("config", "--get", "remote.origin.url", check=False).strip()
            if current == url:
                if fetch:
                    repo.refresh()
                return repo
            shutil.rmtree(mirror)  # another control repo than last time: start over
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        partial = state_dir / f".control.git.{os.getpid()}.tmp"
        shutil.rmtree(partial, ignore_errors=True)
        try:
            _run(
                ["git", "clone", "--bare", "--quiet", "--", url, str(partial)],
                timeout=_NETWORK_TIMEOUT,
                what=f"cloning the control repository {url}",
            )
            _run(
                [
                    "git",
                    f"--git-dir={partial}",
                    "config",
                    "remote.origin.fetch",
                    "+refs/heads/*:refs/heads/*",
                ],
                what="configuring the control repository mirror",
            )
            try:
                partial.rename(mirror)
            except OSError:
                if not mirror.is_dir():  # not a concurrent clone that got there first
                    raise
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        return repo

    def refresh(self) -> None:
        """Fetch the remote (mirrors only; a working copy is always read as it is).

        A remote that cannot be fetched leaves the mirror as it was: the last good revision
        keeps being reconciled, and ``fetch_error`` says why it may be stale."""
        if self.kind == "mirror":
            try:
                self._git("fetch", "--prune", "--quiet", "origin", timeout=_NETWORK_TIMEOUT)
            except ControlError as exc:
                self.fetch_error = str(exc)
            else:
                self.fetch_error = None

    @property
    def location(self) -> str:
        """What the operator named, for messages (credentials in a URL masked)."""
        return redact(self.source)

    # ------------------------------------------------------------------------------- reading

    def revision(self) -> str:
        """The commit SHA of HEAD (a mirror's HEAD is the remote's default branch)."""
        if self.kind == "directory":
            return WORKTREE_REVISION
        if self.kind != "incoming":  # a push being received: its refs are git's to say
            try:
                return gitfiles.head_commit(str(self.root))  # every pass asks
            except (gitfiles.Unreadable, OSError):
                pass
        out = self._git("rev-parse", "--verify", "--quiet", "HEAD^{commit}", check=False).strip()
        if not COMMIT_ID.fullmatch(out):
            raise ControlError(f"control repository {self.source} has no commits yet")
        return out

    def tree(self, rev: str) -> str | None:
        """The root tree id of commit ``rev``: equal trees hold equal manifests and prompts.
        A commit id's tree is asked of git once (every pass of ``run`` asks)."""
        known = self._trees.get(rev)
        if known is not None:
            return known
        out = self._git("rev-parse", "--verify", "--quiet", f"{rev}^{{tree}}", check=False)
        tree = out.strip() or None
        if tree is not None and COMMIT_ID.fullmatch(rev):
            if len(self._trees) >= TREES_KEPT:
                self._trees.clear()
            self._trees[rev] = tree
        return tree

    def files(self, worktree: bool = False, *, rev: str | None = None) -> list[SourceFile]:
        """The manifest files (``manifests/**/*.yaml|yml``) at ``rev`` (default HEAD) or on disk."""
        if worktree or self.kind == "directory":
            return self._disk_files()
        rev = rev or self.revision()
        out = self._git_bytes("ls-tree", "-r", "-z", "--long", rev, "--", MANIFESTS_DIR)
        files: list[SourceFile] = []
        for record in out.split(b"\0"):
            if not record:
                continue
            meta, _, raw_path = record.partition(b"\t")
            mode, kind, blob, size = meta.split()
            path = raw_path.decode("utf-8", errors="surrogateescape")
            if (
                kind == b"blob"
                and mode in (b"100644", b"100755")
                and path.startswith(MANIFESTS_DIR + "/")
                and path.endswith(MANIFEST_SUFFIXES)
            ):
                files.append(SourceFile(path, blob.decode(), int(size)))
        self._listing = (rev, {f.path: f for f in files})
        return files

    def reader(
        self, worktree: bool = False, *, rev: str | None = None
    ) -> Callable[[str], bytes | None]:
        """A function reading control-repo files at ``rev`` (default HEAD) or from disk.

        The commit reader keeps one ``git cat-file --batch`` process, started on first use;
        call its ``close()`` when done (it is also closed when garbage collected).
        """
        if worktree or self.kind == "directory":
            return _DiskReader(self.root, self._disk)
        rev = rev or self.revision()
        listing = self._listing[1] if self._listing[0] == rev else {}
        return _GitReader(self._git_argv(), rev, listing, self._env)

    def _disk_files(self) -> list[SourceFile]:
        if self.kind == "mirror":
            raise ControlError(
                f"control repository {self.source} is mirrored and has no working tree; "
                "validate a local checkout of it instead"
            )
        top = self.root / MANIFESTS_DIR
        found: list[SourceFile] = []
        disk: dict[str, bytes] = {}
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames.sort()
            for name in sorted(filenames):
                if not name.endswith(MANIFEST_SUFFIXES):
                    continue
                full = os.path.join(dirpath, name)
                if os.path.islink(full):
                    continue  # a commit lists symlinks as links, not files: do the same
                rel = Path(full).relative_to(self.root).as_posix()
                try:
                    size = os.path.getsize(full)
                    if size > MAX_FILE_SIZE:
                        found.append(SourceFile(rel, "", size))
                        continue
                    with open(full, "rb") as f:
                        data = f.read()
                except OSError:
                    continue  # vanished while we looked
                disk[rel] = data
                found.append(SourceFile(rel, git_blob_id(data), len(data)))
        self._disk = disk
        return sorted(found, key=lambda f: f.path)

    # ----------------------------------------------------------------------------------- git

    def _git_argv(self) -> list[str]:
        if self.kind in ("mirror", "incoming"):
            return ["git", f"--git-dir={self.root}"]
        return ["git", "-C", str(self.root)]

    def _git(self, *args: str, check: bool = True, timeout: float = _LOCAL_TIMEOUT) -> str:
        return self._git_bytes(*args, check=check, timeout=timeout).decode(
            "utf-8", errors="replace"
        )

    def _git_bytes(self, *args: str, check: bool = True, timeout: float = _LOCAL_TIMEOUT) -> bytes:
        return _run(
            [*self._git_argv(), *args],
            check=check,
            timeout=timeout,
            what=f"reading the control repository {self.source} (git {args[0]})",
            env=self._env,
        )


def _is_bare(path: Path) -> bool:
    if not ((path / "HEAD").is_file() and (path / "objects").is_dir()):
        return False
    out = _run(
        ["git", f"--git-dir={path}", "rev-parse", "--is-bare-repository"],
        check=False,
        what="inspecting the control repository",
    )
    return out.strip() == b"true"


def _run(
    argv: list[str],
    *,
    check: bool = True,
    timeout: float = _LOCAL_TIMEOUT,
    what: str,
    env: Mapping[str, str] | None = None,
) -> bytes:
    try:
        proc = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=git_env(env),
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise ControlError("git is not installed (or not on PATH)") from exc
    except subprocess.TimeoutExpired as exc:
        raise ControlError(f"{what}: git did not finish within {timeout:.0f}s") from exc
    if check and proc.returncode != 0:
        lines = proc.stderr.decode("utf-8", errors="replace").strip().splitlines()
        reason = lines[-1] if lines else f"git exited with status {proc.returncode}"
        raise ControlError(f"{what}: {reason.removeprefix('fatal: ')}")
    return proc.stdout


# --------------------------------------------------------------------------------- readers


class _DiskReader:
    """Reads files under ``root``; a path leaving it (also through a symlink) reads as None."""

    def __init__(self, root: Path, scanned: dict[str, bytes]) -> None:
        self._root = os.path.realpath(root)
        self._scanned = scanned

    def __call__(self, path: str) -> bytes | None:
        rel = safe_relpath(path)
        if rel is None or rel.split("/", 1)[0] == ".git":
            return None
        if rel in self._scanned:
            return self._scanned[rel]
        real = os.path.realpath(os.path.join(self._root, rel))
        if not real.startswith(self._root + os.sep):
            return None
        try:
            with open(real, "rb") as f:
                return f.read(MAX_FILE_SIZE + 1)
        except OSError:
            return None

    def close(self) -> None:
        """Nothing to release (symmetry with the commit reader)."""


class _GitReader:
    """Reads files at one commit through a single ``git cat-file --batch`` process.

    Files announced with :meth:`prefetch` are requested in batches (one write of many names, then
    the answers in order), which saves a pipe round trip per file.
    """

    _BATCH_FILES = 256  # names per write: well under a pipe buffer (64 KiB), so no deadlock
    _BATCH_BYTES = 8 << 20  # content held in memory at once

    def __init__(
        self,
        git: list[str],
        rev: str,
        listing: dict[str, SourceFile],
        env: Mapping[str, str] | None = None,
    ) -> None:
        self._git = git
        self._env = env
        self._rev = rev
        self._listing = listing
        self._plan: list[str] = []
        self._next = 0
        self._pending: set[str] = set()
        self._fetched: dict[str, bytes | None] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[[subprocess.Popen[bytes]], _GitReader] | None = None

    def prefetch(self, paths: list[str]) -> None:
        """These files will be read next, in this order."""
        self._plan = [p for p in paths if safe_relpath(p) == p]
        self._next = 0
        self._pending = set(self._plan)
        self._fetched.clear()

    def __call__(self, path: str) -> bytes | None:
        rel = safe_relpath(path)
        if rel is None:
            return None
        if rel in self._fetched:
            return self._fetched.pop(rel)
        if rel not in self._pending:
            return self._request([rel])[0]
        batch = [rel]
        self._pending.discard(rel)
        size = self._size(rel)
        while (
            self._next < len(self._plan)
            and len(batch) < self._BATCH_FILES
            and size < self._BATCH_BYTES
        ):
            nxt = self._plan[self._next]
            self._next += 1
            if nxt in self._pending:
                self._pending.discard(nxt)
                batch.append(nxt)
                size += self._size(nxt)
        contents = self._request(batch)
        self._fetched.update(zip(batch[1:], contents[1:], strict=True))
        return contents[0]

    def _size(self, rel: str) -> int:
        known = self._listing.get(rel)
        return known.size if known is not None else 0

    def _request(self, rels: list[str]) -> list[bytes | None]:
        names = []
        for rel in rels:
            known = self._listing.get(rel)
            names.append(known.blob if known is not None else f"{self._rev}:{rel}")
        stdin, stdout = self._pipes()
        out: list[bytes | None] = []
        try:
            stdin.write(b"".join(n.encode("utf-8", "surrogateescape") + b"\n" for n in names))
            stdin.flush()
            for _ in names:
                out.append(self._answer(stdout))
        except (OSError, ValueError) as exc:
            raise ControlError(f"reading the control repository failed: {exc}") from exc
        return out

    @staticmethod
    def _answer(stdout: IO[bytes]) -> bytes | None:
        header = stdout.readline()
        if not header:
            raise ValueError("git cat-file stopped unexpectedly")
        if header.endswith((b" missing\n", b" ambiguous\n")):
            return None
        parts = header.split()
        if len(parts) == 2:  # symlink / dangling / loop / notdir (--follow-symlinks)
            stdout.read(int(parts[1]) + 1)
            return None
        _, kind, size = parts
        content = stdout.read(int(size))
        stdout.read(1)
        return content if kind == b"blob" else None

    def _pipes(self) -> tuple[IO[bytes], IO[bytes]]:
        if self._proc is None:
            try:
                self._proc = subprocess.Popen(
                    [*self._git, "cat-file", "--batch", "--follow-symlinks"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    env=git_env(self._env),
                )
            except FileNotFoundError as exc:
                raise ControlError("git is not installed (or not on PATH)") from exc
            self._finalizer = weakref.finalize(self, _stop, self._proc)
        assert self._proc.stdin is not None
        assert self._proc.stdout is not None
        return self._proc.stdin, self._proc.stdout

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()
        self._proc = None
        self._finalizer = None


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.stdin is not None:
        with contextlib.suppress(OSError):
            proc.stdin.close()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()
