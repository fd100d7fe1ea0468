"""Paths inside a lane that the reconciler's own side touches (as root): found, never followed.

The control plane reads a lane only through its node, with one exception: ``reconciler run``
watches the run directories of lanes on this machine, so that an agent's exit wakes it at once.
A lane user controls everything under its workspace root, so a path there is trusted only when
each of its directories, from the workspace root (resolved) down, is a real directory owned by
the lane's user, reached without following a symlink — and only named directories are watched,
one per live run, never a tree: a lane cannot make the daemon watch ``/usr/share`` or ``/``, or
spend root's inotify watches.
"""

from __future__ import annotations

import contextlib
import os
import pwd

from reconciler.manifests.models import LaneSpec

RUNS_DIR = ".runs"
_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def local_root(spec: LaneSpec) -> tuple[str, int] | None:
    """The workspace root of a lane on this machine as its node resolves it (``~`` is the lane
    user's home from the password database; ``$HOME`` for a lane served in-process, as the
    reconciler's own user), and the uid that must own what is under it. None for an SSH lane,
    an unknown user or a relative root."""
    if spec.host != "local":
        return None
    try:
        pw = pwd.getpwnam(spec.user) if spec.user else pwd.getpwuid(os.geteuid())
    except KeyError:
        return None
    own = pw.pw_uid == os.geteuid()
    home = os.path.expanduser("~") if own else pw.pw_dir
    root = spec.workspace_root
    if root == "~" or root.startswith("~/"):
        root = home + root[1:]
    if not os.path.isabs(root):
        return None
    return os.path.normpath(root), pw.pw_uid


def owned_dir(root: str, uid: int, *parts: str) -> str | None:
    """``root/parts…`` when ``root`` (symlinks resolved: the lane user's own choice) and every
    part below it is a directory owned by ``uid``, each opened without following a symlink;
    else None."""
    real = os.path.realpath(root)
    opened: list[int] = []
    try:
        fd = os.open(real, _FLAGS)
        opened.append(fd)
        if os.fstat(fd).st_uid != uid:
            return None
        for part in parts:
            if part in ("", ".", "..") or os.sep in part:
                return None
            fd = os.open(part, _FLAGS, dir_fd=fd)
            opened.append(fd)
            if os.fstat(fd).st_uid != uid:
                return None
        return os.path.join(real, *parts)
    except OSError:
        return None  # missing, a symlink (ELOOP), not a directory, or not ours to open
    finally:
        for fd in opened:
            with contextlib.suppress(OSError):
                os.close(fd)


def run_dir(spec: LaneSpec, task: str, attempt: int, iteration: int) -> str | None:
    """A run's directory on this machine, when it is the lane user's own (see ``owned_dir``)."""
    found = local_root(spec)
    if found is None:
        return None
    root, uid = found
    return owned_dir(root, uid, RUNS_DIR, task, f"{attempt}.{iteration}")
