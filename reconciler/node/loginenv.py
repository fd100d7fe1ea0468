"""The lane user's login environment: what a login shell sets, captured the same way every time.

Agents start from this (plus the lane's and agent's ``env`` and the run markers), never from the
environment of whatever process serves the lane, so nothing of the reconciler's own environment
leaks into an agent and "it worked in my shell" has one answer: the login shell's ``~/.profile``.

The capture runs ``SHELL -l -c 'env -0'`` (``/bin/sh -l`` for users whose shell refuses logins)
from a minimal environment built from the password database, with no terminal and a timeout.
Whatever the profile prints itself is skipped (a sentinel marks where ``env`` starts). Answers are
kept for a short while, so one pass asks once per lane.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass

DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
CAPTURE_TIMEOUT = 10.0
FRESH_FOR = 30.0  # seconds: one pass (and its batch) captures once
SENTINEL = "__RECONCILER_LOGIN_ENV__"
NO_LOGIN_SHELLS = frozenset({"nologin", "false", "true"})
# Per-shell and per-process variables that describe the capture itself, not the user.
NOT_CARRIED = frozenset({"PWD", "OLDPWD", "SHLVL", "_", "PS1", "PS2", "TERM", "COLUMNS", "LINES"})
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class LoginEnv:
    env: dict[str, str]
    shell: str
    error: str | None = None  # why the capture failed (the minimal environment is used then)


_CACHE: dict[tuple[int, str], tuple[float, LoginEnv]] = {}
_LOCK = threading.Lock()


def minimal_env() -> dict[str, str]:
    """HOME, USER, LOGNAME, SHELL, PATH and LANG from the password database.

    HOME is where ``~`` resolves for this lane (``$HOME`` of the node process, which for a lane
    user started with a reset environment is their home), so the agent and the lane's paths agree.
    """
    pw = pwd.getpwuid(os.getuid())
    return {
        "HOME": os.path.expanduser("~"),
        "USER": pw.pw_name,
        "LOGNAME": pw.pw_name,
        "SHELL": pw.pw_shell or "/bin/sh",
        "PATH": DEFAULT_PATH,
        "LANG": "C.UTF-8",
    }


def login_env() -> LoginEnv:
    """The captured login environment of the user this process runs as (cached briefly)."""
    base = minimal_env()
    key = (os.getuid(), base["HOME"])
    now = time.monotonic()
    with _LOCK:
        hit = _CACHE.get(key)
        if hit is not None and now - hit[0] < FRESH_FOR:
            return hit[1]
    found = _capture(base)
    with _LOCK:
        _CACHE[key] = (now, found)
    return found


def _capture(base: dict[str, str]) -> LoginEnv:
    shell = base["SHELL"]
    if os.path.basename(shell) in NO_LOGIN_SHELLS or not os.access(shell, os.X_OK):
        shell = "/bin/sh"
    home = base["HOME"]
    try:
        proc = subprocess.Popen(
            [shell, "-l", "-c", f"printf '\\0{SENTINEL}\\0'; env -0"],
            env=base,
            cwd=home if os.path.isdir(home) else "/",
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # no controlling terminal: a profile cannot prompt
        )
    except OSError as exc:
        return LoginEnv(base, shell, f"could not run the login shell {shell}: {exc.strerror}")
    try:
        stdout, stderr = proc.communicate(timeout=CAPTURE_TIMEOUT)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the shell and whatever its profile started
        proc.communicate()
        return LoginEnv(
            base,
            shell,
            f"`{shell} -l` did not finish in {CAPTURE_TIMEOUT:g} s; something in the login "
            "profile waits (a prompt, a network call); make ~/.profile non-interactive",
        )
    marker = f"\0{SENTINEL}\0".encode()
    if proc.returncode != 0 or marker not in stdout:
        said = stderr.decode("utf-8", "replace").strip().splitlines()
        return LoginEnv(
            base,
            shell,
            f"`{shell} -l` exited {proc.returncode}"
            + (f": {said[-1][:300]}" if said else "")
            + "; fix the login profile (~/.profile) of the lane user",
        )
    env = dict(base)
    for entry in stdout.split(marker, 1)[1].split(b"\0"):
        name, sep, value = entry.decode("utf-8", "replace").partition("=")
        if sep and _NAME.match(name) and name not in NOT_CARRIED:
            env[name] = value
    env["HOME"] = home  # the lane's `~` and the agent's must agree
    return LoginEnv(env, shell)
