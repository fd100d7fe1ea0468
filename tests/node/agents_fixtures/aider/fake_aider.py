"""A fake ``aider`` for the adapter tests: checks its command line, then replays a transcript.

It parses its arguments the way aider does (argparse: an unknown option is a usage error on
stderr and exit 2) and insists on what the reconciler must pass for a headless run; anything
missing or wrong is reported on stderr with exit 2, which fails the test that started it. The
output is recorded aider 0.8x output in its plain (``--no-pretty``) form.

Environment (set through the Agent's ``env``):

- ``FAKE_AIDER_SCENARIO``: success (default), nocost, failure, api-error, retried, huge, silent
- ``FAKE_AIDER_RECORD``: copy the message file's bytes here, and the argv to ``<record>.argv``
- ``FAKE_AIDER_AUTO_COMMITS``: ``1`` (default) or ``0``, what ``--[no-]auto-commits`` must say
- ``FAKE_AIDER_MODEL``: the ``--model`` that must be given, if any
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

BANNER = (
    "Aider v0.86.2\n"
    "Main model: anthropic/claude-sonnet-4-20250514 with diff edit format, infinite output\n"
    "Weak model: anthropic/claude-3-5-haiku-20241022\n"
    "Git repo: .git with 1 files\n"
    "Repo-map: using 4096 tokens, auto refresh\n"
)
IDENTITY = ["-c", "user.name=Test User (aider)", "-c", "user.email=test@example.invalid"]


def fail(message: str) -> None:
    sys.stderr.write(f"fake aider: {message}\n")
    sys.exit(2)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aider")
    p.add_argument("--message-file", "-f")
    p.add_argument("--model")
    p.add_argument("--yes-always", action="store_true", default=None)
    p.add_argument("--chat-history-file")
    p.add_argument("--input-history-file")
    p.add_argument("--show-release-notes", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--analytics", action=argparse.BooleanOptionalAction, default=None)
    booleans = ("pretty", "stream", "check-update", "gitignore", "auto-commits")
    for name in (*booleans, "show-model-warnings", "detect-urls"):
        p.add_argument(f"--{name}", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--no-suggest-shell-commands", action="store_true")
    return p


def check(args: argparse.Namespace, run_dir: str) -> bytes:
    """The message, once the command line is what a headless reconciler run needs."""
    if not args.message_file:
        fail("no --message-file: aider would start an interactive chat and wait for input")
    message = Path(args.message_file)
    if not message.is_file():
        fail(f"--message-file {message} does not exist")
    if os.path.dirname(os.path.abspath(message)) != run_dir:
        fail(f"--message-file {message} is not in the run directory {run_dir}")
    wanted = {
        "yes_always": True,
        "pretty": False,
        "stream": False,
        "check_update": False,
        "show_release_notes": False,
        "analytics": False,
        "gitignore": False,
        "show_model_warnings": False,
        "detect_urls": False,
        "auto_commits": os.environ.get("FAKE_AIDER_AUTO_COMMITS", "1") == "1",
    }
    for name, value in wanted.items():
        if getattr(args, name) is not value:
            fail(f"--{name.replace('_', '-')} is {getattr(args, name)!r}, expected {value!r}")
    for name in ("chat_history_file", "input_history_file"):
        path = getattr(args, name)
        if path is None or os.path.dirname(path) != run_dir:
            fail(f"--{name.replace('_', '-')} {path!r} is not in the run directory {run_dir}")
    model = os.environ.get("FAKE_AIDER_MODEL")
    if model and args.model != model:
        fail(f"--model is {args.model!r}, expected {model!r}")
    if os.path.realpath(os.getcwd()) != os.path.realpath(os.environ["RECONCILER_WORKSPACE"]):
        fail(f"working directory {os.getcwd()} is not the task's workspace")
    if os.environ.get("LITELLM_LOCAL_MODEL_COST_MAP") != "True":
        fail("LITELLM_LOCAL_MODEL_COST_MAP is not True: litellm would fetch its price list")
    if sys.stdin.buffer.read():
        fail("stdin is not empty: the prompt must travel in the message file only")
    return message.read_bytes()


def edit_and_commit(auto_commits: bool) -> None:
    Path("feature.txt").write_text("new feature\n")
    print("Applied edit to feature.txt")
    if not auto_commits:
        return
    subprocess.run(["git", *IDENTITY, "add", "feature.txt"], check=True)
    subprocess.run(
        ["git", *IDENTITY, "commit", "-q", "-m", "feat: Add feature.txt"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    sha = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()
    print(f"Commit {sha} feat: Add feature.txt")


def main() -> None:
    args = parser().parse_args()
    run_dir = os.environ["RECONCILER_RUN_DIR"]
    message = check(args, run_dir)
    record = os.environ.get("FAKE_AIDER_RECORD")
    if record:
        Path(record).write_bytes(message)
        Path(record + ".argv").write_text(json.dumps(sys.argv[1:]))
    with open(args.chat_history_file, "a", encoding="utf-8") as history:
        history.write("\n# aider chat started at 2025-06-01 12:00:00\n\n")
        history.write("#### " + message.decode("utf-8", errors="replace") + "\n")
    Path(args.input_history_file).touch()

    scenario = os.environ.get("FAKE_AIDER_SCENARIO", "success")
    print(BANNER)
    if scenario == "success":
        print("I'll create feature.txt with the new feature.\n")
        print("feature.txt\n```\n<<<<<<< SEARCH\n=======\nnew feature\n>>>>>>> REPLACE\n```\n")
        print("Tokens: 2.3k sent, 120 received. Cost: $0.01 message, $0.01 session.")
        edit_and_commit(args.auto_commits)
        print("\nThe feature is in place. TASK_COMPLETE\n")
        # Both cache figures: aider puts the cost on a line of its own.
        print("Tokens: 3.2k sent, 1.0k cache write, 2.1k cache hit, 80 received.")
        print("Cost: $0.02 message, $0.03 session.")
    elif scenario == "nocost":
        # A model aider has no prices for: token counts, no cost.
        print("Adding the feature.\n")
        print("Tokens: 672 sent, 23 received.")
        edit_and_commit(args.auto_commits)
    elif scenario == "failure":
        print("Tokens: 1,204 sent, 56 received. Cost: $0.0040 message, $0.0040 session.")
        sys.stdout.flush()
        sys.stderr.write("Traceback (most recent call last):\nOSError: [Errno 28] No space left\n")
        sys.exit(1)
    elif scenario == "api-error":
        # aider prints the model error (wrapped at 80 columns by rich) and exits 0.
        print(
            "litellm.AuthenticationError: AnthropicException - \n"
            '{"type":"error","error":{"type":"authentication_error","message":"invalid \n'
            'x-api-key"}}\n'
            "The API provider is not able to authenticate you. Check your API key."
        )
    elif scenario == "retried":
        print("litellm.InternalServerError: AnthropicException - Overloaded\n")
        print("The API provider's servers are down or overloaded.")
        print("Retrying in 0.2 seconds...")
        print("Done. TASK_COMPLETE\n")
        print("Tokens: 12k sent, 345 received. Cost: $0.04 message, $0.04 session.")
    elif scenario == "huge":
        line = "x" * 99 + "\n"
        sys.stdout.write(line * 2000)
        print("Tokens: 45k sent, 2.5k received. Cost: $0.85 message, $0.85 session.")
        print("END-OF-OUTPUT")
    elif scenario != "silent":
        fail(f"unknown FAKE_AIDER_SCENARIO {scenario!r}")


if __name__ == "__main__":
    main()
