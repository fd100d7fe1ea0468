"""The ``codex`` adapter: ``codex exec --json`` with the prompt on stdin, resumable by thread id.

The argv is ``codex exec --json --sandbox workspace-write --add-dir <git dir> <args…> -`` and, to
continue a thread, ``codex exec --json --sandbox workspace-write --add-dir <git dir> <args…>
resume <thread id> -`` (the git dir: where the worktree's commits go). Every option goes
before ``resume``: the ``resume`` subcommand rejects ``--sandbox`` (and ``-C``, ``--add-dir``…),
while the options of ``exec`` itself apply to a resumed thread too.

The verdict is read from the JSONL events (``codex-rs/exec/src/exec_events.rs``): the thread id
from ``thread.started``, the last turn's end (``turn.completed``, ``turn.failed`` or a top-level
``error``), the token usage of ``turn.completed`` and the text of the last ``agent_message`` item.
Codex reports no cost. Must tolerate any garbage in the output and never read more than the last
few MiB of it (plus the first line, where the thread id is).
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Mapping
from types import MappingProxyType

from reconciler.node.agents.launch import Launch
from reconciler.node.agents.values import FINAL_TEXT_LIMIT
from reconciler.node.agents.values import clip as _clip
from reconciler.node.agents.values import int_or_none as _int
from reconciler.node.agents.values import str_or_none as _str
from reconciler.node.errors import NodeError
from reconciler.node.files import tail_bytes
from reconciler.protocol import AgentRef, AgentResult, ExitInfo

READ_LIMIT = 8 * 1024 * 1024
HEAD_LIMIT = 64 * 1024  # thread.started is the first line; a huge run pushes it out of the window
SANDBOX = ["--sandbox", "workspace-write"]
# Options of `codex exec` that choose the sandbox themselves (`--yolo` is an alias of the last).
_SANDBOX_FLAGS = frozenset(
    {"--sandbox", "-s", "--dangerously-bypass-approvals-and-sandbox", "--yolo"}
)
_JSON_FLAGS = frozenset({"--json", "--experimental-json"})
# Thread ids are UUIDs. Anything else (above all a value starting with "-", which codex would
# read as an option) is never passed on as the thread to resume.
THREAD_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")

SUCCESS = "success"
TURN_FAILED = "turn_failed"
ERROR = "error"


def _dict(value: object) -> dict[str, object]:
    return value if isinstance(value, dict) else {}


def _thread_id(value: object) -> str | None:
    return value if isinstance(value, str) and THREAD_ID.match(value) else None


def sets_sandbox(args: list[str]) -> bool:
    """Whether ``args`` already choose the sandbox (a second ``--sandbox`` is a usage error, and
    ``--sandbox`` would override a ``-c sandbox_mode=…``)."""
    for i, arg in enumerate(args):
        if arg == "--":
            return False
        name = arg.split("=", 1)[0]
        if name in _SANDBOX_FLAGS or (arg.startswith("-s") and not arg.startswith("--")):
            return True
        if arg in ("-c", "--config") and i + 1 < len(args):
            value = args[i + 1]
        elif name == "--config":
            value = arg.split("=", 1)[1]
        elif arg.startswith("-c") and not arg.startswith("--"):
            value = arg[2:]
        else:
            continue
        if value.strip().startswith("sandbox_mode"):
            return True
    return False


def _adds_dir(args: list[str], path: str) -> bool:
    """Whether ``args`` already make ``path`` writable with ``--add-dir``."""
    pairs = itertools.pairwise([*args, ""])
    return any((a == "--add-dir" and b == path) or a == f"--add-dir={path}" for a, b in pairs)


def _events(data: bytes) -> list[dict[str, object]]:
    """The JSON objects with a string ``type`` among the lines of ``data``, in order."""
    events = []
    for raw in data.split(b"\n"):
        line = raw.strip()
        if not line.startswith(b"{"):
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            continue  # a truncated last line or interleaved noise
        if isinstance(obj, dict) and isinstance(obj.get("type"), str):
            events.append(obj)
    return events


def _head_thread_id(path: str) -> str | None:
    """The thread id of a ``thread.started`` among the first complete lines of ``path``."""
    try:
        with open(path, "rb") as f:
            head = f.read(HEAD_LIMIT)
    except OSError:
        return None
    lines = head.split(b"\n")[:-1]  # the last piece may be cut by the read limit
    for event in _events(b"\n".join(lines)):
        if event["type"] == "thread.started":
            return _thread_id(event.get("thread_id"))
    return None


class CodexAdapter:
    # What a Codex session sets for the commands it runs (codex-rs/core/src/spawn.rs and
    # exec_env.rs). Inherited by a nested codex (a lane started from a Codex shell, or a profile
    # that exports them), they describe the outer session: its sandbox and network policy and
    # its thread, not this run's; codex sets its own for its children.
    strip_env: frozenset[str] = frozenset(
        {"CODEX_SANDBOX", "CODEX_SANDBOX_NETWORK_DISABLED", "CODEX_THREAD_ID"}
    )
    sessions: bool = True
    env_defaults: Mapping[str, str] = MappingProxyType({})

    def build(self, agent: AgentRef, run: Launch) -> tuple[list[str], bool]:
        # `run.session_id` is not used: codex picks the thread id itself (see thread.started).
        argv = [*(agent.command or ["codex"]), "exec"]
        if not any(arg in _JSON_FLAGS for arg in agent.args):
            argv.append("--json")
        if not sets_sandbox(agent.args):
            argv += SANDBOX
            if run.git_dir and not _adds_dir(agent.args, run.git_dir):
                # The worktree's index, HEAD and objects live in the checkout's git directory,
                # outside the worktree: without it, workspace-write cannot `git commit`.
                argv += ["--add-dir", run.git_dir]
        argv += agent.args
        if run.resume:
            if not THREAD_ID.match(run.resume):
                raise NodeError(
                    f"cannot resume codex thread {run.resume!r}: not a thread id; "
                    "start the task's next attempt instead"
                )
            argv += ["resume", run.resume]
        argv.append("-")  # the prompt is read from stdin
        return argv, True

    def parse(self, output_path: str, exit: ExitInfo) -> AgentResult:
        data = tail_bytes(output_path, READ_LIMIT)
        cut = len(data) == READ_LIMIT
        if cut:
            data = data.partition(b"\n")[2]  # the first line was cut by the read window
        events = _events(data)
        thread: str | None = None
        last_turn: str | None = None  # type of the last turn.completed/turn.failed/error event
        error = ""
        message: str | None = None
        usage: dict[str, object] | None = None
        turns = 0
        for event in events:
            kind = event["type"]
            if kind == "thread.started":
                thread = _thread_id(event.get("thread_id")) or thread
            elif kind == "turn.started":
                message = None  # the final message is the last turn's
            elif kind == "turn.completed":
                turns += 1
                last_turn = kind
                usage = _dict(event.get("usage"))
            elif kind == "turn.failed":
                last_turn = kind
                error = _str(_dict(event.get("error")).get("message")) or "turn failed"
            elif kind == "error":
                last_turn = kind
                error = _str(event.get("message")) or "error"
            elif kind == "item.completed":
                item = _dict(event.get("item"))
                text = _str(item.get("text"))
                if item.get("type") == "agent_message" and text is not None:
                    message = text
        if thread is None and cut:
            thread = _head_thread_id(output_path)
        if last_turn is None:
            # No turn ended in what was read (killed, cut off, or not codex at all).
            if message is None:
                message = data[-FINAL_TEXT_LIMIT:].decode("utf-8", errors="replace")
            return AgentResult(ok=False, session_id=thread, final_text=_clip(message))
        subtype = {"turn.completed": SUCCESS, "turn.failed": TURN_FAILED}.get(last_turn, ERROR)
        text = (message or "") if subtype == SUCCESS else error
        # Codex's usage is the thread's running total (restored on resume), so the last
        # turn.completed holds every turn before it: the figures are taken, not summed.
        totals = usage or {}
        return AgentResult(
            ok=exit.exit_code == 0 and subtype == SUCCESS,
            subtype=subtype,
            session_id=thread,
            cost_usd=None,  # codex reports no cost
            input_tokens=_int(totals.get("input_tokens")),  # includes cached_input_tokens
            output_tokens=_int(totals.get("output_tokens")),
            num_turns=turns,
            final_text=_clip(text),
        )
