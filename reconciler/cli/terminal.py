"""What reaches the operator's terminal: the one writer every line of the CLI goes through.

``guarded()`` replaces ``sys.stdout`` and ``sys.stderr`` for the life of a command with a
``GuardedStream``, so that every output path (tables, JSON, errors, ``logs``, the daemon's log)
passes one chokepoint:

- everything is redacted (``reconciler.redact``): credential shapes, and the secrets the command
  knows of (the password of a control URL). ``***`` is valid inside a JSON string, so JSON too;
- on a terminal, control characters from any source are shown, not obeyed: C0 but newline and
  tab (so also carriage return, ESC and BEL), DEL, C1 (U+0080 to U+009F) and the bidirectional
  overrides and isolates (U+202A to U+202E, U+2066 to U+2069) become the text of their Python
  escape, ``\\x1b``, ``\\x07``, ``\\x9b``, ``\\u202e``. A carriage return right before a newline is
  dropped (it can hide nothing). The CLI's own colours still work: ``Painter`` writes ``sgr``
  markers, which carry a number drawn for this process that no agent's output can know, and which
  this writer turns into ESC only after it has neutralised everything else, and only for SGR
  (colour and weight) sequences;
- not on a terminal (a pipe, a file), text is redacted and otherwise written as it is.

Text is held until its line is complete (or ``flush``), so that a secret split across two writes
is still seen whole. Renders only: decides nothing.
"""

from __future__ import annotations

import contextlib
import io
import re
import secrets as random
import sys
import threading
from collections.abc import Iterator
from typing import TextIO, cast

from reconciler.redact import redact

MARK = f"\ue000{random.token_hex(4)}"
"""Starts an SGR sequence the CLI itself writes; unguessable by anything it prints."""

_MARKED = re.compile(re.escape(MARK) + r"\[([0-9;]*)([mHJ])")
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_HOLD_LIMIT = 1 << 16  # characters of an unfinished line held back before it is written anyway


def sgr(codes: str) -> str:
    """A colour or weight (``"31;1"``) that ``GuardedStream`` turns into ESC on a terminal."""
    return f"{MARK}[{codes}m"


def csi(sequence: str) -> str:
    """Cursor home (``"H"``) or erase the display (``"2J"``), for ``status --watch``; written
    like ``sgr``, so no other text can make the terminal obey it."""
    if not re.fullmatch(r"[0-9;]*[HJ]", sequence):
        raise ValueError(f"not a cursor-home or erase sequence: {sequence!r}")
    return f"{MARK}[{sequence}"


def visible(text: str) -> str:
    """``text`` without the CLI's colour markers (for widths)."""
    return _MARKED.sub("", text) if MARK in text else text


def shown(text: str) -> str:
    """``text`` as a terminal gets it: control characters as the text of their escape."""
    if _CONTROLS.search(text) is None:
        return text
    return _CONTROLS.sub(_escape, text.replace("\r\n", "\n"))


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


class GuardedStream(io.TextIOBase):
    """Redacts everything written to ``inner``; on a terminal, also neutralises control
    characters and turns the CLI's own colour markers into escapes."""

    def __init__(self, inner: TextIO, secrets: set[str]) -> None:
        super().__init__()
        self.inner = inner
        self.secrets = secrets  # shared, and added to, by the command (a control URL's password)
        try:
            self.terminal = inner.isatty()
        except (AttributeError, ValueError):
            self.terminal = False
        self._held: list[str] = []
        self._held_size = 0
        self._lock = threading.Lock()  # apply's lane threads log through it too

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        written = len(text)
        head, newline, tail = text.rpartition("\n")
        with self._lock:
            if newline:
                self._emit("".join([*self._held, head, newline]))
                self._held, self._held_size = [], 0
                text = tail
            if text:
                self._held.append(text)
                self._held_size += len(text)
                if self._held_size > _HOLD_LIMIT:
                    self._release()
        return written

    def _release(self) -> None:
        """A very long unfinished line: write it up to its last blank (a token has none)."""
        held = "".join(self._held)
        cut = max(held.rfind(" "), held.rfind("\t")) + 1
        if cut < len(held) // 2:
            cut = len(held)
        self._emit(held[:cut])
        self._held = [held[cut:]] if cut < len(held) else []
        self._held_size = len(held) - cut

    def _emit(self, text: str) -> None:
        text = redact(text, self.secrets)
        if self.terminal:
            text = shown(text)
        if MARK in text:
            text = _MARKED.sub("\x1b[\\1\\2" if self.terminal else "", text)
        self.inner.write(text)

    def flush(self) -> None:
        with self._lock:
            if self._held:
                held, self._held, self._held_size = "".join(self._held), [], 0
                self._emit(held)
        self.inner.flush()

    def isatty(self) -> bool:
        return self.terminal

    def fileno(self) -> int:
        return self.inner.fileno()

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return str(getattr(self.inner, "encoding", None) or "utf-8")

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        return cast("str | None", getattr(self.inner, "errors", None))


@contextlib.contextmanager
def guarded() -> Iterator[set[str]]:
    """``sys.stdout`` and ``sys.stderr`` go through ``GuardedStream`` inside the block; yields
    the set of secrets both mask (a command adds what it learns). Restored, flushed, after it."""
    out, err = sys.stdout, sys.stderr
    secrets: set[str] = set()
    guards = [GuardedStream(out, secrets), GuardedStream(err, secrets)]
    sys.stdout, sys.stderr = (cast(TextIO, g) for g in guards)
    try:
        yield secrets
    finally:
        sys.stdout, sys.stderr = out, err
        for guard in guards:
            with contextlib.suppress(OSError, ValueError):
                guard.flush()


@contextlib.contextmanager
def unguarded() -> Iterator[None]:
    """The streams as they were, inside a ``guarded`` block: for a protocol (``reconciler
    node``), whose bytes must not change."""
    out, err = sys.stdout, sys.stderr
    if isinstance(out, GuardedStream):
        out.flush()
        sys.stdout = out.inner
    if isinstance(err, GuardedStream):
        err.flush()
        sys.stderr = err.inner
    try:
        yield
    finally:
        sys.stdout, sys.stderr = out, err
