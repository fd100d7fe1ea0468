"""The ``gemini`` adapter: Gemini CLI headless, ``--output-format stream-json``, prompt on stdin.

Command line (see docs/agents.md)::

    gemini --output-format stream-json [--session-id ID | --resume ID] [--approval-mode=yolo]
           <args...>  < prompt

Gemini CLI runs headless whenever stdin or stdout is not a terminal, and reads the whole of a
non-terminal stdin as the prompt (up to 8 MiB), so the prompt never travels as an argument and
``-p`` is not needed (``-p ""`` would only append two newlines to it). Headless, the default
approval mode offers the model no tool that edits or runs anything, so the adapter asks for
``yolo`` unless the Agent's ``args`` choose a mode; ``GEMINI_CLI_TRUST_WORKSPACE=true`` (an
environment default, which a lane or Agent may set to ``false``) trusts the worktree, without
which a headless run exits 55 at once.

The stream is JSON lines with a ``type``: ``init`` (``session_id``, ``model``), ``message``
(``role``, ``content``, ``delta``), ``tool_use``, ``tool_result``, ``error`` (``severity``,
``message``) and a final ``result`` (``status`` success|error, optional ``error``, ``stats``
with ``input_tokens``/``output_tokens``/``total_tokens``/``tool_calls``/``duration_ms``). The
verdict is the exit code together with the last ``result`` object: ``ok`` only for exit 0 and
``status: success``. Anything else in the output (credential notices, warnings, a line cut off
by a kill) is skipped, and never more than the last few MiB of it is read.

What no flag or variable can say goes in the user's ``~/.gemini/settings.json``
(``pin_settings``): usage statistics off, and the API-key auth type when
``GOOGLE_GEMINI_BASE_URL`` is set (else 0.61 picks a "gateway" type that headless mode refuses).
``build`` writes those keys there when they are missing; it is the only file an adapter writes
outside the run directory.

Spend as the run goes: the final result's ``stats``, each model of ``stats.models`` (the models
the CLI routed to) at its own price, else the totals at the ``init`` event's model; input counts
include cached input. The CLI retries a failing model call with nothing on stdout: the retry
notices are read from its stderr.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import ClassVar, Literal

from reconciler import safefile
from reconciler.node import files
from reconciler.node.agents.launch import Launch
from reconciler.node.agents.login import Login
from reconciler.node.agents.tally import Counts, EventTally, Tally, counts_in
from reconciler.node.agents.values import (
    FINAL_TEXT_LIMIT,
    as_dict,
    one_line,
    render_json_line,
    short,
    tool_input,
)
from reconciler.node.agents.values import clip as _clip
from reconciler.node.agents.values import int_or_none as _int
from reconciler.node.agents.values import str_or_none as _str
from reconciler.node.files import tail_bytes
from reconciler.protocol import AgentRef, AgentResult, ExitInfo

READ_LIMIT = 8 * 1024 * 1024
HEAD_LIMIT = 64 * 1024  # where the init event (the session id) is, when the tail lost it

# Gemini CLI's headless exit codes: 0, 1, 42 and 53 are the long-standing ones; 41, 44, 52, 54,
# 55 and 130 are its FatalError kinds (0.61), which the JSON modes use instead of 1.
EXIT_SUBTYPES: dict[int, str] = {
    1: "error",  # general error, or an API failure without an HTTP status (unreachable)
    41: "auth_error",  # no usable credentials, or an auth type headless mode refuses
    42: "input_error",  # invalid prompt or arguments, or a session that cannot be resumed
    44: "sandbox_error",  # --sandbox without a usable container runtime
    52: "config_error",  # invalid settings, or yolo refused by security.disableYoloMode
    53: "turn_limit",  # model.maxSessionTurns reached
    54: "tool_error",  # fatal tool execution error (e.g. disk full)
    # The worktree is not a trusted folder: folder trust is on and GEMINI_CLI_TRUST_WORKSPACE is
    # "false" (or GEMINI_RESTRICTED_MODE is "true") in the lane's or Agent's env.
    55: "untrusted_workspace",
    130: "cancelled",
}
# An API error that outlived the CLI's retries exits with the HTTP status itself, which the
# kernel cuts to 8 bits: 401 exits 145, 429 exits 173, 503 exits 247.
HTTP_EXIT_SUBTYPES: dict[int, str] = {401: "auth_error", 403: "auth_error", 429: "rate_limited"}

# Options with which the Agent's args choose the approval mode themselves (the CLI refuses
# --yolo together with --approval-mode).
APPROVAL_OPTIONS = ("--approval-mode", "--yolo", "-y")
DEFAULT_APPROVAL = "--approval-mode=yolo"

# What the reconciler sets in the user's ~/.gemini/settings.json when it is missing: only settings
# can say it (see pin_settings).
API_KEY_AUTH = "gemini-api-key"
TRUST_VARIABLE = "GEMINI_CLI_TRUST_WORKSPACE"
AUTH_TYPE = ("security", "auth", "selectedType")
USAGE_STATISTICS = ("privacy", "usageStatisticsEnabled")


def _first_int(obj: Mapping[str, object], *names: str) -> int | None:
    for name in names:
        value = _int(obj.get(name))
        if value is not None:
            return value
    return None


def events(data: bytes) -> Iterator[dict[str, object]]:
    """The JSON objects with a string ``type`` among the lines of ``data``, in order."""
    for raw in data.split(b"\n"):
        line = raw.strip()
        if not line.startswith(b"{"):
            continue  # blank lines, credential notices, warnings, ANSI noise
        try:
            obj = json.loads(line)
        except ValueError:
            continue  # a line cut off mid-write, or interleaved noise
        if isinstance(obj, dict) and isinstance(obj.get("type"), str):
            yield obj


def _session_id(event: Mapping[str, object]) -> str | None:
    # ``session_id`` in the CLI's source; some published examples spell it ``sessionId``.
    return _str(event.get("session_id")) or _str(event.get("sessionId"))


def tokens_of(stats: Mapping[str, object]) -> tuple[int | None, int | None]:
    """(input, output) tokens from a result's ``stats``.

    The stream format has flat ``input_tokens``/``output_tokens``; the single-JSON format (and
    some examples) nest per-model counts under ``models`` (``tokens.prompt``/``candidates`` or
    ``input_tokens``/``output_tokens``), which are summed when the flat totals are missing.
    """
    input_tokens = _first_int(stats, "input_tokens", "inputTokens")
    output_tokens = _first_int(stats, "output_tokens", "outputTokens")
    models = stats.get("models")
    if (input_tokens is None or output_tokens is None) and isinstance(models, dict):
        inputs: list[int] = []
        outputs: list[int] = []
        for usage in models.values():
            if not isinstance(usage, dict):
                continue
            tokens = usage.get("tokens")
            counts: Mapping[str, object] = tokens if isinstance(tokens, dict) else usage
            found_in = _first_int(counts, "input_tokens", "prompt", "input")
            found_out = _first_int(counts, "output_tokens", "candidates", "output")
            if found_in is not None:
                inputs.append(found_in)
            if found_out is not None:
                outputs.append(found_out)
        if input_tokens is None and inputs:
            input_tokens = sum(inputs)
        if output_tokens is None and outputs:
            output_tokens = sum(outputs)
    return input_tokens, output_tokens


class _Reading:
    """What one pass over the events found."""

    def __init__(self) -> None:
        self.session_id: str | None = None
        self.result: dict[str, object] | None = None
        self.turns = 0
        self.segment: list[str] = []  # assistant text of the current model turn
        self.last_text = ""  # the last model turn that said anything
        self.in_turn = False
        self.last_error: str | None = None  # the last error event of severity error

    def close_turn(self) -> None:
        text = "".join(self.segment)
        if text.strip():
            self.last_text = text
        self.segment = []
        self.in_turn = False

    def open_turn(self) -> None:
        if not self.in_turn:
            self.in_turn = True
            self.turns += 1

    def feed(self, event: dict[str, object]) -> None:
        kind = event["type"]
        if kind == "init":
            self.session_id = _session_id(event) or self.session_id
        elif kind == "message":
            content = _str(event.get("content"))
            if event.get("role") != "assistant":
                self.close_turn()  # a user message starts a new exchange
            elif content is not None:
                self.open_turn()
                if event.get("delta") is True:
                    self.segment.append(content)
                else:  # a whole message, not a chunk of one: it replaces what came before
                    self.segment = [content]
        elif kind == "tool_use":
            self.open_turn()
        elif kind == "tool_result":
            # The model's next words come in a new turn; text said before a tool call is kept
            # as a fallback for a run whose last turn says nothing.
            self.close_turn()
        elif kind == "error":
            message = _str(event.get("message"))
            if message and event.get("severity") != "warning":
                self.last_error = message
        elif kind == "result":
            self.close_turn()
            self.result = event
            self.session_id = _session_id(event) or self.session_id

    def final_text(self) -> str:
        text = "".join(self.segment)
        return text if text.strip() else self.last_text


def _read(output_path: str) -> tuple[bytes, bool]:
    """The tail of the output (at most READ_LIMIT) and whether it is the whole file."""
    data = tail_bytes(output_path, READ_LIMIT)
    if len(data) < READ_LIMIT:
        return data, True
    return data.partition(b"\n")[2], False  # the first line was cut by the read window


def _head_session_id(output_path: str) -> str | None:
    try:
        with open(output_path, "rb") as f:
            head = f.read(HEAD_LIMIT)
    except OSError:
        return None
    for event in events(head):
        if event["type"] == "init":
            return _session_id(event)
    return None


def chooses_approval(args: list[str]) -> bool:
    """Whether ``args`` set the approval mode (``--approval-mode X``, ``--approval-mode=X``,
    ``--yolo``, ``-y``)."""
    return any(a in APPROVAL_OPTIONS or a.startswith(("--approval-mode=", "--yolo=")) for a in args)


def infers_gateway(env: Mapping[str, str]) -> bool:
    """Whether Gemini CLI 0.61 would pick its "gateway" auth type from ``env`` for a user who has
    an API key: ``GOOGLE_GEMINI_BASE_URL`` is looked at before ``GEMINI_API_KEY``, and headless
    mode refuses that type ("Invalid auth method selected.", exit 41)."""
    return (
        env.get("GOOGLE_GENAI_USE_GCA") != "true"
        and env.get("GOOGLE_GENAI_USE_VERTEXAI") != "true"
        and bool(env.get("GOOGLE_GEMINI_BASE_URL"))
        and bool(env.get("GEMINI_API_KEY"))
    )


def settings_pins(env: Mapping[str, str]) -> dict[tuple[str, ...], object]:
    """The user settings a run in ``env`` needs, by key path (each set only where missing).

    - usage statistics off: Gemini CLI sends them to Google unless
      ``privacy.usageStatisticsEnabled`` is false, and no flag or variable turns them off;
    - the API-key auth type when the environment would select "gateway": 0.61 reads no variable
      for the headless auth type (``GEMINI_DEFAULT_AUTH_TYPE`` only in interactive mode), and with
      ``gemini-api-key`` selected it still sends its requests to ``GOOGLE_GEMINI_BASE_URL``.
    """
    pins: dict[tuple[str, ...], object] = {USAGE_STATISTICS: False}
    if infers_gateway(env):
        pins[AUTH_TYPE] = API_KEY_AUTH
    return pins


def settings_path(env: Mapping[str, str]) -> str | None:
    """The user settings file the CLI reads in ``env`` (``GEMINI_CLI_HOME`` replaces the home)."""
    home = env.get("GEMINI_CLI_HOME") or env.get("HOME")
    return os.path.join(home, ".gemini", "settings.json") if home else None


def pin_settings(path: str, pins: Mapping[tuple[str, ...], object]) -> list[str]:
    """Set each of ``pins`` that ``path`` (a Gemini CLI settings file) lacks; return the dotted
    names set. Whatever the file already says wins, the rest of it is kept, and a file that
    is not plain JSON (Gemini CLI allows comments), not an object, or a symlink is left alone:
    the run then shows what the CLI makes of it. Best effort: a file that cannot be read or
    written is left as it is."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError:
        return []
    settings: object = {}
    if st is not None:
        if not stat.S_ISREG(st.st_mode):
            return []
        try:
            with open(path, "rb") as f:
                settings = json.loads(f.read())
        except (OSError, ValueError):
            return []
    if not isinstance(settings, dict):
        return []
    added: list[str] = []
    for keys, value in pins.items():
        node = settings
        for key in keys[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                break
            node = child
        else:
            if keys[-1] not in node:
                node[keys[-1]] = value
                added.append(".".join(keys))
    if not added:
        return []
    with contextlib.suppress(OSError):
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    try:
        data = (json.dumps(settings, indent=2) + "\n").encode()
        safefile.write_atomic(path, data, stat.S_IMODE(st.st_mode) if st else 0o600)
    except OSError:
        return []
    return added


def render_event(event: dict[str, object]) -> list[str]:
    """One stream-json event as ``reconciler logs`` shows it."""
    kind = event.get("type")
    if kind == "init":
        session = event.get("session_id") or event.get("sessionId")
        return [f"── session {session} ({event.get('model') or 'model ?'})"]
    if kind == "message" and event.get("role") == "assistant":
        text = _str(event.get("content"))
        return [f"assistant: {short(text)}"] if text and text.strip() else []
    if kind == "tool_use":
        name = event.get("tool_name") or event.get("name")
        return [f"  tool {name}: {short(tool_input(event.get('parameters')), 120)}"]
    if kind == "tool_result":
        return [f"    {event.get('status')}"]
    if kind == "error":
        return [f"error: {short(str(event.get('message') or ''))}"]
    if kind == "result":
        stats = as_dict(event.get("stats"))
        return [f"── result {event.get('status')}: {stats.get('total_tokens')} tokens"]
    return []


# Gemini CLI 0.61 retries a failing model call with nothing on stdout; stderr says it:
# "Attempt 3 failed with status 503. Retrying with backoff... <error>".
_RETRY = re.compile(
    rb"Attempt (\d+) failed(?: with status (\d+))?\. Retrying with backoff\.\.\. ?([^\n]*)"
)


class GeminiTally(EventTally):
    kind: Literal["gemini"] = "gemini"
    model: str = ""  # the init event's model
    in_turn: bool = False  # inside a model response
    stderr_at: int = 0  # how far stderr was read for retry notices

    cached_in_input: ClassVar[bool] = True

    def feed(self, event: dict[str, object]) -> None:
        kind = event.get("type")
        if kind == "init":
            self.model = _str(event.get("model")) or self.model
        elif kind in ("message", "tool_use"):
            if kind == "tool_use" or event.get("role") == "assistant":
                if not self.in_turn:  # a model response starts
                    self.turns += 1
                    self.in_turn = True
                self.tools += kind == "tool_use"
            else:
                self.in_turn = False
        elif kind == "tool_result":
            self.in_turn = False  # the results go back to the model: the next response is a turn
        elif kind == "result":
            stats = as_dict(event.get("stats"))
            per_model = _model_counts(stats.get("models"))
            if per_model:
                # the init event's model is often "auto": each model the CLI routed to is priced
                self.models = per_model
                return
            found_in, found_out = tokens_of(stats)
            if found_in is not None or found_out is not None:
                self.models = {self.model: [found_in or 0, found_out or 0, 0, 0]}

    def shown(self, event: dict[str, object]) -> list[str]:
        return render_event(event)

    def read_more(self, run_dir: str, progressed: bool) -> bool:
        """The stderr's last retry notice since the last progress (``progressed``: the agent
        moved on during this pass; earlier notices are old)."""
        stderr = os.path.join(run_dir, files.STDERR_LOG)
        try:
            size = os.path.getsize(stderr)
        except OSError:
            return False
        if progressed or size < self.stderr_at:
            self.stderr_at = size
            return True
        if size == self.stderr_at:
            return False
        start = max(self.stderr_at, size - (64 << 10))
        try:
            with open(stderr, "rb") as handle:
                handle.seek(start)
                data = handle.read(size - start)
        except OSError:
            return False
        notices = list(_RETRY.finditer(data))
        self.stderr_at = start + (data.rfind(b"\n") + 1)
        if notices:
            attempt, status, error = notices[-1].groups()
            cause = f"{status.decode()} " if status else ""
            said = error.decode("utf-8", errors="replace").strip()[:150]
            self.last_event = f"retrying: {cause}{said} (attempt {attempt.decode()})"
        return True


def _model_counts(models: object) -> dict[str, Counts]:
    """The per-model stats as counts: input (cached included), output, cached."""
    found: dict[str, Counts] = {}
    for name, counts in models.items() if isinstance(models, dict) else ():
        if isinstance(counts, dict) and "input_tokens" in counts:
            found[str(name)] = counts_in(counts, "input_tokens", "output_tokens", "cached", "_")
    return found


class GeminiAdapter:
    # Set by an IDE's Gemini companion in its terminals: a headless run in a worktree must not
    # attach to the operator's IDE (diffs opened there, its folders added to the workspace).
    strip_env: frozenset[str] = frozenset(
        {
            "GEMINI_CLI_IDE_SERVER_PORT",
            "GEMINI_CLI_IDE_AUTH_TOKEN",
            "GEMINI_CLI_IDE_WORKSPACE_PATH",
            "GEMINI_CLI_IDE_PID",
        }
    )
    # ``--resume <uuid>`` resumes a session of the same project (the same worktree path)
    # headless; ``--session-id`` makes the id the reconciler chose the session's own.
    sessions: bool = True
    env_defaults: Mapping[str, str] = MappingProxyType(
        {
            # Folder trust is on by default (0.61) and every worktree is a new folder: a
            # headless run in an untrusted one exits 55 at once. The variable rather than
            # --skip-trust (which only sets it) so that a lane or Agent can still say "false".
            TRUST_VARIABLE: "true",
        }
    )
    tally: type[Tally] | None = GeminiTally
    login: Login | None = Login(
        (
            "GEMINI_API_KEY",
            "GOOGLE_API_KEY",
            "GOOGLE_APPLICATION_CREDENTIALS",
            "GOOGLE_GENAI_USE_VERTEXAI",
        ),
        ("~/.gemini/oauth_creds.json",),
        "export GEMINI_API_KEY in the lane user's ~/.profile, or run `gemini` once as the lane "
        "user and log in",
    )

    def doctor(self, agent: AgentRef, env: Mapping[str, str]) -> tuple[str, str] | None:
        if env.get(TRUST_VARIABLE, "").strip().lower() in ("false", "0"):
            return (
                f"{TRUST_VARIABLE}={env[TRUST_VARIABLE]} in the agent's environment: Gemini "
                "CLI refuses every headless run in a worktree (exit 55, untrusted folder).",
                f"remove {TRUST_VARIABLE} from the lane's or the Agent's env",
            )
        return None

    def prepare(self, agent: AgentRef, run: Launch) -> None:
        """Set the user settings ``settings_pins`` names where they are missing (no flag or
        variable can say them)."""
        path = settings_path(run.env)
        if path is not None:
            pin_settings(path, settings_pins(run.env))

    def build(self, agent: AgentRef, run: Launch) -> tuple[list[str], bool]:
        argv = [*(agent.command or ["gemini"]), "--output-format", "stream-json"]
        if run.resume:  # the CLI refuses --session-id together with --resume
            argv += ["--resume", run.resume]
        elif run.session_id:
            argv += ["--session-id", run.session_id]
        if not chooses_approval(agent.args):
            # Headless, the default mode offers the model no tool that edits or runs anything;
            # the lane's user and worktree are the boundary. ``--yolo`` is the older spelling.
            argv.append(DEFAULT_APPROVAL)
        argv += agent.args
        return argv, True

    def parse(self, output_path: str, exit: ExitInfo) -> AgentResult:
        data, whole = _read(output_path)
        reading = _Reading()
        for event in events(data):
            reading.feed(event)
        if reading.session_id is None and not whole:
            reading.session_id = _head_session_id(output_path)
        result = reading.result
        if result is None and reading.turns == 0 and reading.session_id is None:
            # Not a stream at all (an old CLI, a wrapper script, an error before start-up).
            tail = data[-FINAL_TEXT_LIMIT:].decode("utf-8", errors="replace")
            return AgentResult(ok=False, subtype=_exit_subtype(exit), final_text=tail)
        status = _str(result.get("status")) if result is not None else None
        stats = result.get("stats") if result is not None else None
        input_tokens, output_tokens = tokens_of(stats if isinstance(stats, dict) else {})
        error = result.get("error") if result is not None else None
        error_message = (_str(error.get("message")) if isinstance(error, dict) else None) or (
            reading.last_error
        )
        ok = exit.exit_code == 0 and status == "success"
        if ok:
            subtype: str | None = "success"
        elif exit.exit_code == 0:
            # Exit 0 without a success result: the model failed (an invalid stream) or the
            # result line never arrived; no result is no verdict.
            subtype = "error" if status is not None else None
        else:
            subtype = _exit_subtype(exit)
        text = reading.final_text()
        if not ok and error_message and error_message not in text:
            text = f"{text}\n{error_message}" if text else error_message
        return AgentResult(
            ok=ok,
            error=None if ok else one_line(error_message),
            subtype=subtype,
            session_id=reading.session_id,
            cost_usd=None,  # Gemini CLI reports tokens, not money
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            num_turns=reading.turns or None,
            final_text=_clip(text),
        )

    def render(self, line: str) -> list[str]:
        return render_json_line(line, render_event)


def _exit_subtype(exit: ExitInfo) -> str | None:
    if exit.exit_code == 0:
        return None
    if exit.exit_code is None:
        return "error"  # killed by a signal
    if exit.exit_code in EXIT_SUBTYPES:
        return EXIT_SUBTYPES[exit.exit_code]
    if 144 <= exit.exit_code <= 255:  # an HTTP 400-511 status, cut to 8 bits
        return HTTP_EXIT_SUBTYPES.get(exit.exit_code + 256, "api_error")
    return "error"
