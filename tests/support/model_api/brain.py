"""What the scripted model says next, from the conversation so far (provider-independent)."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

WRITE = re.compile(r"@write ([A-Za-z0-9][A-Za-z0-9._-]*)")


@dataclass(frozen=True)
class Text:
    """A final answer: the turn ends."""

    text: str


@dataclass(frozen=True)
class Shell:
    """One call of the agent's shell tool."""

    command: str
    files: tuple[str, ...]


@dataclass
class Conversation:
    """The conversation as the agent sent it, reduced to what decides the next reply: each user
    turn's text (tool results are not user turns), the model's tool calls and words, and the
    tools' results, in order."""

    events: list[tuple[str, str]] = field(default_factory=list)

    def user(self, text: str) -> None:
        self.events.append(("user", text))

    def model_text(self, text: str = "") -> None:
        self.events.append(("text", text))

    def call(self, name: str = "") -> None:
        self.events.append(("call", name))

    def result(self, text: str = "") -> None:
        self.events.append(("result", text))

    def user_texts(self) -> list[str]:
        return [text for kind, text in self.events if kind == "user"]


def file_content(name: str) -> str:
    """What the scripted model writes into file ``name``: its own name, one line. An agent that
    edits files without a shell (aider) writes this content itself."""
    return f"{name}\n"


def write_command(names: tuple[str, ...], commit: bool = True) -> str:
    """The shell command that writes each file (``file_content``) and commits them."""
    parts = [f"printf '%s\\n' {shlex.quote(n)} > {shlex.quote(n)}" for n in names]
    if commit:
        quoted = " ".join(shlex.quote(n) for n in names)
        parts += [
            f"git add -- {quoted}",
            f"git commit -q -m {shlex.quote('Add ' + ', '.join(names))}",
        ]
    return " && ".join(parts)


def decide(conv: Conversation) -> Text | Shell:
    """One shell call for the ``@write`` files of the latest user turn that names any, then a
    final answer (the agent's own reminders and context messages name none)."""
    for at in range(len(conv.events) - 1, -1, -1):
        kind, text = conv.events[at]
        names = tuple(dict.fromkeys(WRITE.findall(text))) if kind == "user" else ()
        if names:
            if any(k == "call" for k, _ in conv.events[at + 1 :]):
                return Text(f"Done: wrote {', '.join(names)}.")
            return Shell(write_command(names), names)
    return Text("Nothing to do.")
