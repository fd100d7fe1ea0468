"""The SSH transport: a lane on another machine (``host: ssh://USER@HOST[:PORT]``), over OpenSSH.

A lane's batches go through a node session (``process``): one ``ssh`` invocation whose node
serves batch after batch over its stdin and stdout, started on the lane's first batch and ended
when the lanes are closed, the reconciler exits or the session idles (the node sees EOF and
exits; a reconciler killed outright closes the connection, with the same effect). On the host,
the lane user's ``authorized_keys`` line for the reconciler's key is
``restrict,command="reconciler node --pin …"`` (see ``authorized_keys_line``): sshd runs the
node whatever command the client asks for, the command line never carries any part of a
request, and every batch of a session is checked against the pin as a batch alone would be.

The client is pinned down so that nothing of this machine's ssh setup or environment changes what
happens or travels: no ssh_config (``-F none``, so no ``SendEnv``), only the lane's key (no agent),
no forwarding, no pty, no password prompts, and only the host keys in the lane's known hosts file
(``StrictHostKeyChecking=yes``): an unknown or changed host key makes the lane unavailable with
the fix (``reconciler keys scan LANE``), it is never trusted silently. A host that cannot be
reached, or does not answer within the lane's ``ssh.timeout``, makes the lane unavailable for the
pass: its tasks are ``unknown``, nothing is restarted or pruned because of it.

The key and known-hosts helpers below serve ``reconciler keys authorize|scan``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import os
import socket
import stat
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import ValidationError

from reconciler import gitfiles, safefile
from reconciler.lanes import LaneUnavailable, lane_ref, process
from reconciler.manifests.models import LaneSpec, SshSpec, SshTarget
from reconciler.protocol import Batch, BatchResult, lane_pin

SSH = "ssh"
SSH_KEYGEN = "ssh-keygen"
# How long a lane's shared connection outlives its last batch: passes of `run` and one-shot
# commands in a row reuse it instead of paying a connection and a login each time.
PERSIST_SECONDS = 60
SSH_KEYSCAN = "ssh-keyscan"
_TAIL = 500  # characters of a remote message quoted in a failure


class KeyProblem(Exception):
    """A key or known-hosts file cannot be made or read; the message says what to do."""


def _control_path(path: str) -> str:
    """A path on the reconciler's side: ``~`` is the reconciler's home."""
    return os.path.abspath(os.path.expanduser(path))


def _ssh_path(path: str) -> str:
    """A file name as an ``ssh -o``/``-i`` value: ssh expands ``%`` tokens and ``~`` in them."""
    if any(c in path for c in "\"'\n\r\t "):
        raise LaneUnavailable(
            f"the path {path!r} has quotes or blanks, which ssh cannot take as a file name; "
            "move the file to a plain path and set it in the lane's ssh block"
        )
    return path.replace("%", "%%")


_SOCKET_MAX = 104  # bytes of a Unix socket's path, with its end (Linux allows 107)
_SOCKET_SUFFIX = 17  # ssh adds a dot and 16 random characters while it makes the socket


def _private_dir(path: str) -> bool:
    """``path`` is a directory only this user can enter (made so when missing): a shared
    connection's socket lets whoever reaches it run batches as the lane user."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        try:
            os.makedirs(path, mode=0o700, exist_ok=True)
            st = os.lstat(path)
        except OSError:
            return False
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o077


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:_TAIL] if lines else ""


class SshTransport:
    """Carries batches to the node of an ``ssh://`` lane (see the module docstring)."""

    def __init__(self, name: str, spec: LaneSpec) -> None:
        target = spec.ssh_target
        if target is None:
            raise ValueError(f"lane {name} is not an ssh lane (host: {spec.host})")
        self.name = name
        self.target: SshTarget = target
        self.options: SshSpec = spec.ssh_options
        self.identity = _control_path(self.options.identity_file)
        self.known_hosts = _control_path(self.options.known_hosts)
        self.shared = True  # batches ride one shared connection (OpenSSH's ControlMaster)
        # the socket's path as last made, by the identity of the key and known-hosts files
        self._socket: tuple[tuple[tuple[int, ...], ...], str] | None = None

    def control_socket(self) -> str:
        """Where the lane's shared connection listens: a private directory beside the lane's key,
        and a name that changes with everything the connection was trusted with (the lane, its
        target, its key and its known host keys), so that a connection made for one lane, or
        before its key or host keys changed, is never used by another.

        Every batch asks; the files are read again only when one of them changed (its inode,
        size or times), or was changed within the last seconds, when a change within one
        timestamp tick could leave all of them as they were."""
        read_at = time.time_ns()
        found = [_stat(path) for path in (self.identity, self.known_hosts)]
        identities = tuple(gitfiles.identity(st) for st in found if st is not None)
        if self._socket is not None and self._socket[0] == identities:
            return self._socket[1]
        t = self.target
        trusted = [self.name, t.user, t.host, str(t.port), self.identity, self.options.command]
        for path in (self.identity, self.known_hosts):
            try:
                with open(path, "rb") as handle:
                    trusted.append(hashlib.sha256(handle.read()).hexdigest())
            except OSError:
                trusted.append("-")
        digest = hashlib.sha256("\0".join(trusted).encode()).hexdigest()[:24]
        beside = os.path.join(os.path.dirname(self.identity), "mux")
        if len(beside) + 1 + len(digest) + _SOCKET_SUFFIX <= _SOCKET_MAX:
            path = os.path.join(beside, digest)
        else:
            path = os.path.join(f"/tmp/reconciler-ssh-{os.geteuid()}", digest)
        # as gitfiles keeps what it reads: by identity, once older than the racy window
        if all(st is not None and gitfiles.settled(st, read_at) for st in found):
            self._socket = (identities, path)
        return path

    def argv(self, remote: Sequence[str] | None = None) -> list[str]:
        """The ``ssh`` command line: options, destination, and the remote command.

        The remote command is ``<ssh.command> node`` unless ``remote`` is given (tests use it to
        show that the forced command wins). Nothing of a request is ever part of it.
        """
        t, o = self.target, self.options
        return [
            SSH,
            "-F",
            "none",
            "-T",
            "-i",
            _ssh_path(self.identity),
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"UserKnownHostsFile={_ssh_path(self.known_hosts)}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "IdentityAgent=none",
            "-o",
            "ClearAllForwardings=yes",
            "-o",
            f"ConnectTimeout={max(1, math.ceil(o.connect_timeout))}",
            "-o",
            "ServerAliveInterval=15",
            *self._sharing(),
            "-p",
            str(t.port),
            "-l",
            t.user,
            "--",
            t.host,
            *(remote if remote is not None else [o.command, "node"]),
        ]

    def _sharing(self) -> list[str]:
        socket_path = self.control_socket()
        if not (self.shared and _private_dir(os.path.dirname(socket_path))):
            return ["-o", "ControlMaster=no", "-o", "ControlPath=none"]
        return [
            "-o",
            "ControlMaster=auto",
            "-o",
            f"ControlPath={_ssh_path(socket_path)}",
            "-o",
            f"ControlPersist={PERSIST_SECONDS}",
        ]

    def exchange(self, batch: Batch) -> BatchResult:
        if not os.path.isfile(self.identity):
            raise LaneUnavailable(
                f"lane {self.name}: the ssh key {self.identity} does not exist; run "
                f"`reconciler keys authorize {self.name}` to create it, and install the line it "
                f"prints in ~{self.target.user}/.ssh/authorized_keys on {self.target.host}"
            )
        timeout = self.options.timeout
        try:
            answer = process.SESSIONS.exchange(
                self.argv(), batch.model_dump_json().encode(), timeout=timeout, env=_client_env()
            )
        except process.BadAnswer as exc:
            raise LaneUnavailable(
                f"lane {self.name}: {self.target} answered {exc}; the connection was closed and "
                "nothing of its answer was used"
            ) from None
        except FileNotFoundError:
            raise LaneUnavailable(
                f"lane {self.name}: the ssh client is not installed on this machine; install "
                "it (apt-get install openssh-client)"
            ) from None
        except subprocess.TimeoutExpired:
            raise LaneUnavailable(
                f"lane {self.name}: {self.target} did not answer within {timeout:g}s; its "
                "tasks stay unknown until it does (raise ssh.timeout if batches are slow there)"
            ) from None
        except process.BatchRefused as exc:
            raise LaneUnavailable(
                f"lane {self.name}: the node on {self.target} said: {exc}"
            ) from None
        except process.SessionLost as lost:
            raise LaneUnavailable(f"lane {self.name}: {self._lost(lost)}") from None
        try:
            return BatchResult.model_validate_json(answer)
        except ValidationError as exc:
            raise LaneUnavailable(
                f"lane {self.name}: {self.target} answered something that is not a batch result "
                f"({exc.error_count()} problems); install the same reconciler version on both "
                "sides and check that the forced command is `reconciler node`"
            ) from None

    def close(self) -> None:
        """End this lane's idle node sessions (the shared connection persists a while)."""
        process.SESSIONS.close(self.argv())

    def _lost(self, lost: process.SessionLost) -> str:
        """Why the session ended without an answer: ssh gave up (255) or the node exited."""
        stderr = lost.stderr.decode("utf-8", "replace")
        if lost.returncode == 255 and not stderr.strip() and lost.delivered:
            return (
                f"the connection to {self.target} ended before the node answered the batch; "
                "its tasks stay unknown until a pass gets an answer"
            )
        if lost.returncode == 255:
            return self._ssh_failure(stderr)
        said = _last_line(stderr)
        hint = (
            f"; the node did not start: check that the forced command of the "
            f'authorized_keys line ("{self.options.command} node") runs for '
            f"{self.target.user} on {self.target.host}"
            if lost.returncode in (126, 127)
            else ""
        )
        return (
            f"the node on {self.target} exited {lost.returncode}"
            + (f": {said}" if said else "")
            + hint
        )

    def _ssh_failure(self, stderr: str) -> str:
        """One sentence with the fix, from what the ssh client said when it gave up (255)."""
        t = self.target
        where = t.known_hosts_name
        if "REMOTE HOST IDENTIFICATION HAS CHANGED" in stderr or "has changed" in stderr:
            return (
                f"the host key of {where} is not the one in {self.known_hosts}: the host was "
                "reinstalled, or something is between this machine and it. Nothing was trusted. "
                "Verify the new key with the host's administrator, then run "
                f"`reconciler keys scan {self.name} --replace`"
            )
        if "Host key verification failed" in stderr or "host key is known" in stderr:
            return (
                f"the host key of {where} is not in {self.known_hosts}, so the host cannot be "
                "verified and nothing was trusted. Run "
                f"`reconciler keys scan {self.name}` and compare the fingerprint it prints with "
                f"the host's own, or add the host's key to {self.known_hosts} yourself"
            )
        if "UNPROTECTED PRIVATE KEY FILE" in stderr or "bad permissions" in stderr:
            return f"ssh refuses the key {self.identity}: others can read it; chmod 600 it"
        if "Permission denied" in stderr:
            return (
                f"{t} refused the key {self.identity}; install the line printed by "
                f"`reconciler keys authorize {self.name}` in ~{t.user}/.ssh/authorized_keys on "
                f"{t.host}, and check that its from= matches this machine's address"
            )
        said = _last_line(stderr) or "ssh exited 255 without a message"
        if "Could not resolve hostname" in stderr:
            return f"cannot resolve {t.host} ({said}); check the lane's host"
        return f"cannot reach {t} over ssh ({said}); its tasks stay unknown until it answers"


def _client_env() -> dict[str, str]:
    """What the ssh client runs with: enough to work, nothing of the reconciler's secrets."""
    env = {"PATH": os.environ.get("PATH") or "/usr/local/bin:/usr/bin:/bin", "LANG": "C"}
    if "HOME" in os.environ:
        env["HOME"] = os.environ["HOME"]
    return env


# ---------------------------------------------------------------------- the reconciler's key


@dataclass(frozen=True)
class ClientKey:
    path: str  # the private key
    public: str  # "ssh-ed25519 AAAA…" (type and key, no comment)
    created: bool


def ensure_key(identity_file: str) -> ClientKey:
    """The lane's private key, created (ed25519, no passphrase, mode 0600) when missing."""
    path = _control_path(identity_file)
    created = False
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        comment = f"reconciler@{socket.gethostname()}"
        _run_tool([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path])
        os.chmod(path, 0o600)
        created = True
    mode = os.stat(path).st_mode
    if mode & 0o077:
        raise KeyProblem(
            f"the key {path} can be read by others (mode {mode & 0o777:o}), and ssh refuses such "
            f"keys; chmod 600 {path}"
        )
    out = _run_tool([SSH_KEYGEN, "-y", "-P", "", "-f", path])
    fields = out.split()
    if len(fields) < 2:
        raise KeyProblem(f"{SSH_KEYGEN} printed no public key for {path}")
    return ClientKey(path=path, public=f"{fields[0]} {fields[1]}", created=created)


def authorized_keys_line(lane: str, spec: LaneSpec, public: str) -> str:
    """``restrict,command="<reconciler> node"[,from="…"] <public key> reconciler:<lane>``.

    ``restrict`` forbids pty, forwarding and ``~/.ssh/rc``; the forced command makes sshd run
    the node whatever command the client asks for (that one only lands, unused, in
    ``SSH_ORIGINAL_COMMAND``). The manifest patterns keep quotes and blanks out of the options.
    """
    options = spec.ssh_options
    pin = lane_pin(lane_ref(lane, spec))
    parts = ["restrict", f'command="{options.command} node --pin {pin}"']
    if options.from_:
        parts.append(f'from="{options.from_}"')
    return f"{','.join(parts)} {public} reconciler:{lane}"


def _run_tool(argv: list[str], timeout: float = 30.0) -> str:
    try:
        proc = subprocess.run(
            argv,
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
            check=False,
            text=True,
        )
    except FileNotFoundError:
        raise KeyProblem(
            f"{argv[0]} is not installed on this machine; install it (apt-get install "
            "openssh-client)"
        ) from None
    except subprocess.TimeoutExpired:
        raise KeyProblem(f"{argv[0]} did not finish within {timeout:g}s") from None
    if proc.returncode != 0:
        said = _last_line(proc.stderr) or f"exit {proc.returncode}"
        raise KeyProblem(f"{argv[0]} failed: {said}")
    return proc.stdout


# -------------------------------------------------------------------------- the host's keys


@dataclass(frozen=True)
class HostKey:
    kind: str  # ssh-ed25519, ecdsa-sha2-nistp256, …
    key: str  # base64

    @property
    def fingerprint(self) -> str:
        """``SHA256:…``, as ``ssh-keygen -l`` and the ssh client print it."""
        try:
            blob = base64.b64decode(self.key, validate=True)
        except binascii.Error:
            return "SHA256:(not a valid key)"
        digest = hashlib.sha256(blob).digest()
        return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")

    def line(self, name: str) -> str:
        return f"{name} {self.kind} {self.key}"


def scan_host(target: SshTarget, timeout: float = 10.0) -> list[HostKey]:
    """The host's public keys as ``ssh-keyscan`` fetches them (unverified: the operator judges)."""
    seconds = str(max(1, math.ceil(timeout)))
    argv = [SSH_KEYSCAN, "-T", seconds, "-p", str(target.port), "--", target.host]
    try:
        proc = subprocess.run(
            argv,
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=timeout + 10,
            check=False,
            text=True,
        )
    except FileNotFoundError:
        raise KeyProblem(
            f"{SSH_KEYSCAN} is not installed on this machine; install it (apt-get install "
            "openssh-client)"
        ) from None
    except subprocess.TimeoutExpired:
        raise KeyProblem(f"{target.known_hosts_name} did not answer within {seconds}s") from None
    keys: list[HostKey] = []
    for raw in proc.stdout.splitlines():
        fields = raw.split()
        if len(fields) >= 3 and not raw.startswith("#"):
            key = HostKey(fields[1], fields[2])
            if key not in keys:
                keys.append(key)
    if not keys:
        said = _last_line(proc.stderr)
        raise KeyProblem(
            f"{target.known_hosts_name} sent no host key"
            + (f" ({said})" if said else "")
            + "; check that sshd runs there and listens on that port"
        )
    return keys


def _names_match(field: str, name: str) -> bool:
    """Does the host field of a known_hosts line (plain list or hashed ``|1|``) name ``name``?"""
    if field.startswith("|1|"):
        try:
            _, _, salt, digest = field.split("|", 3)
            mac = hmac.new(base64.b64decode(salt), name.encode(), hashlib.sha1).digest()
            return hmac.compare_digest(mac, base64.b64decode(digest))
        except (ValueError, binascii.Error):
            return False
    return name in field.split(",")


def known_keys(known_hosts: str, target: SshTarget) -> list[HostKey]:
    """The keys a known hosts file trusts for ``target`` (markers such as @revoked skipped)."""
    path = _control_path(known_hosts)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyProblem(f"cannot read the known hosts file {path}: {exc}") from None
    found: list[HostKey] = []
    for raw in text.splitlines():
        fields = raw.split()
        if len(fields) < 3 or raw.startswith(("#", "@")):
            continue
        if _names_match(fields[0], target.known_hosts_name):
            found.append(HostKey(fields[1], fields[2]))
    return found


def trust_host(known_hosts: str, target: SshTarget, keys: Sequence[HostKey]) -> str:
    """Make ``keys`` the only keys trusted for ``target`` in the file; other hosts' lines stay.

    Written atomically through a fresh temporary file (never through a symlink planted at the
    path), mode 0600, in a directory of mode 0700 when it is created. Returns the file's path.
    """
    path = _control_path(known_hosts)
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    try:
        with open(path, encoding="utf-8") as f:
            old = f.read().splitlines()
    except FileNotFoundError:
        old = []
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyProblem(f"cannot read the known hosts file {path}: {exc}") from None
    name = target.known_hosts_name
    kept = [
        raw
        for raw in old
        if raw.startswith(("#", "@"))
        or len(raw.split()) < 3
        or not _names_match(raw.split()[0], name)
    ]
    text = "\n".join([*kept, *(k.line(name) for k in keys)]) + "\n"
    safefile.write_atomic(path, text.encode("utf-8"), 0o600)
    return path


__all__ = [
    "ClientKey",
    "HostKey",
    "KeyProblem",
    "SshTransport",
    "authorized_keys_line",
    "ensure_key",
    "known_keys",
    "scan_host",
    "trust_host",
]
