"""Masks secrets in text before it is printed or stored: one rule for the whole program.

``redact(text, secrets)`` replaces with ``***``:

- every known secret, and every piece of one between white space or control characters that is
  at least ``MIN_SECRET`` long (a token file with a newline or a space inside is still masked
  where a message quotes it in part, or as a ``repr`` with ``\\n`` in it);
- anything shaped like a credential, whatever its origin: GitHub, Anthropic, OpenAI, Google, AWS,
  Slack and GitLab tokens, ``Authorization:`` and ``Bearer`` values, and the user information of
  a URL (``https://bot:TOKEN@host`` becomes ``https://***@host``, a bare ``https://TOKEN@host``
  too; the user name alone of an ssh URL is a login name, not a secret, and stays).

Ordinary text stays as it is: git SHAs, generations, session ids, paths, ``path:line:col``
messages. Most text holds no hint of a credential at all and costs a few substring tests, so
the state store can redact every message it writes.

Pure: no I/O and no state. It imports nothing of the reconciler, so that the control plane and the
node (inside a lane) share it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable

MASK = "***"
MIN_SECRET = 6
"""Shorter pieces of a secret are not masked: they would mask ordinary words, and reveal little."""

_SSH_SCHEMES = ("ssh", "ssh+git", "sftp")
_SEPARATORS = re.compile(r"[\s\x00-\x1f\x7f-\x9f]+")
_UPPER = re.compile(r"[A-Z]")
_DIGIT = re.compile(r"[0-9]")


def _url(match: re.Match[str]) -> str:
    scheme_end = match.string[max(0, match.start() - 8) : match.start()].lower()
    if ":" not in match.group(1) and scheme_end.endswith(_SSH_SCHEMES):
        return match.group(0)  # ssh://agent-web@build-2: a login name, not a secret
    return f"://{MASK}@"


def _kept_prefix(match: re.Match[str]) -> str:
    return match.group(1) + MASK


def _openai(match: re.Match[str]) -> str:
    found = match.group(0)
    if _UPPER.search(found) and _DIGIT.search(found):
        return MASK
    # sk- and a long lowercase name (a task called sk-learn-upgrade-…) is no key: real keys are
    # random letters of both cases and digits
    return found


def _with_at(text: str) -> bool:
    return "@" in text  # a URL with user information; most URLs have none


def _at_word_start(text: str) -> bool:
    """``sk-`` starts a word somewhere: not ``task-``, ``disk-``, ``risk-``."""
    at = text.find("sk-")
    while at >= 0:
        if at == 0 or not (text[at - 1].isalnum() or text[at - 1] in "_-"):
            return True
        at = text.find("sk-", at + 3)
    return False


_Replacement = str | Callable[[re.Match[str]], str]

# (hints, also, shape, replacement): a shape is looked for only when the text holds one of its
# hints (CPython's substring search, far faster than any regex) and ``also`` holds for it; every
# shape starts with a literal, so that the regex engine skips from one occurrence to the next, and
# what must come before that literal is checked by a lookbehind after it. Shapes are compiled when
# first needed (most processes, a lane's node among them, never need one).
_RULES: tuple[tuple[tuple[str, ...], Callable[[str], bool] | None, str, _Replacement], ...] = (
    (("://",), _with_at, r"://(?<=[A-Za-z0-9+.-]://)([^\s/?#@\"'<>\\]+)@", _url),
    *(
        (
            (literal,),
            None,
            rf"({literal}(?<=\b{first}{literal})[\"']?\s*[:=]\s*[\"']?"
            r"(?i:(?:bearer|token|basic)\s+)?)[^\s\"'\\,;]+",
            _kept_prefix,
        )
        for first, literal in (("[Aa]", "uthorization"), ("A", "UTHORIZATION"))
    ),
    *(
        (
            (literal,),
            None,
            rf"({literal}(?<=\b{first}{literal})\s+)[A-Za-z0-9._~+/-]{{16,}}=*",
            _kept_prefix,
        )
        for first, literal in (("[Bb]", "earer"), ("B", "EARER"))
    ),
    (("ghp_", "gho_", "ghu_", "ghs_", "ghr_"), None, r"gh[pousr]_[A-Za-z0-9]{20,}", MASK),
    (("github_pat_",), None, r"github_pat_[A-Za-z0-9_]{20,}", MASK),
    (("sk-",), _at_word_start, r"sk-(?<![A-Za-z0-9_-]sk-)[A-Za-z0-9_-]{20,}", _openai),
    (("AIza",), None, r"AIza[A-Za-z0-9_-]{35}", MASK),
    *(
        ((key,), None, rf"{key}(?<![A-Z0-9]{key})[A-Z0-9]{{16}}(?![A-Z0-9])", MASK)
        for key in ("AKIA", "ASIA")
    ),
    (("xox",), None, r"xox[abposre]-[A-Za-z0-9-]{10,}", MASK),
    (("glpat-",), None, r"glpat-[A-Za-z0-9_-]{20,}", MASK),
)
_HINTS = tuple(
    hint for hints, also, _shape, _replacement in _RULES if also is None for hint in hints
)
_HINTS_WITH_ALSO = tuple((hints, also) for hints, also, _shape, _replacement in _RULES if also)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every known secret, every piece of one, and every credential-shaped
    string replaced by ``***``."""
    if secrets:
        for piece in _pieces(frozenset(secrets)):
            if piece in text:
                text = text.replace(piece, MASK)
    for hint in _HINTS:
        if hint in text:
            return _shapes(text)
    for hints, also in _HINTS_WITH_ALSO:
        if any(hint in text for hint in hints) and also(text):
            return _shapes(text)
    return text


def _shapes(text: str) -> str:
    for hints, also, shape, replacement in _RULES:
        if any(hint in text for hint in hints) and (also is None or also(text)):
            text = _compiled(shape).sub(replacement, text)
    return text


@functools.cache
def _compiled(shape: str) -> re.Pattern[str]:
    return re.compile(shape)


@functools.lru_cache(maxsize=64)
def _pieces(secrets: frozenset[str]) -> tuple[str, ...]:
    """The strings to mask for these secrets, longest first (so that no piece is left half
    masked by a shorter one): each secret whole, and each piece of it between white space or
    control characters."""
    found: set[str] = set()
    for secret in secrets:
        whole = secret.strip()
        if len(whole) >= MIN_SECRET:
            found.add(whole)
        found.update(p for p in _SEPARATORS.split(whole) if len(p) >= MIN_SECRET)
    return tuple(sorted(found, key=lambda p: (-len(p), p)))


def secrets_of_url(url: str) -> list[str]:
    """The password in ``url`` (or, other than for ssh, a lone user name, which may be a token),
    as written and percent-decoded: what a message may quote outside the URL."""
    from urllib.parse import unquote, urlsplit  # the CLI's need: the node does without

    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    userinfo, at, _host = parts.netloc.rpartition("@")
    if not parts.scheme or not at:
        return []
    user, _, password = userinfo.partition(":")
    if password:
        found = password
    elif not parts.scheme.lower().endswith(_SSH_SCHEMES):
        found = user
    else:
        return []
    return sorted({found, unquote(found)})


__all__ = ["MASK", "MIN_SECRET", "redact", "secrets_of_url"]
