"""Files written so that nothing planted beside them can redirect the write.

Every file the reconciler writes outside its own private directories (``plan --out``, state
backups, crash reports, known hosts, hooks) and every record a lane writes goes through here: the
data lands in a fresh temporary file in the target's own directory, created with
``O_CREAT|O_EXCL|O_NOFOLLOW`` (as ``tempfile.mkstemp`` does), and is renamed over the target.
A symlink or a file someone planted at the target (or at any ``.tmp`` name beside it) is
replaced, never followed or written through, and readers see the old file or the new one, never
half of either.
Must stay free of heavy imports: the run supervisor loads it at start-up.
"""

from __future__ import annotations

import contextlib
import os

_TEMP_TRIES = 100


def temp_beside(path: str, data: bytes, mode: int, *, durable: bool = True) -> str:
    """Write ``data`` to a new temporary file in ``path``'s directory; return its name.

    Same directory, so that the final rename or link never crosses a file system. Without
    ``durable`` no fsync (milliseconds on a real disk): for a record whose loss in a power cut
    costs nothing, because what it describes dies with the machine or it is a copy for display;
    the rename still never shows half of it.
    """
    fd, tmp = _new_temp(os.path.dirname(path) or ".")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            if durable:
                os.fsync(out.fileno())
        os.chmod(tmp, mode)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.filename is None:
            # a failed write() names no file (a full disk): name the one being written
            raise OSError(exc.errno, exc.strerror, path) from exc
        raise
    return tmp


def _new_temp(directory: str) -> tuple[int, str]:
    """A new file of mode 0600 under a random name: ``tempfile.mkstemp``, whose import (with
    shutil and random) would be a tenth of the run supervisor's start-up."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(_TEMP_TRIES):
        name = os.path.abspath(os.path.join(directory, ".tmp-" + os.urandom(6).hex()))
        try:
            return os.open(name, flags, 0o600), name
        except FileExistsError:
            continue  # someone's file under that name: draw another
    raise FileExistsError(f"no free temporary name in {directory} after {_TEMP_TRIES} tries")


def write_atomic(
    path: str | os.PathLike[str], data: bytes, mode: int = 0o600, *, durable: bool = True
) -> None:
    """Replace ``path`` with ``data``: the old file or the new one, never half, never through a
    symlink. Raises ``IsADirectoryError`` when ``path`` is a directory. ``durable``: as
    :func:`temp_beside`."""
    target = os.fspath(path)
    if os.path.isdir(target) and not os.path.islink(target):
        raise IsADirectoryError(21, "Is a directory", target)
    tmp = temp_beside(target, data, mode, durable=durable)
    try:
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def create_exclusive(path: str, data: bytes, mode: int = 0o600, *, durable: bool = True) -> bool:
    """Create ``path`` with ``data`` atomically unless it exists; False when it already did.

    A hard link fails when the target exists (also a dangling symlink), which makes "first writer
    wins" race-free. ``durable``: as :func:`temp_beside`.
    """
    tmp = temp_beside(path, data, mode, durable=durable)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return True
