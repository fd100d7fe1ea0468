"""A fake ``gemini`` for the adapter tests: checks how it was started, then replays a stream.

Configured through its environment (set by the test in the Agent's ``env``):

- ``FAKE_GEMINI_ARGV``: the exact argument list expected after the program name (JSON list);
- ``FAKE_GEMINI_PROMPT``: the exact prompt expected on stdin;
- ``FAKE_GEMINI_STREAM``: the recorded stdout to replay, a file name in this directory;
- ``FAKE_GEMINI_EXIT``: the exit code to end with (default 0);
- ``FAKE_GEMINI_STDERR``: text to write to stderr before exiting.

Like Gemini CLI 0.61 with folder trust on (its default), it exits 55 at once unless
``GEMINI_CLI_TRUST_WORKSPACE`` is ``true``: every worktree is a folder it has never seen.

Like the real CLI, it emits the session id it was given (``--session-id`` or ``--resume``) in
place of ``@SESSION_ID@``. Anything unexpected ends it with status 2 and a sentence on stderr,
so a wrong command line, prompt, working directory or environment fails the test.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_SESSION = "5d2c61c8-4b7e-4f0e-9a57-1f3b1c0f2a11"
# Must never reach the agent: the adapter strips them.
STRIPPED = (
    "GEMINI_CLI_IDE_SERVER_PORT",
    "GEMINI_CLI_IDE_AUTH_TOKEN",
    "GEMINI_CLI_IDE_WORKSPACE_PATH",
    "GEMINI_CLI_IDE_PID",
)


def refuse(reason: str) -> None:
    sys.stderr.write(f"fake gemini: {reason}\n")
    sys.exit(2)


def main() -> None:
    argv = sys.argv[1:]
    expected = json.loads(os.environ.get("FAKE_GEMINI_ARGV", "null"))
    if argv != expected:
        refuse(f"argv {argv!r}, expected {expected!r}")
    if "-p" in argv or "--prompt" in argv:
        refuse("the prompt must arrive on stdin, not as -p/--prompt")
    prompt = sys.stdin.buffer.read()
    want = os.environ.get("FAKE_GEMINI_PROMPT", "").encode("utf-8")
    if prompt != want:
        refuse(f"stdin {prompt[:200]!r}, expected {want[:200]!r}")
    prompt_file = os.environ.get("RECONCILER_PROMPT_FILE", "")
    if not prompt_file or Path(prompt_file).read_bytes() != prompt:
        refuse("stdin is not the run's prompt file")
    workspace = os.environ.get("RECONCILER_WORKSPACE", "")
    if os.path.realpath(os.getcwd()) != os.path.realpath(workspace):
        refuse(f"cwd {os.getcwd()}, expected the task's worktree {workspace}")
    if os.environ.get("GEMINI_CLI_TRUST_WORKSPACE") != "true":
        sys.stderr.write(
            "Gemini CLI is not running in a trusted directory. To proceed, either use "
            "`--skip-trust`, set the `GEMINI_CLI_TRUST_WORKSPACE=true` environment variable, or "
            "trust this directory in interactive mode.\n"
        )
        sys.exit(55)
    leaked = [name for name in STRIPPED if name in os.environ]
    if leaked:
        refuse(f"environment carries {', '.join(leaked)}")
    session = DEFAULT_SESSION
    for flag in ("--session-id", "--resume"):
        if flag in argv:
            session = argv[argv.index(flag) + 1]
    stream = (HERE / os.environ["FAKE_GEMINI_STREAM"]).read_bytes()
    sys.stdout.buffer.write(stream.replace(b"@SESSION_ID@", session.encode()))
    sys.stdout.flush()
    sys.stderr.write(os.environ.get("FAKE_GEMINI_STDERR", ""))
    sys.exit(int(os.environ.get("FAKE_GEMINI_EXIT", "0")))


if __name__ == "__main__":
    main()
