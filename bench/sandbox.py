"""The bench's throw-away directory: its own HOME, git identity and admin policy.

HOME points into it for this process (which runs the in-process lanes) and for every child, so
nothing the bench does reaches the real home. It knows every lane root it handed out and stops
the runs still alive under them before it is deleted.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from bench.runs import alive, read_fingerprint
from bench.table import log

GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@example.invalid",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@example.invalid",
}
# What this process must not inherit: another git repository, XDG or reconciler settings.
FOREIGN = (
    "XDG_CONFIG_HOME",
    "GIT_CONFIG_GLOBAL",
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "RECONCILER_CONTROL",
    "RECONCILER_STATE",
)
RECONCILER = [sys.executable, "-m", "reconciler"]  # the command line, as an operator runs it


class Sandbox:
    """A temp directory with its own HOME; knows every lane root so it can stop every run."""

    def __init__(self, keep: bool) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="reconciler-bench-")).resolve()
        self.home = self.root / "home"
        self.home.mkdir()
        self.keep = keep
        self.lane_roots: list[Path] = []
        # The bench's lanes run as whoever runs the bench (root, in CI): its own policy says so,
        # as an admin's would; its keys and known hosts live in the sandbox.
        policy = self.root / "policy.yaml"
        policy.write_text(
            "apiVersion: reconciler/v1\nkind: Policy\nspec:\n  reconcilerUser: true\n"
            f'  sshKeys: ["{self.root}/*"]\n  knownHosts: ["{self.root}/*"]\n',
            encoding="utf-8",
        )
        self.env = {
            **{k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "TERM", "TMPDIR")},
            "HOME": str(self.home),
            "GIT_CONFIG_NOSYSTEM": "1",
            "RECONCILER_POLICY": str(policy),
            **GIT_IDENTITY,
        }
        # This process runs the in-process lane: its git calls and `~` see the sandbox too.
        for key in FOREIGN:
            os.environ.pop(key, None)
        os.environ.update({k: v for k, v in self.env.items() if k not in ("PATH", "LANG")})

    def git(self, *args: str, cwd: Path) -> str:
        proc = subprocess.run(
            ["git", *args], cwd=cwd, env=self.env, check=True, capture_output=True, text=True
        )
        return proc.stdout

    def repo(self, path: Path) -> Path:
        """A clone on ``main`` (one commit) of its own bare ``origin``, as a lane checkout is."""
        seed = path.with_name(path.name + ".seed")
        seed.mkdir(parents=True)
        (seed / "README.md").write_text("# bench\n", encoding="utf-8")
        self.git("init", "-q", "-b", "main", cwd=seed)
        self.git("add", "-A", cwd=seed)
        self.git("commit", "-q", "-m", "Initial commit", cwd=seed)
        origin = path.with_name(path.name + ".git")
        self.git("clone", "-q", "--bare", str(seed), str(origin), cwd=seed.parent)
        self.git("clone", "-q", str(origin), str(path), cwd=seed.parent)
        shutil.rmtree(seed)
        return path

    def imported_repo(self, path: Path, files: Iterable[tuple[str, bytes]]) -> Path:
        """A clone at ``path`` of a bare ``origin`` whose ``main`` is one commit holding
        ``files`` (path, content), written by one ``git fast-import``: no working copy is
        checked out or hashed on the way, so tens of thousands of files take seconds."""
        origin = path.with_name(path.name + ".git")
        self.git("init", "-q", "--bare", "-b", "main", str(origin), cwd=path.parent)
        importer = subprocess.Popen(
            ["git", "fast-import", "--quiet", "--done"],
            cwd=origin,
            env=self.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
        )
        assert importer.stdin is not None
        with importer.stdin as stream:
            stream.write(
                b"commit refs/heads/main\n"
                b"committer bench <bench@example.invalid> 1700000000 +0000\n"
                b"data 10\nGenerated\n\n"
            )
            for name, content in files:
                stream.write(b"M 100644 inline %s\ndata %d\n" % (name.encode(), len(content)))
                stream.write(content)
                stream.write(b"\n")
            stream.write(b"\ndone\n")
        if importer.wait() != 0:
            raise RuntimeError(f"git fast-import failed in {origin}")
        self.git("clone", "-q", str(origin), str(path), cwd=path.parent)
        return path

    def control(self, path: Path, files: dict[str, str]) -> Path:
        """A control repo (working copy) holding ``files`` under manifests/, committed."""
        for rel, text in files.items():
            target = path / "manifests" / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
        self.git("init", "-q", "-b", "main", cwd=path)
        self.git("add", "-A", cwd=path)
        self.git("commit", "-q", "-m", "Desired tasks", cwd=path)
        return path

    def cli_env(self, control: Path | str, state: Path) -> dict[str, str]:
        """The environment of a ``reconciler`` command: ``control``, its state in ``state``."""
        return {**self.env, "RECONCILER_CONTROL": str(control), "RECONCILER_STATE": str(state)}

    @contextlib.contextmanager
    def reconciler_run(
        self, env: dict[str, str], interval: str, output: Path | None = None
    ) -> Iterator[subprocess.Popen[bytes]]:
        """``reconciler run`` in its own session (its log in ``output``, else nowhere); stopped
        with SIGTERM on the way out, and the runs it started killed."""
        with open(output or os.devnull, "wb") as sink:
            daemon = subprocess.Popen(
                [*RECONCILER, "run", "--interval", interval, "--log-format", "json"],
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            yield daemon
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(daemon.pid, signal.SIGTERM)
            daemon.wait(timeout=30)
            self.stop_all()

    def lane_root(self, path: Path) -> Path:
        """``path`` as a lane's workspace root, whose runs are stopped at the end."""
        self.lane_roots.append(path)
        return path

    def stop_all(self) -> int:
        """Kill every run supervisor (and its group) still alive under a lane root."""
        stopped = 0
        for root in self.lane_roots:
            for pid_json in root.glob(".runs/*/*/pid.json"):
                fp = read_fingerprint(pid_json)
                if fp is not None and alive(*fp):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(fp[0], signal.SIGKILL)
                        stopped += 1
        return stopped

    def close(self) -> None:
        stopped = self.stop_all()
        if stopped:
            log(f"stopped {stopped} leftover run(s)")
        if self.keep:
            log(f"kept the sandbox: {self.root}")
        else:
            shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def sandbox(keep: bool) -> Iterator[Sandbox]:
    box = Sandbox(keep)
    try:
        yield box
    finally:
        box.close()
