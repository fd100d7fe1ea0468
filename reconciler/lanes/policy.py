"""The admin policy on this host: read it safely, gather the machine's facts, refuse a lane.

The policy file is ``--policy``, else ``$RECONCILER_POLICY``, else ``/etc/reconciler/policy.yaml``
(missing: the safe defaults of ``reconciler.manifests.policy``). Whoever can change it decides
what every manifest may do, so it is refused — every command fails closed — unless it is a
regular file owned by root (or the reconciler's own user) that no one else can write, in
directories no one else can write. It is read again when it changes, so a running ``run`` follows
the admin's edits from its next pass.
"""

from __future__ import annotations

import functools
import os
import pwd
import stat
import threading

from reconciler.lanes import LaneUnavailable
from reconciler.manifests.errors import ManifestErrors
from reconciler.manifests.loader import parse_policy
from reconciler.manifests.models import LaneSpec
from reconciler.manifests.policy import DEFAULT_PATH, Facts, Policy, Violation, lane_violations
from reconciler.protocol import Batch, BatchResult
from reconciler.trust import private_file, untrusted

ENV = "RECONCILER_POLICY"
MAX_SIZE = 1 << 20


class PolicyError(Exception):
    """The policy file cannot be trusted or read; the message says which file and the fix."""


def policy_path(explicit: str | None = None) -> tuple[str, bool]:
    """The policy file to use, and whether it was named (a named file must exist)."""
    if explicit:
        return os.path.abspath(os.path.expanduser(explicit)), True
    named = os.environ.get(ENV)
    if named:
        return os.path.abspath(os.path.expanduser(named)), True
    return DEFAULT_PATH, False


_cache: dict[str, tuple[tuple[int, ...], Policy]] = {}
_cache_lock = threading.Lock()


def load_policy(explicit: str | None = None) -> Policy:
    """The policy in force (see the module docstring); ``PolicyError`` when it cannot be
    trusted. An unchanged file is not parsed again."""
    path, named = policy_path(explicit)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if named:
            raise PolicyError(
                f"there is no policy file at {path}; create it, or leave out --policy and "
                f"${ENV} to use {DEFAULT_PATH} (or the safe defaults when it does not exist)"
            ) from None
        return Policy()
    except OSError as exc:
        raise PolicyError(
            f"cannot read the policy {path} ({exc.strerror}); fix its permissions"
        ) from None
    # Trust is judged on every load (a few lstat calls): a chmod of the file or of a directory
    # above it changes no content, yet must take effect at once. Only the parse is cached.
    why = untrusted(path)
    if why is not None:
        raise PolicyError(
            f"the policy {path} cannot be trusted: {why}. Whoever can change it decides what "
            "every lane may do, so nothing runs until only root can"
        )
    identity = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)
    with _cache_lock:
        hit = _cache.get(path)
        if hit is not None and hit[0] == identity:
            return hit[1]
    policy = _read(path)
    with _cache_lock:
        _cache[path] = (identity, policy)
    return policy


def _read(path: str) -> Policy:
    try:
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        fd = os.open(os.path.realpath(path), flags)
    except OSError as exc:
        raise PolicyError(
            f"cannot read the policy {path} ({exc.strerror}); fix its permissions"
        ) from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode) or not private_file(fd):
            raise PolicyError(
                f"the policy {path} is not a regular file that only root can write; make it one"
            )
        data = handle.read(MAX_SIZE + 1)
    try:
        return Policy(parse_policy(path, data), path)
    except ManifestErrors as exc:
        n = len(exc.errors)
        raise PolicyError(
            f"{exc}\nthe policy {path} has {n} error{'s' if n != 1 else ''}: nothing runs "
            "until it is fixed (the admin decides what lanes may do; a broken policy allows "
            "nothing)"
        ) from None


def machine_facts() -> Facts:
    """Who the reconciler is on this host, and how users and paths resolve here."""
    euid = os.geteuid()
    try:
        user = pwd.getpwuid(euid).pw_name
    except KeyError:
        user = str(euid)
    return Facts(
        euid=euid,
        user=user,
        home=os.path.expanduser("~"),
        uid_min=_uid_min(),
        uid_of=_uid_of,
        realpath=os.path.realpath,
    )


def _uid_of(name: str) -> int | None:
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return None


@functools.cache
def _uid_min(path: str = "/etc/login.defs") -> int:
    """``UID_MIN`` of login.defs: where regular users start (1000 when unset)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as defs:
            for line in defs:
                fields = line.split()
                if len(fields) >= 2 and fields[0] == "UID_MIN" and fields[1].isdigit():
                    return int(fields[1])
    except OSError:
        pass
    return 1000


def violations(policy: Policy, name: str, spec: LaneSpec) -> list[Violation]:
    return lane_violations(policy, machine_facts(), name, spec)


class RefusedTransport:
    """A lane the policy refuses: nothing of it is ever contacted; every batch fails with why."""

    def __init__(self, name: str, problems: list[Violation]) -> None:
        self.name = name
        self.problems = problems

    @property
    def message(self) -> str:
        first = self.problems[0]
        more = len(self.problems) - 1
        return f"{first.message}; {first.hint}" + (
            f" (and {more} more problem{'s' if more != 1 else ''}: `reconciler validate`)"
        ) * bool(more)

    def exchange(self, batch: Batch) -> BatchResult:
        raise LaneUnavailable(self.message, check="policy")
