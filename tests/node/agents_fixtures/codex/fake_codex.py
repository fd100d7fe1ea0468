"""A stand-in for the ``codex`` CLI: checks its command line, stdin and environment the way the
real one (and reconciler's contract) would, then replays a recorded ``exec --json`` stream.

The command line is parsed with the grammar of ``codex exec`` (codex-rs/exec/src/cli.rs): the
options of ``exec`` come before the ``resume`` subcommand, which accepts only a few of them
(not ``--sandbox``, ``-C`` or ``--add-dir``), a flag given twice is a usage error, and so on.
Anything wrong ends it like clap does: a message on stderr and exit status 2, before any output.

Driven by the environment:

- ``FAKE_CODEX_STREAM``: the file whose bytes are written to stdout, as they are.
- ``FAKE_CODEX_EXIT``: the exit status afterwards (default 0), or ``SIGKILL`` to die mid-stream.
- ``FAKE_CODEX_EXPECT``: JSON ``{"resume": ID or null, "sandbox": "workspace-write" |
  "danger-full-access" | "bypass" | ..., "args": [...], "prompt": "..."}``: what reconciler must
  send; ``args`` must appear, in order and together, among the options of ``exec``.
  ``OPENAI_BASE_URL`` in the environment, which the real codex ignores, must be configured as
  the model provider (``-c model_provider=NAME -c model_providers.NAME={base_url=…, …}``), or
  the run would go to api.openai.com.
- ``FAKE_CODEX_RECORD``: a file that gets one JSON line per call: argv, cwd and stdin.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tomllib
from pathlib import Path
from typing import NoReturn

# Options of `codex exec` (before any subcommand): flags, and options that take a value.
EXEC_FLAGS = {
    "--json",
    "--experimental-json",
    "--dangerously-bypass-approvals-and-sandbox",
    "--yolo",
    "--skip-git-repo-check",
    "--ephemeral",
    "--oss",
    "--full-auto",
}
EXEC_VALUES = {
    "--sandbox",
    "-s",
    "--model",
    "-m",
    "--config",
    "-c",
    "--profile",
    "-p",
    "--cd",
    "-C",
    "--add-dir",
    "--output-last-message",
    "-o",
    "--color",
    "--output-schema",
    "--image",
    "-i",
    "--local-provider",
    "--enable",
    "--disable",
}
# What `codex exec resume` accepts after the word `resume` (global options and its own).
RESUME_FLAGS = {
    "--json",
    "--experimental-json",
    "--dangerously-bypass-approvals-and-sandbox",
    "--yolo",
    "--skip-git-repo-check",
    "--ephemeral",
    "--last",
    "--all",
}
RESUME_VALUES = {
    "--model",
    "-m",
    "--config",
    "-c",
    "--output-last-message",
    "-o",
    "--image",
    "-i",
    "--enable",
    "--disable",
}
ALIASES = {
    "-s": "--sandbox",
    "-m": "--model",
    "-c": "--config",
    "-p": "--profile",
    "-C": "--cd",
    "-o": "--output-last-message",
    "-i": "--image",
    "--experimental-json": "--json",
    "--yolo": "--dangerously-bypass-approvals-and-sandbox",
}
REPEATABLE = {"--config", "--add-dir", "--image", "--enable", "--disable"}
SANDBOX_MODES = {"read-only", "workspace-write", "danger-full-access"}
OUTER_SESSION = ("CODEX_SANDBOX", "CODEX_SANDBOX_NETWORK_DISABLED", "CODEX_THREAD_ID")


def usage(message: str) -> NoReturn:
    sys.stderr.write(f"error: {message}\n\nUsage: codex exec [OPTIONS] [PROMPT]\n")
    sys.stderr.write(f"fake codex got: {json.dumps(sys.argv[1:])}\n")
    sys.exit(2)


def parse(argv: list[str]) -> dict[str, object]:
    """The command line as codex would read it; exits 2 on what codex would reject."""
    if not argv or argv[0] != "exec":
        usage(f"unrecognized subcommand {argv[:1]!r}; expected 'exec'")
    seen: dict[str, list[str]] = {}
    options: list[str] = []  # the tokens before the subcommand or prompt
    positionals: list[str] = []
    resume: str | None = None
    flags, values = EXEC_FLAGS, EXEC_VALUES
    i = 1
    while i < len(argv):
        token = argv[i]
        i += 1
        if token.startswith("-") and token != "-":
            name, eq, attached = token.partition("=")
            if not eq and len(name) > 2 and not name.startswith("--"):
                name, attached, eq = name[:2], name[2:], "="  # -sVALUE
            if name in flags and not eq:
                value = ""
            elif name in values:
                if eq:
                    value = attached
                elif i < len(argv):
                    value = argv[i]
                    i += 1
                else:
                    usage(f"a value is required for '{name}' but none was supplied")
            else:
                where = "exec resume" if resume is not None else "exec"
                usage(f"unexpected argument '{name}' found (codex {where})")
            canonical = ALIASES.get(name, name)
            if canonical in seen and canonical not in REPEATABLE:
                usage(f"the argument '{canonical}' cannot be used multiple times")
            seen.setdefault(canonical, []).append(value)
            if resume is None and not positionals:
                options.append(token)
                if name in values and not eq:
                    options.append(value)
            continue
        if resume is None and not positionals and token == "resume":
            resume = ""
            flags, values = RESUME_FLAGS, RESUME_VALUES
            continue
        positionals.append(token)
    if resume is not None:
        if not positionals:
            usage("codex exec resume needs a SESSION_ID (or --last)")
        resume = positionals.pop(0)
    if len(positionals) > 1:
        usage(f"unexpected argument '{positionals[1]}' found")
    sandbox = seen.get("--sandbox", [])
    if sandbox and sandbox[0] not in SANDBOX_MODES:
        usage(f"invalid value '{sandbox[0]}' for '--sandbox <SANDBOX_MODE>'")
    return {
        "seen": seen,
        "options": options,
        "resume": resume,
        "prompt": positionals[0] if positionals else None,
    }


def contract(cmd: dict[str, object], stdin: bytes) -> None:
    """What reconciler promised to send (from FAKE_CODEX_EXPECT); exits 2 otherwise."""
    expect = json.loads(os.environ.get("FAKE_CODEX_EXPECT") or "{}")
    seen = cmd["seen"]
    assert isinstance(seen, dict)
    if "--json" not in seen:
        usage("reconciler must ask for --json (JSONL events on stdout)")
    choices = [f"--sandbox {v}" for v in seen.get("--sandbox", [])]
    if "--dangerously-bypass-approvals-and-sandbox" in seen:
        choices.append("bypass")
    configured = [v for v in seen.get("--config", []) if v.strip().startswith("sandbox_mode")]
    choices += configured
    wanted = expect.get("sandbox", "workspace-write")
    wanted_choice = wanted if wanted == "bypass" or "=" in wanted else f"--sandbox {wanted}"
    if choices != [wanted_choice]:
        usage(f"sandbox chosen as {choices}, expected exactly [{wanted_choice!r}]")
    base_url = os.environ.get("OPENAI_BASE_URL")
    if base_url:
        provider(seen.get("--config", []), base_url)
    if cmd["resume"] != expect.get("resume"):
        usage(f"resume {cmd['resume']!r}, expected {expect.get('resume')!r}")
    if cmd["prompt"] != "-":
        usage(f"the prompt argument is {cmd['prompt']!r}; it must be '-' (read from stdin)")
    args = expect.get("args", [])
    options = cmd["options"]
    assert isinstance(options, list)
    if args and not any(options[k : k + len(args)] == args for k in range(len(options))):
        usage(f"the agent's args {args} are not among the options of exec: {options}")
    if not stdin:
        usage("the prompt on stdin is empty")
    prompt_file = os.environ.get("RECONCILER_PROMPT_FILE")
    if prompt_file is None or Path(prompt_file).read_bytes() != stdin:
        usage("stdin is not the run's prompt file")
    if "prompt" in expect and stdin != expect["prompt"].encode("utf-8"):
        usage(f"stdin is {stdin[:200]!r}, expected the task's prompt")
    leaked = [name for name in OUTER_SESSION if name in os.environ]
    if leaked:
        usage(f"variables of an outer Codex session reached the agent: {leaked}")


def provider(configs: list[str], base_url: str) -> None:
    """The provider the ``-c`` options choose must send requests to ``base_url`` with a key
    from a variable that is set; exits 2 otherwise."""
    values: dict[str, object] = {}
    for config in configs:
        key, _, raw = config.partition("=")
        try:
            values[key.strip()] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            values[key.strip()] = raw  # codex takes what is not TOML as a string
    name = values.get("model_provider")
    table = values.get(f"model_providers.{name}")
    if not isinstance(table, dict):
        usage(f"OPENAI_BASE_URL={base_url} is set but no model provider uses it (codex ignores it)")
    if table.get("base_url") != base_url or table.get("wire_api") != "responses":
        usage(f"model provider {name} is {table}, expected base_url {base_url}, wire_api responses")
    if not os.environ.get(str(table.get("env_key"))):
        usage(f"the key variable {table.get('env_key')} of provider {name} is not set")


def main() -> None:
    cmd = parse(sys.argv[1:])
    stdin = sys.stdin.buffer.read()  # codex reads all of stdin before it starts a turn
    record = os.environ.get("FAKE_CODEX_RECORD")
    if record:
        with open(record, "a") as f:
            entry = {"argv": sys.argv[1:], "cwd": os.getcwd(), "stdin": stdin.decode("utf-8")}
            f.write(json.dumps(entry) + "\n")
    contract(cmd, stdin)
    stream = os.environ.get("FAKE_CODEX_STREAM")
    if stream:
        with open(stream, "rb") as f:
            sys.stdout.buffer.write(f.read())
        sys.stdout.buffer.flush()
    how = os.environ.get("FAKE_CODEX_EXIT", "0")
    if how == "SIGKILL":
        os.kill(os.getpid(), signal.SIGKILL)
    sys.exit(int(how))


if __name__ == "__main__":
    main()
