"""A real OpenSSH server on 127.0.0.1 and a throwaway login user, for the SSH lane tests.

Needs root (to create the user and run ``sshd``) and Debian's ``openssh-server``
(``/usr/sbin/sshd``): ``require_root_and_sshd()`` skips a test module with the reason otherwise.
Everything started here is stopped by its owner: ``Sshd.stop()`` ends the daemon by its pid,
``linux_users.remove_user()`` removes the user with its home and what it left running.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from reconciler.lanes import process
from reconciler.lanes.ssh import SshTransport
from reconciler.manifests.models import LaneSpec
from tests.support import linux_users
from tests.support.git import commit_manifests
from tests.support.linux_users import User
from tests.support.waiting import exited, wait_for

SSHD = "/usr/sbin/sshd"
LANE = "far"


def require_root_and_sshd() -> None:
    """Skip the calling test module unless it can create users and run sshd."""
    if os.geteuid() != 0:
        pytest.skip(
            "the ssh lane tests need root: they create a login user and run sshd "
            "(CI runs them as root)",
            allow_module_level=True,
        )
    if not os.access(SSHD, os.X_OK):
        pytest.skip(
            f"{SSHD} is missing: apt-get install openssh-server to run the ssh lane tests",
            allow_module_level=True,
        )
    for tool in ("ssh", "ssh-keygen", "ssh-keyscan", "setpriv", "useradd", "git"):
        if shutil.which(tool) is None:
            pytest.skip(
                f"{tool} is not installed; the ssh lane tests need it", allow_module_level=True
            )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def stable_port() -> int:
    """A free port below the kernel's ephemeral range, for a server that stops and starts
    again on the same port: no outgoing connection (another test's ssh) can take it meanwhile."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = secrets.SystemRandom()
    for _ in range(200):
        port = rng.randrange(10000, max(10001, low))
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    return free_port()


# ------------------------------------------------------------------------------ the login user


def create_user() -> User:
    """A fresh login user with a home, unlocked (``*``: no password works, keys do)."""
    return linux_users.create_user("rcssh")


def install_authorized_keys(user: User, *lines: str) -> Path:
    """``~/.ssh/authorized_keys`` of ``user`` holds exactly ``lines`` (modes sshd accepts)."""
    ssh_dir = user.home / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    os.chown(ssh_dir, user.uid, user.gid)
    path = ssh_dir / "authorized_keys"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    os.chmod(path, 0o600)
    os.chown(path, user.uid, user.gid)
    return path


# ------------------------------------------------------------------- a reconciler for the user


@dataclass(frozen=True)
class Installed:
    """How ``user`` runs this checkout's reconciler: the command for authorized_keys, and the
    Python it runs on (``sys.executable`` of the node, which starts run supervisors)."""

    command: str
    python: str

    def python_code(self, code: str) -> list[str]:
        return [self.python, "-c", "import sys; " + code]


def install_reconciler(user: User) -> Installed:
    """The reconciler every lane user can run (``linux_users.lane_installation``: this
    interpreter, or one made for them when this checkout or its venv is private), once ``user``
    has run it. Skips when the user cannot.

    The probe goes through ``/bin/sh -c`` as sshd's forced command does: ``setpriv`` exec'ing a
    script directly still opens its interpreter with root's capabilities, which hides an
    interpreter the user cannot reach."""
    installation = linux_users.lane_installation()
    probe = user.run(["/bin/sh", "-c", f"{installation.reconciler} --version"], check=False)
    if probe.returncode != 0:
        pytest.skip(
            f"user {user.name} cannot run {installation.reconciler} ({installation.how}): "
            f"{probe.stderr.strip()[-300:] or probe.returncode}"
        )
    return Installed(command=installation.reconciler, python=installation.python)


# -------------------------------------------------------------------------------- the server


def _descendants(pid: int) -> list[int]:
    """The processes under ``pid``, children first found first."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            parents.setdefault(ppid, []).append(int(entry))
    found, pending = [], [pid]
    while pending:
        for child in parents.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


@dataclass
class Sshd:
    """``/usr/sbin/sshd -D -e`` on 127.0.0.1:port, letting only ``user`` (and ``also``) in, by
    key."""

    directory: Path
    user: User
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    also: list[User] = field(default_factory=list)

    @property
    def host_key(self) -> Path:
        return self.directory / "host_ed25519"

    @property
    def log(self) -> Path:
        return self.directory / "sshd.log"

    def public_host_key(self) -> tuple[str, str]:
        kind, key = self.host_key.with_suffix(".pub").read_text().split()[:2]
        return kind, key

    def config(self) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        if not self.host_key.exists():
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.host_key)],
                check=True,
                capture_output=True,
            )
        cfg = self.directory / "sshd_config"
        cfg.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {self.host_key}",
                    f"PidFile {self.directory / 'sshd.pid'}",
                    "UsePAM no",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PubkeyAuthentication yes",
                    "AuthorizedKeysFile %h/.ssh/authorized_keys",
                    f"AllowUsers {' '.join(u.name for u in [self.user, *self.also])}",
                    "PermitRootLogin no",
                    "StrictModes yes",
                    "PermitUserEnvironment no",
                    "AllowAgentForwarding no",
                    "AllowTcpForwarding no",
                    "X11Forwarding no",
                    "PrintMotd no",
                    "MaxStartups 50",
                    "LogLevel VERBOSE",
                    "",
                ]
            ),
            encoding="utf-8",
        )
        return cfg

    def start(self) -> Sshd:
        cfg = self.config()
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(cfg)],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"sshd exited {self.proc.returncode}: {self.log_text()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
            ):
                return self
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"sshd did not listen on {self.port}: {self.log_text()}")

    def stop(self) -> None:
        """The host goes away: sshd and every connection it serves (a client's shared
        connection included) end."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        for pid in _descendants(proc.pid):  # each connection's own sshd (in its own session)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return "(no log)"


# ------------------------------------------------------------------------ the lane's project


make_remote_repo = linux_users.make_repo


def lane_manifest(name: str, spec: dict[str, Any]) -> str:
    return json.dumps(
        {"apiVersion": "reconciler/v1", "kind": "Lane", "metadata": {"name": name}, "spec": spec}
    )


# ------------------------------------------------------------------ the reconciler's side


@dataclass
class Side:
    """The reconciler's side of one test: its key, known hosts file and lane spec."""

    root: Path
    user: User
    sshd: Sshd
    installed: Installed

    @property
    def identity(self) -> Path:
        return self.root / "keys" / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.root / "keys" / "known_hosts"

    def spec(self, sshd: Sshd | None = None, **ssh: Any) -> dict[str, Any]:
        server = sshd or self.sshd
        home = self.user.home
        return {
            "host": f"ssh://{self.user.name}@127.0.0.1:{server.port}",
            "workspaceRoot": f"{home}/worktrees",
            "repos": [{"name": "app", "checkout": f"{home}/src/app"}],
            "ssh": {
                "identityFile": str(self.identity),
                "knownHosts": str(self.known_hosts),
                "command": self.installed.command,
                "connectTimeout": "5s",
                "timeout": "60s",
                **ssh,
            },
        }

    def lane_spec(self, sshd: Sshd | None = None, **ssh: Any) -> LaneSpec:
        return LaneSpec.model_validate(self.spec(sshd, **ssh))

    def trust(self, sshd: Sshd | None = None) -> None:
        """Put the server's real host key in the known hosts file (as an operator would)."""
        server = sshd or self.sshd
        kind, key = server.public_host_key()
        self.known_hosts.parent.mkdir(parents=True, exist_ok=True)
        with open(self.known_hosts, "a", encoding="utf-8") as f:
            f.write(f"[127.0.0.1]:{server.port} {kind} {key}\n")

    # ---------------------------------------------------------------- the command line

    def control(self, spec: dict[str, Any], *, task: bool = False) -> Path:
        """A control repo with the lane (and an agent and a task on it when ``task``)."""
        control = self.root / "control"
        docs = [lane_manifest(LANE, spec)]
        if task:
            docs.append(
                '{"apiVersion": "reconciler/v1", "kind": "Agent", "metadata": {"name": "sh"}, '
                '"spec": {"kind": "command", "command": ["/bin/sh", "-c", "echo DONE"]}}'
            )
            docs.append(
                '{"apiVersion": "reconciler/v1", "kind": "Task", "metadata": {"name": "t1"}, '
                f'"spec": {{"lane": "{LANE}", "repo": "app", "agent": "sh", "prompt": "hi"}}}}'
            )
        commit_manifests(control, docs)
        return control

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ["HOME"],
            "LANG": "C.UTF-8",
            "GIT_CONFIG_NOSYSTEM": "1",
            "RECONCILER_CONTROL": str(self.root / "control"),
            "RECONCILER_STATE": str(self.root / "state"),
            "RECONCILER_POLICY": os.environ["RECONCILER_POLICY"],  # tests/conftest.py
        }
        return subprocess.run(
            [sys.executable, "-m", "reconciler", *args],
            env=env,
            input=stdin,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def commit_manifests(self, docs: list[str], message: str = "manifests") -> str:
        """Write ``docs`` as the control repo's only manifests and commit them (the repo is made
        on first use); returns the revision."""
        return commit_manifests(self.root / "control", docs, message)


def manifest(kind: str, name: str, spec: dict[str, Any]) -> str:
    """One manifest document (JSON is YAML: no quoting surprises)."""
    return json.dumps(
        {"apiVersion": "reconciler/v1", "kind": kind, "metadata": {"name": name}, "spec": spec}
    )


# ------------------------------------------------------------ processes on the "remote" side


@dataclass(frozen=True)
class LaneProcess:
    """A process of the lane user that belongs to a run: a supervisor (``task`` None: it only
    carries the run marker) or an agent (with ``RECONCILER_TASK``)."""

    pid: int
    uid: int
    pgid: int
    run_dir: str
    task: str | None


def _proc_environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, process group) of ``pid``; None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return fields[0], int(fields[2])


def lane_processes(under: Path) -> list[LaneProcess]:
    """Live processes whose run marker (``RECONCILER_RUN_DIR``) lies under ``under`` (a lane's
    workspace root as this machine sees it), found in /proc as tests/integration/world.py does."""
    found = []
    prefix = str(under).rstrip("/") + "/"
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        env = _proc_environ(pid)
        run_dir = env.get("RECONCILER_RUN_DIR", "")
        if not run_dir.startswith(prefix):
            continue
        stat = _proc_stat(pid)
        if stat is None or stat[0] in ("Z", "X"):
            continue
        try:
            uid = os.stat(f"/proc/{pid}").st_uid
        except OSError:
            continue
        found.append(LaneProcess(pid, uid, stat[1], run_dir, env.get("RECONCILER_TASK")))
    return found


def lane_agents(under: Path) -> dict[str, list[LaneProcess]]:
    """The agents alive now under ``under``, by task."""
    agents: dict[str, list[LaneProcess]] = {}
    for proc in lane_processes(under):
        if proc.task:
            agents.setdefault(proc.task, []).append(proc)
    return agents


def kill_lane_processes(under: Path) -> None:
    """SIGKILL every supervisor and agent of the runs under ``under``, by pid (fixture cleanup)."""
    deadline = time.monotonic() + 10
    while (left := lane_processes(under)) and time.monotonic() < deadline:
        for proc in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, 9)
        time.sleep(0.05)


def running(pid: int) -> bool:
    """The process runs: a zombie, ended and not yet reaped, has no open files. For a process
    of another parent; a child of this one is ``exited`` once its pipes are closed too."""
    return os.path.exists(f"/proc/{pid}/fd/0")


def sessions_ended(transport: SshTransport) -> None:
    """Wait until the lane's idle sessions have noticed that their connection is gone."""
    pids = process.SESSIONS.idle(transport.argv())
    wait_for(lambda: all(exited(pid) for pid in pids), f"the sessions {pids} to end")
