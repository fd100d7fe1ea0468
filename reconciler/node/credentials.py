"""Forge credentials inside the lane: read the lane's token and keep it out of every message.

The token comes from a file named in the lane spec (which must not be group- or world-readable)
or from ``GH_TOKEN``/``GITHUB_TOKEN`` in the lane's captured login environment. A token with
white space inside (a file of two lines, a pasted "token ghp_…") is refused before it is ever
sent: an HTTP library would quote it back in its error. Every token read, refused or not, is
remembered for the life of the process, and ``scrub`` masks them (and every piece of one) in any
text; the node passes every failure it returns through it. This module must never log, print or
embed a token in an exception.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping

from reconciler.node.errors import NodeError
from reconciler.redact import redact

ENV_NAMES = ("GH_TOKEN", "GITHUB_TOKEN")
_SECRETS: set[str] = set()
"""Every token this process has read: masked in every message the node returns."""


def remember(secret: str) -> None:
    """Mask ``secret`` (and every piece of it) in everything ``scrub`` sees from now on."""
    if secret.strip():
        _SECRETS.add(secret)


def scrub(text: str) -> str:
    """``text`` with every token this process read, and anything shaped like a credential,
    masked."""
    return redact(text, _SECRETS)


def read_token(path: str | None, env: Mapping[str, str]) -> str:
    """The token from ``path`` if given, else from ``GH_TOKEN`` then ``GITHUB_TOKEN`` in ``env``."""
    if path:
        return _read_file(os.path.expanduser(path))
    for name in ENV_NAMES:
        value = env.get(name, "").strip()
        if value:
            remember(value)
            _refuse_inner_space(value, f"{name} in the lane's login environment")
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
    remember(token)
    _refuse_inner_space(token, f"token file {path}")
    return token


def _refuse_inner_space(token: str, where: str) -> None:
    """A token is one word: refuse one with white space inside, without ever quoting it."""
    lines = token.splitlines()
    if len(lines) > 1:
        raise NodeError(f"{where} holds {len(lines)} lines; write only the token, on one line")
    if any(c.isspace() for c in token):
        raise NodeError(
            f"{where} holds white space inside the token; write only the token, on one line "
            '(no "token " or "Bearer " before it)'
        )
    if not (token.isascii() and token.isprintable()):
        raise NodeError(
            f"{where} holds characters no token has (control characters or non-ASCII); write "
            "only the token, on one line"
        )
