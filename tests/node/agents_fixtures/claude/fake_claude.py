"""A stand-in for the ``claude`` CLI: checks how it was started, then replays a recorded stream.

The command line is read with the grammar of ``claude -p`` and held to what Claude Code itself
insists on (``--output-format stream-json`` needs ``--verbose`` in print mode, ``--session-id``
is a UUID and cannot go with ``--resume``) and to what reconciler promised: the exact argument
list, the prompt on stdin (never as an argument) read from the run's prompt file, the task's
worktree as the working directory, and no variable of an outer Claude Code session (Claude
Code refuses to start inside one). Anything wrong ends it with ``error: …`` on stderr and exit
status 2, before any output, so a wrong command line fails the test that started it.

Driven by the environment (set by the test in the Agent's ``env``):

- ``FAKE_CLAUDE_ARGV``: the exact argument list expected after the program name (JSON list);
- ``FAKE_CLAUDE_PROMPT``: the exact prompt expected on stdin;
- ``FAKE_CLAUDE_STREAM``: the recorded stdout to replay, a file name in this directory;
- ``FAKE_CLAUDE_EXIT``: the exit status afterwards (default 0), or ``SIGKILL`` to die right
  after writing the stream (a stream cut off mid-line);
- ``FAKE_CLAUDE_RECORD``: a file that gets one JSON line per call: argv, cwd and stdin.

Like the real CLI, the stream names the session it was given (``--session-id`` or ``--resume``)
where the recording says ``@SESSION_ID@``, and its working directory where it says ``@CWD@``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_SESSION = "9a0e5c3b-1f7d-4e26-8b4a-c2d91e6f7a05"  # what claude picks unasked
# Set by Claude Code for the processes it starts; must never reach the agent.
OUTER_SESSION = ("CLAUDECODE", "CLAUDE_CODE_ENTRYPOINT")
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)

FLAGS = {
    "-p": "--print",
    "--print": "--print",
    "--verbose": "--verbose",
    "--dangerously-skip-permissions": "--dangerously-skip-permissions",
    "--include-partial-messages": "--include-partial-messages",
    "--fork-session": "--fork-session",
    "--continue": "--continue",
    "-c": "--continue",
}
VALUES = {
    "--output-format": "--output-format",
    "--input-format": "--input-format",
    "--session-id": "--session-id",
    "--resume": "--resume",
    "-r": "--resume",
    "--max-budget-usd": "--max-budget-usd",
    "--max-turns": "--max-turns",
    "--model": "--model",
    "--fallback-model": "--fallback-model",
    "--permission-mode": "--permission-mode",
    "--append-system-prompt": "--append-system-prompt",
    "--system-prompt": "--system-prompt",
    "--allowedTools": "--allowedTools",
    "--allowed-tools": "--allowedTools",
    "--disallowedTools": "--disallowedTools",
    "--disallowed-tools": "--disallowedTools",
    "--add-dir": "--add-dir",
    "--mcp-config": "--mcp-config",
    "--settings": "--settings",
}
REPEATABLE = {"--add-dir", "--allowedTools", "--disallowedTools", "--mcp-config"}


def refuse(message: str) -> None:
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.write(f"fake claude got: {json.dumps(sys.argv[1:])}\n")
    sys.exit(2)


def parse(argv: list[str]) -> dict[str, list[str]]:
    """The options of the command line, by canonical name; exits 2 on what claude rejects."""
    seen: dict[str, list[str]] = {}
    i = 0
    while i < len(argv):
        token = argv[i]
        i += 1
        name, eq, attached = token.partition("=")
        if name in FLAGS and not eq:
            canonical, value = FLAGS[name], ""
        elif name in VALUES:
            canonical = VALUES[name]
            if eq:
                value = attached
            elif i < len(argv):
                value = argv[i]
                i += 1
            else:
                refuse(f"option '{name} <value>' argument missing")
        elif token.startswith("-"):
            refuse(f"unknown option '{token}'")
        else:
            refuse(f"the prompt must arrive on stdin, not as the argument {token!r}")
        if canonical in seen and canonical not in REPEATABLE:
            refuse(f"option '{canonical}' given more than once")
        seen.setdefault(canonical, []).append(value)
    return seen


def check_rules(seen: dict[str, list[str]]) -> str | None:
    """Claude Code's own rules for a headless stream-json run; the session it will use."""
    if "--print" not in seen:
        refuse("no -p: claude would start its interactive interface and wait for a terminal")
    if seen.get("--output-format") != ["stream-json"]:
        refuse(f"--output-format {seen.get('--output-format')}, expected stream-json")
    if "--verbose" not in seen:
        refuse("When using --print, --output-format=stream-json requires --verbose")
    if "--session-id" in seen and ("--resume" in seen or "--continue" in seen):
        if "--fork-session" not in seen:
            refuse(
                "--session-id can only be used with --continue or --resume if "
                "--fork-session is also specified."
            )
    for value in seen.get("--session-id", []) + seen.get("--resume", []):
        if not UUID.match(value):
            refuse(f"Invalid session ID {value!r}. Must be a valid UUID.")
    for value in seen.get("--max-budget-usd", []):
        try:
            ok = float(value) > 0
        except ValueError:
            ok = False
        if not ok:
            refuse(f"--max-budget-usd {value!r} must be a positive number")
    for value in seen.get("--max-turns", []):
        if not value.isdigit() or int(value) < 1:
            refuse(f"--max-turns {value!r} must be a positive integer")
    given = seen.get("--resume", []) + seen.get("--session-id", [])
    return given[0] if given else None


def check_contract(argv: list[str], stdin: bytes) -> None:
    """What reconciler promised to send."""
    expected = json.loads(os.environ.get("FAKE_CLAUDE_ARGV", "null"))
    if argv != expected:
        refuse(f"argv {argv!r}, expected {expected!r}")
    if not stdin:
        refuse(
            "Input must be provided either through stdin or as a prompt argument when using --print"
        )
    want = os.environ.get("FAKE_CLAUDE_PROMPT", "").encode("utf-8")
    if stdin != want:
        refuse(f"stdin {stdin[:200]!r}, expected {want[:200]!r}")
    prompt_file = os.environ.get("RECONCILER_PROMPT_FILE", "")
    if not prompt_file or Path(prompt_file).read_bytes() != stdin:
        refuse("stdin is not the run's prompt file")
    workspace = os.environ.get("RECONCILER_WORKSPACE", "")
    if os.path.realpath(os.getcwd()) != os.path.realpath(workspace):
        refuse(f"cwd {os.getcwd()}, expected the task's worktree {workspace}")
    leaked = [name for name in OUTER_SESSION if name in os.environ]
    if leaked:
        refuse(f"Claude Code cannot be launched inside another Claude Code session ({leaked})")


def main() -> None:
    argv = sys.argv[1:]
    session = check_rules(parse(argv))
    stdin = sys.stdin.buffer.read()  # print mode reads all of stdin before the first turn
    record = os.environ.get("FAKE_CLAUDE_RECORD")
    if record:
        with open(record, "a") as f:
            entry = {"argv": argv, "cwd": os.getcwd(), "stdin": stdin.decode("utf-8")}
            f.write(json.dumps(entry) + "\n")
    check_contract(argv, stdin)
    stream = (HERE / os.environ["FAKE_CLAUDE_STREAM"]).read_bytes()
    stream = stream.replace(b"@SESSION_ID@", (session or DEFAULT_SESSION).encode())
    stream = stream.replace(b"@CWD@", json.dumps(os.getcwd())[1:-1].encode())
    sys.stdout.buffer.write(stream)
    sys.stdout.buffer.flush()
    how = os.environ.get("FAKE_CLAUDE_EXIT", "0")
    if how == "SIGKILL":
        os.kill(os.getpid(), signal.SIGKILL)
    sys.exit(int(how))


if __name__ == "__main__":
    main()
