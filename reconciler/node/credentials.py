"""Forge credentials inside the lane: read the lane's token and keep it out of every message.

The token comes from a file named in the lane spec (which must not be group- or world-readable)
or from ``GH_TOKEN``/``GITHUB_TOKEN`` in the lane's captured login environment. This module must
never log, print or embed a token in an exception; callers pass any text that may have touched a
token through ``redact`` before it leaves the lane.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable, Mapping

from reconciler.node.errors import NodeError

ENV_NAMES = ("GH_TOKEN", "GITHUB_TOKEN")
MASK = "***"
# Shapes of GitHub tokens: classic/OAuth/user/server/refresh (gh?_) and fine-grained PATs.
TOKEN_SHAPES = re.compile(r"gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}")


def read_token(path: str | None, env: Mapping[str, str]) -> str:
    """The token from ``path`` if given, else from ``GH_TOKEN`` then ``GITHUB_TOKEN`` in ``env``."""
    if path:
        return _read_file(os.path.expanduser(path))
    for name in ENV_NAMES:
        value = env.get(name, "").strip()
        if value:
            return value
    raise NodeError(
        "no GitHub token: name a token file in the lane spec (credentials.github: "
        "~/.config/reconciler/github-token, chmod 600) or set GH_TOKEN or GITHUB_TOKEN in the "
        "lane's login environment"
    )


def _read_file(path: str) -> str:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise NodeError(
            f"token file {path} does not exist; write the token into it (chmod 600 {path}) "
            "or fix credentials.github in the lane spec"
        ) from None
    except OSError as exc:
        raise NodeError(
            f"cannot access token file {path} ({exc.strerror}); fix its path or permissions"
        ) from None
    if not stat.S_ISREG(info.st_mode):
        raise NodeError(f"token file {path} is not a regular file; point credentials at a file")
    if info.st_mode & (stat.S_IRGRP | stat.S_IROTH):
        raise NodeError(
            f"token file {path} is readable by other users (mode {stat.S_IMODE(info.st_mode):o}); "
            f"restrict it with chmod 600 {path}"
        )
    try:
        with open(path, encoding="utf-8") as fh:
            token = fh.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise NodeError(
            f"cannot read token file {path} ({reason}); make it a readable text file owned by "
            "the lane user (chmod 600)"
        ) from None
    if not token:
        raise NodeError(f"token file {path} is empty; write the GitHub token into it")
    return token


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret and anything shaped like a GitHub token replaced by ``***``."""
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return TOKEN_SHAPES.sub(MASK, text)
