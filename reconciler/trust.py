"""Can anyone but us (and root) change this path? The test for every file whose content decides
what the reconciler does: the admin policy, the state directory (its caches are pickles, its
database is the reconciler's memory).

A path is trusted when it and every directory above it — as written and with its symlinks
resolved — belongs to root or to the reconciler's own user and cannot be written by anyone else
(a sticky directory such as ``/tmp`` may be world-writable: no one can replace what others own in
it). Reads only metadata; never creates anything.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


def untrusted(path: str | os.PathLike[str]) -> str | None:
    """None when only root and this process's user can change ``path`` (which need not exist
    yet); otherwise a sentence naming the first culprit and the fix."""
    text = os.path.abspath(os.fspath(path))
    for chain in (_chain(text), _chain(os.path.realpath(text))):
        for place in chain:
            why = _judge(place)
            if why is not None:
                return why
    return None


def _chain(path: str) -> list[str]:
    """``path``'s ancestors from the root down, then ``path`` itself."""
    parts = Path(path).parts
    return [os.path.join(*parts[: i + 1]) for i in range(len(parts))]


def _judge(place: str) -> str | None:
    try:
        info = os.lstat(place)
    except FileNotFoundError:
        return None  # not there (yet): nothing to replace; it will be created by us
    except OSError as exc:
        return f"{place} cannot be checked ({exc.strerror})"
    if stat.S_ISLNK(info.st_mode):
        return None  # judged again as part of the resolved path
    mode = stat.S_IMODE(info.st_mode)
    if info.st_uid not in (0, os.geteuid()):
        owner = _me() if os.geteuid() == 0 else f"{_me()} (or root)"
        return f"{place} belongs to uid {info.st_uid}: chown it to {owner}"
    sticky = stat.S_ISDIR(info.st_mode) and mode & stat.S_ISVTX
    if mode & (stat.S_IWGRP | stat.S_IWOTH) and not sticky:
        return f"{place} can be written by others (mode {mode:o}): chmod go-w {place}"
    return None


def _me() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def private_file(fd: int) -> bool:
    """Is the open file ours (or root's) and writable by no one else? (for a cache file, after
    ``open``: a file someone else could have written is not read)."""
    info = os.fstat(fd)
    mode = stat.S_IMODE(info.st_mode)
    return info.st_uid in (0, os.geteuid()) and not mode & (stat.S_IWGRP | stat.S_IWOTH)
