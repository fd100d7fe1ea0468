"""Small real file systems for tests: a tmpfs mounted for the length of a block, and filling one
up. Mounting needs root (or CAP_SYS_ADMIN); without it the calling test is skipped, saying so."""

from __future__ import annotations

import errno
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def tmpfs(where: Path, options: str = "size=512k") -> Iterator[Path]:
    """A tmpfs mounted at ``where`` (created if missing) for the block, then unmounted."""
    where.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {proc.stderr.strip()}"
        )
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def fill(directory: Path, name: str = "ballast") -> Path:
    """Write ``directory/name`` until its file system has no space left; return the file."""
    path = directory / name
    with open(path, "wb", buffering=0) as out:
        while True:
            try:
                out.write(b"\0" * 65536)
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    return path
                raise
