"""Free space where a path lives, in the words people read: "12.0 KiB free on /var/lib/x".

Shared by the lane (pre-flight, a start that hit a full disk) and the control side (the state
directory): both must name the place and the space left when a write fails for lack of it. Reads
file-system metadata only; never creates, changes or deletes anything.
"""

from __future__ import annotations

import os


def existing_ancestor(path: str) -> str:
    """``path`` itself when it exists, else its nearest existing parent (``/`` at worst)."""
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def free_bytes(path: str) -> int | None:
    """Bytes an unprivileged user may still write on ``path``'s file system; None when the file
    system cannot be asked (the path vanished, a stale mount)."""
    try:
        st = os.statvfs(existing_ancestor(path))
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def space_left(path: str) -> str:
    """ "12.0 KiB free on /x" for the nearest existing directory of ``path``."""
    anchor = existing_ancestor(path)
    if anchor == path and not os.path.isdir(path):
        anchor = os.path.dirname(path) or "."
    free = free_bytes(anchor)
    if free is None:
        return f"the free space on {anchor} cannot be read"
    return f"{human_bytes(free)} free on {anchor}"
