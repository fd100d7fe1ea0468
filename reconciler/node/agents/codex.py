"""The ``codex`` adapter: ``codex exec --json`` with the prompt on stdin, resumable by thread id.

The argv is ``codex exec --json --sandbox workspace-write <defaults…> <args…> -`` and, to
continue a thread, ``codex exec --json --sandbox workspace-write <defaults…> <args…> resume
<thread id> -``. Every option goes before ``resume``: the ``resume`` subcommand rejects
``--sandbox`` (and ``-C``, ``--add-dir``…), while the options of ``exec`` itself apply to a
resumed thread too. The defaults, each left out when ``args`` make the same choice:

- analytics and the update check off (``-c analytics.enabled=false``,
  ``-c check_for_update_on_startup=false``);
- ``--disable unbounded_connection_retries``: an unreachable model API fails the turn after
  five reconnects (about 25 s) instead of printing "Reconnecting..." forever;
- when the agent's environment sets ``OPENAI_BASE_URL``, which codex ignores, a model provider
  with that base URL (``-c model_provider=… -c model_providers.…``), keyed by ``CODEX_API_KEY``
  or ``OPENAI_API_KEY``.

Under ``workspace-write`` codex keeps every ``.git`` read-only (0.171: ``--add-dir`` of a
worktree's git directory does not change that), so a codex Agent's commits are the
reconciler's by default (``AgentSpec.commits``); the git directory is never made writable.

The verdict is read from the JSONL events (``codex-rs/exec/src/exec_events.rs``): the thread id
from ``thread.started``, the last turn's end (``turn.completed``, ``turn.failed`` or a top-level
``error``), the token usage of ``turn.completed`` and the text of the last ``agent_message`` item.
An ``error`` event saying "Reconnecting..." is a retry notice, not an end: a run whose last event
is one ended while codex was still retrying (subtype ``retrying``). Codex reports no cost. Must
tolerate any garbage in the output and never read more than the last few MiB of it (plus the
first line, where the thread id is).

Spend as the run goes: the last ``turn.completed`` usage, a running total of the thread, priced
with cached input inside input. A resumed thread starts from the totals the run that left it
reached, which are taken out. A "Reconnecting..." notice is a retry, not progress.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import ClassVar, Literal

from reconciler.node import files
from reconciler.node.agents.launch import Launch
from reconciler.node.agents.login import Login
from reconciler.node.agents.tally import Counts, EventTally, Tally, counts_in, no_counts, read
from reconciler.node.agents.values import (
    FINAL_TEXT_LIMIT,
    as_dict,
    as_list,
    json_event,
    one_line,
    render_json_line,
    short,
)
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
# Options that pick a local model provider instead of the configured one.
_PROVIDER_FLAGS = frozenset({"--oss", "--local-provider"})
# Settings sent unless `args` set them: nothing is reported to OpenAI, no update is looked for.
QUIET = {
    "analytics": "analytics.enabled=false",
    "check_for_update_on_startup": "check_for_update_on_startup=false",
}
# On by default in 0.171: with it, an unreachable API is retried forever ("Reconnecting...
# waiting for network" every minute or so); without it, five reconnects and the turn fails.
UNBOUNDED_RETRIES = "unbounded_connection_retries"
# The provider made from OPENAI_BASE_URL, and the key variables it may read (the first set wins).
PROVIDER = "reconciler"
KEY_VARIABLES = ("CODEX_API_KEY", "OPENAI_API_KEY")
# Thread ids are UUIDs. Anything else (above all a value starting with "-", which codex would
# read as an option) is never passed on as the thread to resume.
THREAD_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
# "Reconnecting... 2/5 (cause)", "Reconnecting... waiting for network (cause)": codex retrying.
_RETRY = re.compile(r"^Reconnecting(?:\.\.\.|…)")

SUCCESS = "success"
TURN_FAILED = "turn_failed"
ERROR = "error"
RETRYING = "retrying"


def _thread_id(value: object) -> str | None:
    return value if isinstance(value, str) and THREAD_ID.match(value) else None


def _option_values(args: list[str], long: str, short: str | None = None) -> list[str]:
    """The values of option ``long`` (or ``short``) in ``args``, in any spelling clap accepts:
    ``--opt V``, ``--opt=V``, ``-o V``, ``-oV``; none after ``--``."""
    values = []
    for i, arg in enumerate(args):
        if arg == "--":
            break
        if arg in (long, short) and i + 1 < len(args):
            values.append(args[i + 1])
        elif arg.startswith(long + "="):
            values.append(arg[len(long) + 1 :])
        elif short and arg.startswith(short) and len(arg) > len(short):
            values.append(arg[len(short) :])
    return values


def _config_keys(args: list[str]) -> list[str]:
    """The dotted keys that ``-c key=value`` options in ``args`` set."""
    return [v.split("=", 1)[0].strip() for v in _option_values(args, "--config", "-c")]


def _sets(args: list[str], key: str) -> bool:
    """Whether ``args`` set config ``key`` or something inside it (``key.…``)."""
    return any(k == key or k.startswith(key + ".") for k in _config_keys(args))


def sets_sandbox(args: list[str]) -> bool:
    """Whether ``args`` already choose the sandbox (a second ``--sandbox`` is a usage error, and
    ``--sandbox`` would override a ``-c sandbox_mode=…``)."""
    for arg in args:
        if arg == "--":
            break
        name = arg.split("=", 1)[0]
        if name in _SANDBOX_FLAGS or (arg.startswith("-s") and not arg.startswith("--")):
            return True
    return _sets(args, "sandbox_mode")


def _names_feature(args: list[str], feature: str) -> bool:
    toggled = _option_values(args, "--enable") + _option_values(args, "--disable")
    keys = _config_keys(args)
    return feature in toggled or f"features.{feature}" in keys or "features" in keys


def _chooses_provider(args: list[str]) -> bool:
    before = args[: args.index("--")] if "--" in args else args
    flags = any(a.split("=", 1)[0] in _PROVIDER_FLAGS for a in before)
    return flags or "model_provider" in _config_keys(args)


def _toml_string(text: str) -> str:
    # A JSON string is a TOML basic string: the same quotes and the same escapes, unicode ones too.
    return json.dumps(text)


def provider_config(args: list[str], env: Mapping[str, str]) -> list[str]:
    """``-c`` options that send codex to ``OPENAI_BASE_URL`` (which codex ignores) when the
    agent's environment sets it and ``args`` choose no provider; else nothing.

    The provider speaks the Responses API (``POST <base>/responses``, over HTTP: codex's own
    OpenAI provider first tries a WebSocket, whose failure shows as "Reconnecting..." errors)
    with the key in ``CODEX_API_KEY`` or ``OPENAI_API_KEY`` (the first one set; none set:
    ``OPENAI_API_KEY``, which codex then reports missing)."""
    base = env.get("OPENAI_BASE_URL", "").strip()
    if not base or _chooses_provider(args):
        return []
    key = next((name for name in KEY_VARIABLES if env.get(name)), KEY_VARIABLES[-1])
    table = (
        f"{{name = {_toml_string('OPENAI_BASE_URL')}, base_url = {_toml_string(base)}, "
        f'env_key = "{key}", wire_api = "responses"}}'
    )
    return ["-c", f'model_provider="{PROVIDER}"', "-c", f"model_providers.{PROVIDER}={table}"]


def defaults(args: list[str], env: Mapping[str, str]) -> list[str]:
    """The options the adapter adds before ``args`` (see the module docstring)."""
    options: list[str] = []
    for key, setting in QUIET.items():
        if not _sets(args, key):
            options += ["-c", setting]
    if not _names_feature(args, UNBOUNDED_RETRIES):
        options += ["--disable", UNBOUNDED_RETRIES]
    return options + provider_config(args, env)


def retry_notice(event: Mapping[str, object]) -> str | None:
    """The message of a codex retry notice, else None. While a request to the model API fails,
    codex 0.171 prints ``{"type":"error","message":"Reconnecting... 2/5 (<cause>)"}`` per retry
    (five, a few seconds apart, for HTTP errors such as 401 or 5xx), or ``"Reconnecting...
    waiting for network (<cause>)"`` with growing pauses up to about a minute, forever, when the
    API cannot be reached and unbounded retries are on. The retries end in a completed turn or
    in ``error`` + ``turn.failed`` carrying the cause without the prefix."""
    message = event.get("message") if event.get("type") == "error" else None
    return message if isinstance(message, str) and _RETRY.match(message) else None


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


def render_event(event: dict[str, object]) -> list[str]:
    """One ``exec --json`` event as ``reconciler logs`` shows it."""
    kind = event.get("type")
    if kind == "thread.started":
        return [f"── thread {event.get('thread_id')}"]
    if kind in ("item.completed", "item.started"):
        item = as_dict(event.get("item"))
        what = item.get("type")
        if what == "agent_message" and kind == "item.completed":
            return [f"assistant: {short(str(item.get('text') or ''))}"]
        if what == "command_execution":
            if kind == "item.started":
                return [f"  $ {short(str(item.get('command') or ''), 120)}"]
            return [f"    exit {item.get('exit_code')}"]
        if what == "file_change" and kind == "item.completed":
            paths = [str(as_dict(c).get("path")) for c in as_list(item.get("changes"))]
            return [f"  edit {', '.join(paths)}"]
        return []
    if kind == "turn.completed":
        found = as_dict(event.get("usage"))
        return [f"── turn done: {found.get('input_tokens')} in, {found.get('output_tokens')} out"]
    if kind == "turn.failed":
        return [f"── turn failed: {short(str(as_dict(event.get('error')).get('message') or ''))}"]
    if kind == "error":
        return [f"error: {short(str(event.get('message') or ''))}"]
    return []


# Items that are the agent acting, not talking or thinking.
_TOOL_ITEMS = frozenset({"command_execution", "file_change", "mcp_tool_call", "web_search"})
_RUN_NAME = re.compile(r"^(\d+)\.(\d+)$")


class CodexTally(EventTally):
    kind: Literal["codex"] = "codex"
    baseline: Counts | None = None  # the resumed thread's totals before this run

    cached_in_input: ClassVar[bool] = True

    def feed(self, event: dict[str, object]) -> None:
        if event.get("type") == "turn.completed":
            self.turns += 1
            self.models[""] = counts_in(
                event.get("usage"), "input_tokens", "output_tokens", "cached_input_tokens", "_"
            )
        elif event.get("type") == "item.completed":
            item = event.get("item")
            if isinstance(item, dict) and item.get("type") in _TOOL_ITEMS:
                self.tools += 1

    def retry(self, event: dict[str, object]) -> str | None:
        message = retry_notice(event)
        return f"retrying: {message}" if message is not None else None

    def shown(self, event: dict[str, object]) -> list[str]:
        return render_event(event)

    def per_model(self) -> dict[str, Counts]:
        counts = super().per_model()
        if self.baseline is not None:
            total = counts.get("", no_counts())
            counts[""] = [max(0, a - b) for a, b in zip(total, self.baseline, strict=True)]
        return counts

    def resume(self, run_dir: str, session: str) -> bool:
        if self.baseline is not None or not self.models:
            return False
        try:
            self.baseline = _baseline(run_dir, session)
        except OSError:
            self.baseline = no_counts()
        return True


def _baseline(run_dir: str, thread: str) -> Counts:
    """The totals a resumed thread had reached: those of the latest earlier run of the task
    that left it (its raw running total, before its own baseline)."""
    here = _RUN_NAME.match(os.path.basename(run_dir))
    task_dir = os.path.dirname(run_dir)
    if here is None:
        return no_counts()
    me = (int(here.group(1)), int(here.group(2)))
    earlier: list[tuple[tuple[int, int], str]] = []
    for entry in os.listdir(task_dir):
        m = _RUN_NAME.match(entry)
        if m and (key := (int(m.group(1)), int(m.group(2)))) < me:
            earlier.append((key, os.path.join(task_dir, entry)))
    for _, other in sorted(earlier, reverse=True):
        spec = files.read_json(os.path.join(other, files.RUN_JSON)) or {}
        if thread in (spec.get("session_id"), spec.get("resume_session"), _thread_of(other)):
            return read(CodexTally, other, final=True).models.get("", no_counts())
    return no_counts()


def _thread_of(run_dir: str) -> str | None:
    with open(os.path.join(run_dir, files.OUTPUT_LOG), "rb") as handle:
        first = handle.readline(1 << 16)
    event = json_event(first)
    return _str(event.get("thread_id")) if event else None


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
    tally: type[Tally] | None = CodexTally
    # codex's provider for OPENAI_BASE_URL (see provider_config) reads a key variable only
    login: Login | None = Login(
        KEY_VARIABLES,
        ("${CODEX_HOME:-~/.codex}/auth.json",),
        "export CODEX_API_KEY (or OPENAI_API_KEY) in the lane user's ~/.profile, or run "
        "`codex login` as the lane user",
        key_only="OPENAI_BASE_URL",
    )

    def doctor(self, agent: AgentRef, env: Mapping[str, str]) -> tuple[str, str] | None:
        if agent.commits == "agent" and not sets_sandbox(agent.args):
            return (
                "The Agent says commits: agent, but codex's workspace-write sandbox cannot "
                "write a worktree's git directory: every `git commit` of the agent fails.",
                "leave out commits: agent (the reconciler commits for codex), or choose a "
                "sandbox in the Agent's args",
            )
        return None

    def prepare(self, agent: AgentRef, run: Launch) -> None:
        pass  # flags and variables say everything

    def build(self, agent: AgentRef, run: Launch) -> tuple[list[str], bool]:
        # `run.session_id` is not used: codex picks the thread id itself (see thread.started).
        # Nor is `run.git_dir`: codex's sandbox keeps it read-only whatever it is told.
        argv = [*(agent.command or ["codex"]), "exec"]
        if not any(arg in _JSON_FLAGS for arg in agent.args):
            argv.append("--json")
        if not sets_sandbox(agent.args):
            argv += SANDBOX
        argv += defaults(agent.args, run.env)
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
        retrying: str | None = None  # the retry notice that is the last event so far
        for event in events:
            kind = event["type"]
            notice = retry_notice(event)
            retrying = notice
            if notice is not None:
                continue  # a retry: the turn goes on
            if kind == "thread.started":
                thread = _thread_id(event.get("thread_id")) or thread
            elif kind == "turn.started":
                message = None  # the final message is the last turn's
            elif kind == "turn.completed":
                turns += 1
                last_turn = kind
                usage = as_dict(event.get("usage"))
            elif kind == "turn.failed":
                last_turn = kind
                error = _str(as_dict(event.get("error")).get("message")) or "turn failed"
            elif kind == "error":
                last_turn = kind
                error = _str(event.get("message")) or "error"
            elif kind == "item.completed":
                item = as_dict(event.get("item"))
                text = _str(item.get("text"))
                if item.get("type") == "agent_message" and text is not None:
                    message = text
        if thread is None and cut:
            thread = _head_thread_id(output_path)
        if retrying is not None:
            # The run ended (killed, stalled, stopped) while codex was still retrying.
            return AgentResult(
                ok=False,
                subtype=RETRYING,
                session_id=thread,
                input_tokens=_int((usage or {}).get("input_tokens")),
                output_tokens=_int((usage or {}).get("output_tokens")),
                num_turns=turns,
                final_text=_clip(f"ended while codex was retrying the model API: {retrying}"),
                error=one_line(retrying),
            )
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
        ok = exit.exit_code == 0 and subtype == SUCCESS
        return AgentResult(
            ok=ok,
            error=None if ok else one_line(error or subtype),
            subtype=subtype,
            session_id=thread,
            cost_usd=None,  # codex reports no cost
            input_tokens=_int(totals.get("input_tokens")),  # includes cached_input_tokens
            output_tokens=_int(totals.get("output_tokens")),
            num_turns=turns,
            final_text=_clip(text),
        )

    def render(self, line: str) -> list[str]:
        return render_json_line(line, render_event)
