"""The ``aider`` adapter: ``aider --message-file PROMPT --yes-always …``, one message, then exit.

Aider has no machine-readable output: stdout is its human transcript (banner, the model's
reply, ``Applied edit to …``, ``Commit …``, and one ``Tokens: … sent, … received. Cost: $…
message, $… session.`` report per model call). Its exit status says little: it exits 0 after an
API error (bad key, unreachable endpoint) as after a successful edit, so the verdict here is the
exit status plus "the run did not end on a model error"; whether the work was done is for the
task's success criteria (commits ahead, checks, markers) to say.

Commits are aider's: ``--auto-commits`` is passed unless ``args`` choose, or the Agent leaves
commits to the reconciler (``commits: reconciler``: ``--no-auto-commits``, and the run's
supervisor commits). Under ``--yes-always`` aider declines every shell command the model
proposes (``git commit`` included), so with neither a task with ``requireCommits`` could never
succeed. The chat and input histories go to the run directory,
not into the worktree. No sessions: aider has no resumable session id.

Spend as the run goes: the ``Tokens: … sent, … received.`` reports and the session cost of the
last ``Cost:`` report. Progress is the end of the last transcript line that is not part of a
model-call error being retried. Aider does not tell its tool calls (edits, commands) apart.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import ClassVar, Literal

from reconciler.node import files
from reconciler.node.agents.launch import Launch
from reconciler.node.agents.login import Login
from reconciler.node.agents.tally import CHUNK, Tally, add, no_counts
from reconciler.node.agents.values import FINAL_TEXT_LIMIT, one_line
from reconciler.node.files import tail_bytes
from reconciler.protocol import AgentRef, AgentResult, ExitInfo

READ_LIMIT = 8 * 1024 * 1024
CHAT_HISTORY = "aider.chat.history.md"
INPUT_HISTORY = "aider.input.history"
API_ERROR = "api_error"

# Always passed: headless, plain, quiet and private. Aider's options parser reads the command
# line after config files and AIDER_* variables, so these win over a repository's
# .aider.conf.yml. --no-analytics turns analytics off for this run only (--analytics-disable
# would write a permanent opt-out into the lane user's ~/.aider); --no-gitignore stops aider
# from adding `.aider*` to the repository's .gitignore, a change nobody asked for.
# --yes-always also says yes to aider's offers to open a web page, so two more are off: the
# warnings about a model aider has no metadata for (any `openai/<name>` behind a private
# endpoint) end in "Open documentation url?", which starts the node's web browser; and URLs in
# the prompt (or in a check's output fed back) are scraped, after installing Playwright and
# Chromium into aider's own environment (checked with aider 0.86.2).
FIXED_FLAGS = (
    "--yes-always",
    "--no-pretty",
    "--no-stream",
    "--no-check-update",
    "--no-show-release-notes",
    "--no-analytics",
    "--no-gitignore",
    "--no-show-model-warnings",
    "--no-detect-urls",
)

# A count as aider prints it: "672", "1,204" (older versions), "2.3k", "12k".
_COUNT = r"(\d[\d,]*(?:\.\d+)?[kKmM]?)"
# Whitespace between words may be a line break: aider prints through rich, which wraps long
# lines at the console width (80 columns when stdout is not a terminal, unless COLUMNS is set).
TOKENS = re.compile(
    rf"^[ \t]*Tokens:\s+{_COUNT}\s+sent,"
    rf"(?:\s+{_COUNT}\s+cache\s+write,)?"
    rf"(?:\s+{_COUNT}\s+cache\s+hit,)?"
    rf"\s+{_COUNT}\s+received\.",
    re.MULTILINE,
)
# "message" in current aider, "request" in older versions.
COST = re.compile(
    r"Cost:\s+\$(\d+(?:\.\d+)?)\s+(?:message|request),\s+\$(\d+(?:\.\d+)?)\s+session\."
)
# Model-call failures as aider prints them (litellm's exception text), at the start of a line.
_MODEL_ERROR = re.compile(r"^litellm\.[A-Za-z]+(?:Error|Exception)\b", re.MULTILINE)
# aider's line for a commit it made: "Commit 3f2a1bc fix: …".
_COMMIT = re.compile(r"^Commit [0-9a-f]{7,40}\b", re.MULTILINE)


def _has_flag(args: list[str], *names: str) -> bool:
    """Whether ``args`` hold one of ``names`` as ``--name`` or ``--name=value``."""
    return any(arg in names or arg.split("=", 1)[0] in names for arg in args)


def count(text: str) -> int:
    """A token count as aider prints it: ``2.3k`` → 2300, ``1,204`` → 1204."""
    text = text.replace(",", "")
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:].lower(), 1)
    if scale != 1:
        text = text[:-1]
    return round(float(text) * scale)


def _decode_tail(data: bytes) -> str:
    """``data`` as text, without the partial UTF-8 character a byte window may start with."""
    skip = 0
    while skip < min(3, len(data)) and data[skip] & 0xC0 == 0x80:
        skip += 1
    return data[skip:].decode("utf-8", errors="replace")


_LITELLM_ERROR = re.compile(r"^litellm\.\w+")
_RETRY = re.compile(r"^Retrying in [\d.]+ seconds\.\.\.$")
_ERROR_TAIL = 3  # lines after litellm's error line that still belong to it


class AiderTally(Tally):
    kind: Literal["aider"] = "aider"
    lines_at: int = 0  # where the transcript has been read line by line
    error_lines: int = 0  # lines still to come of a model-call error it may retry

    counts_tools: ClassVar[bool] = False

    def consume(self, data: bytes, final: bool) -> int:
        """The reports may wrap over lines: consume up to the end of the last whole report (or,
        with none, all but the last KiB, where one may be starting)."""
        text = data.decode("utf-8", errors="surrogateescape")  # offsets map back to bytes exactly
        end_char = 0
        for m in TOKENS.finditer(text):
            counts = [count(m.group(1)), count(m.group(4)), 0, 0]
            self.models[""] = add(self.models.get("", no_counts()), counts)
            self.turns += 1  # one report per model call
            end_char = m.end()
        for m in COST.finditer(text):
            self.reported_usd = float(m.group(2))  # the session total so far
            end_char = max(end_char, m.end())
        if final:
            return len(data)
        if end_char:
            return len(text[:end_char].encode("utf-8", errors="surrogateescape"))
        cut = data.rfind(b"\n", 0, max(0, len(data) - 1024))
        return cut + 1 if cut >= 0 else 0

    def read_more(self, run_dir: str, progressed: bool) -> bool:
        """Progress: the end of the last transcript line that is not a model-call error being
        retried (litellm's error line, its rest wrapped at the console width, aider's
        explanation and ``Retrying in N seconds...``: minutes of output that are no progress)."""
        try:
            with open(os.path.join(run_dir, files.OUTPUT_LOG), "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                handle.seek(self.lines_at)
                data = handle.read(max(0, min(size - self.lines_at, 4 * CHUNK)))
        except OSError:
            return False
        end = data.rfind(b"\n") + 1
        if end == 0:
            return False
        at = self.lines_at
        for raw in data[:end].split(b"\n")[:-1]:
            at += len(raw) + 1
            line = raw.decode("utf-8", errors="replace").strip()
            if _LITELLM_ERROR.match(line):
                self.error_lines = _ERROR_TAIL
                self.last_event = f"retrying: {line[:180]}"
            elif _RETRY.match(line):
                self.error_lines = 0  # what follows is the retried call's
            elif line and self.error_lines:
                self.error_lines -= 1  # the error's wrapped rest, or aider's explanation of it
            elif line:
                self.event_end, self.last_event = at, line[:200]
        self.lines_at += end
        return True


class AiderAdapter:
    # Nothing to strip: the agent's environment is built from the lane user's login environment
    # (never the reconciler's), and AIDER_* variables in the lane's or agent's env are the
    # operator's configuration of aider, which it should see.
    strip_env: frozenset[str] = frozenset()
    # Aider keeps no session a later process can resume by id (--restore-chat-history replays
    # a Markdown transcript, all or nothing); every iteration starts a fresh chat.
    sessions: bool = False
    env_defaults: Mapping[str, str] = MappingProxyType(
        {
            # litellm (aider's model client) downloads its model price list from GitHub at
            # every start unless told to use the copy it ships; aider's own daily download of
            # that list has no switch (see docs/agents.md).
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        }
    )
    tally: type[Tally] | None = AiderTally
    # the key of whichever provider's model the Agent chose
    login: Login | None = Login(
        (
            "ANTHROPIC_API_KEY",
            "OPENAI_API_KEY",
            "GEMINI_API_KEY",
            "DEEPSEEK_API_KEY",
            "OPENROUTER_API_KEY",
            "AIDER_ANTHROPIC_API_KEY",
            "AIDER_OPENAI_API_KEY",
        ),
        ("~/.aider/oauth-keys.env", "~/.env"),
        "export the API key of the agent's model (e.g. ANTHROPIC_API_KEY) in the lane user's "
        "~/.profile",
    )

    def doctor(self, agent: AgentRef, env: Mapping[str, str]) -> tuple[str, str] | None:
        return None  # its key and model are agent-auth's; the rest is per repository

    def prepare(self, agent: AgentRef, run: Launch) -> None:
        pass  # flags and variables say everything

    def build(self, agent: AgentRef, run: Launch) -> tuple[list[str], bool]:
        args = list(agent.args)
        argv = [*(agent.command or ["aider"]), "--message-file", run.prompt_file, *FIXED_FLAGS]
        if not _has_flag(args, "--auto-commits", "--no-auto-commits"):
            # aider commits, unless the Agent leaves that to the reconciler
            argv.append("--no-auto-commits" if agent.commits == "reconciler" else "--auto-commits")
        run_dir = os.path.dirname(run.prompt_file)
        if not _has_flag(args, "--chat-history-file"):
            argv += ["--chat-history-file", os.path.join(run_dir, CHAT_HISTORY)]
        if not _has_flag(args, "--input-history-file"):
            argv += ["--input-history-file", os.path.join(run_dir, INPUT_HISTORY)]
        argv += args
        return argv, False  # the prompt travels in the file; stdin is /dev/null

    def parse(self, output_path: str, exit: ExitInfo) -> AgentResult:
        data = tail_bytes(output_path, READ_LIMIT)
        if len(data) == READ_LIMIT:
            data = data.partition(b"\n")[2]  # the first line was cut by the read window
        text = data.decode("utf-8", errors="replace")
        input_tokens = output_tokens = None
        last_report = -1
        for m in TOKENS.finditer(text):
            # One report per model call, counting that call only: the run's total is the sum.
            input_tokens = (input_tokens or 0) + count(m.group(1))
            output_tokens = (output_tokens or 0) + count(m.group(4))
            last_report = m.end()
        costs = COST.findall(text)
        cost_usd = float(costs[-1][1]) if costs else None  # the session total so far
        errors = [m.start() for m in _MODEL_ERROR.finditer(text)]
        commits = [m.start() for m in _COMMIT.finditer(text)]
        # A model error after the last usage report: the last call failed (retries exhausted,
        # a rejected key, …) and aider gave up, yet it exits 0. A transient error that aider
        # retried successfully is followed by that call's report; a failed commit-message call
        # (the weak model, which prints no report) is followed by the commit, made anyway.
        ended_on_error = bool(errors) and errors[-1] > max([last_report, *commits])
        return AgentResult(
            ok=exit.exit_code == 0 and not ended_on_error,
            subtype=API_ERROR if ended_on_error else None,
            error=_error_at(text, errors[-1]) if ended_on_error else None,
            cost_usd=cost_usd,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            final_text=_decode_tail(data[-FINAL_TEXT_LIMIT:]),
        )

    def render(self, line: str) -> list[str]:
        return [line]  # a transcript for people already


def _error_at(text: str, start: int) -> str | None:
    """litellm's error line at ``start``, with its rest when rich wrapped it (a wrapped line
    keeps its trailing space)."""
    lines = text[start:].split("\n", 2)
    line = lines[0]
    if line.endswith(" ") and len(lines) > 1:
        line += lines[1]
    return one_line(line)
