"""Attacks on "everything root prints or stores is redacted" (design §9), performed for real.

- A lane user's token file holds a newline inside the token; requests used to quote both halves
  back in an error that every command printed and the state kept.
- A control URL carries credentials (``https://bot:SECRET@host/x.git``); it used to be printed
  whole in errors and kept as the control problem.
- A bug's traceback used to go to ``/tmp/last-error.txt`` through whatever a local user had
  planted there, unredacted and world-readable.

Each attack runs the real CLI as root against real lane users, then reads every output and the
state database.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from tests.security.security_support import (
    Control,
    agent_doc,
    doc,
    lane_doc,
    require_root,
    task_doc,
)
from tests.support.linux_users import User, agent_python, shared_tempdir

require_root()

FIRST_HALF = "ghp_" + "Tq7Wm2Xc9Lz4Rv8Np3Ks" * 2
SECOND_HALF = "secondhalf" + "Hx5Jd1Gf6Yb0Uw2Qe7Ao"
TOKEN_FILE = ".config/reconciler/github-token"
SECRET = "S3cretPassw0rd-of-bot"
SECRET_URL = f"https://bot:{SECRET}@127.0.0.1:9/x.git"
SHOWN_URL = "https://***@127.0.0.1:9/x.git"


def state_dump(state: Path) -> str:
    """Every row of the state database, as SQL text."""
    with sqlite3.connect(state / "state.db") as conn:
        return "\n".join(conn.iterdump())


def outputs(control: Control, *commands: tuple[str, ...], **env: Any) -> dict[str, str]:
    """stdout and stderr of each command (exit codes do not matter to a leak)."""
    shown = {}
    for argv in commands:
        proc = control.cli(*argv, **env)
        shown[" ".join(argv)] = proc.stdout + proc.stderr
    return shown


GATED_AGENT = """
import os, subprocess, sys, time
sys.stdin.read()
while not os.path.exists(os.path.expanduser("~/go")):
    time.sleep(0.05)
with open("work.txt", "w") as f:
    f.write("done")
subprocess.run(["git", "add", "-A"], check=True)
subprocess.run(["git", "commit", "-qm", "work"], check=True)
print("DONE")
"""


class GitHubStub(http.server.BaseHTTPRequestHandler):
    """Just enough of GitHub's REST API for a lane to pass pre-flight and open a PR."""

    pulls: ClassVar[list[dict[str, Any]]] = []

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        if path == "/api/v3/repos/acme/app":
            self._send(200, {"full_name": "acme/app", "permissions": {"push": True}})
        elif path == "/api/v3/rate_limit":
            self._send(200, {"resources": {"core": {"remaining": 5000, "limit": 5000}}})
        elif path == "/api/v3/repos/acme/app/pulls":
            self._send(200, self.pulls)
        else:
            self._send(200, {})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        payload = json.loads(self.rfile.read(length) or b"{}")
        if self.path.split("?")[0] != "/api/v3/repos/acme/app/pulls":
            self._send(200, {})
            return
        pull = {
            "number": len(self.pulls) + 1,
            "html_url": f"https://github.example/acme/app/pull/{len(self.pulls) + 1}",
            "state": "open",
            "title": payload.get("title"),
            "body": payload.get("body"),
            "head": {"ref": payload.get("head"), "sha": None},
            "base": {"ref": payload.get("base")},
        }
        self.pulls.append(pull)
        self._send(201, pull)


@pytest.fixture
def github_stub() -> Iterator[str]:
    """The API root of a GitHub stand-in on this machine (lane users reach it too)."""
    GitHubStub.pulls = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), GitHubStub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/api/v3"
    server.shutdown()
    server.server_close()


def test_a_token_file_with_a_newline_leaks_no_half_of_it(
    make_user: Callable[[], User],
    control: Control,
    agents: Path,
    github_stub: str,
    tmp_path: Path,
) -> None:
    # the admin allows the GitHub stand-in's API root (the default policy allows only GitHub's)
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        f'apiVersion: reconciler/v1\nkind: Policy\nspec:\n  githubApiUrls: ["{github_stub}"]\n'
    )
    control.policy = policy
    user = make_user()
    user.write(user.home / TOKEN_FILE, f"{FIRST_HALF}\n", mode=0o600)
    script = agents / "gated.py"
    script.write_text(GATED_AGENT)
    script.chmod(0o755)
    forge = {"kind": "github", "repo": "acme/app", "apiUrl": github_stub}
    control.commit(
        lane_doc(
            user,
            "gh",
            repos=[{"name": "app", "checkout": "~/src/app", "forge": forge}],
            credentials={"github": f"~/{TOKEN_FILE}"},
        ),
        doc("Agent", "gated", {"kind": "command", "command": [agent_python(), str(script)]}),
        task_doc("leak", "gh", agent="gated"),
    )
    control.converge({"leak": "running"})
    # while its agent works, the lane user breaks the token file: a newline inside the token
    user.write(user.home / TOKEN_FILE, f"{FIRST_HALF}\n{SECOND_HALF}\n", mode=0o600)
    user.write(user.home / "go", "")
    shown = outputs(
        control,
        ("apply", "--yes"),
        ("run", "--once", "--log-format", "json"),
        ("run", "--once", "--log-format", "text"),
        ("plan",),
        ("plan", "--json"),
        ("status",),
        ("status", "--json"),
        ("describe", "leak"),
        ("describe", "leak", "--json"),
        ("doctor",),
        ("logs", "leak"),
    )
    shown["state"] = state_dump(control.state)
    # the attack reached the token, and the lane refused it with a sentence naming the file
    refusal = (
        f"token file {user.home / TOKEN_FILE} holds 2 lines; write only the token, on one line"
    )
    assert refusal in shown["doctor"], shown["doctor"]
    for name in ("status", "status --json", "describe leak"):
        assert refusal in shown[name], f"{name}:\n{shown[name]}"
    assert 'INSERT INTO "runs"' in shown["state"] and 'INSERT INTO "events"' in shown["state"]
    for name, text in shown.items():
        for piece in (FIRST_HALF, SECOND_HALF, "secondhalf"):
            assert piece not in text, f"{name} shows {piece}:\n{text}"


def mirror_of(control: Control, url: str) -> None:
    """The state's mirror of the control repo, as a clone of ``url`` leaves it (while the host
    answered): the host is down from now on."""
    mirror = control.state / "control.git"
    control.state.mkdir(mode=0o700, parents=True, exist_ok=True)
    subprocess.run(
        ["git", "clone", "-q", "--bare", str(control.repo), str(mirror)],
        check=True,
        capture_output=True,
    )
    for key, value in (
        ("remote.origin.fetch", "+refs/heads/*:refs/heads/*"),
        ("remote.origin.url", url),
    ):
        subprocess.run(["git", f"--git-dir={mirror}", "config", key, value], check=True)


def test_a_control_url_with_credentials_is_never_shown_or_stored(
    make_user: Callable[[], User], control: Control, agents: Path
) -> None:
    user = make_user()
    control.commit(lane_doc(user, "web"), agent_doc(agents, "commit"), task_doc("t", "web"))
    commands = [
        ("validate",),
        ("plan",),
        ("plan", "--json"),
        ("apply", "--yes"),
        ("run", "--once", "--log-format", "text"),
        ("status",),
        ("status", "--json"),
        ("describe", "t"),
        ("doctor",),
    ]
    # the host never answered: nothing to clone, every command fails and says why
    fresh = outputs(control, *commands, RECONCILER_CONTROL=SECRET_URL)
    fresh |= outputs(control, ("--control", SECRET_URL, "status"))
    assert all(SHOWN_URL in text for text in fresh.values()), fresh
    # the host answered once (the mirror is there), and is down now: the last good revision is
    # reconciled and the problem is kept in the state and shown
    mirror_of(control, SECRET_URL)
    down = outputs(control, *commands, RECONCILER_CONTROL=SECRET_URL)
    assert (
        f"the control remote could not be fetched (reading the control repository {SHOWN_URL}"
        in (down["status --json"])
    )
    assert f"reconciling {SHOWN_URL}" in down["run --once --log-format text"]
    down["state"] = state_dump(control.state)
    assert SHOWN_URL in down["state"]  # the control problem, kept
    for name, text in (fresh | down).items():
        assert SECRET not in text, f"{name} shows the password:\n{text}"
    # nothing under the state directory holds it but the mirror's own remote (git needs it)
    holders = [
        str(path.relative_to(control.state))
        for path in control.state.rglob("*")
        if path.is_file() and SECRET.encode() in path.read_bytes()
    ]
    assert holders == ["control.git/config"]


CRASH = """
import sys
import reconciler.cli as cli

def crash(engine, args):
    raise RuntimeError("a bug that quoted " + sys.argv[1])

cli.COMMANDS["status"] = crash
sys.exit(cli.main(["status"]))
"""


def test_a_crash_report_goes_only_to_the_state_directory_private_and_redacted(
    make_user: Callable[[], User], control: Control, tmp_path: Path
) -> None:
    user = make_user()
    control.commit(doc("Agent", "a", {"kind": "command", "command": ["true"]}))
    # a /tmp of this test's own (others' test runs use the real one), which the user can reach
    shared = shared_tempdir("reconciler-shared-tmp-", mode=0o1777)
    try:
        _crash_twice(user, control, tmp_path, shared)
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def _crash_twice(user: User, control: Control, tmp_path: Path, shared: Path) -> None:
    victim = tmp_path / "root-file"
    victim.write_text("root's own content\n")
    victim.chmod(0o644)
    planted = ["last-error.txt", "last-error.txt.tmp", "last-error.tmp", ".tmp-last-error.txt"]
    for name in planted:
        user.run(["ln", "-s", str(victim), str(shared / name)])

    def crash(state: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [control.python, "-c", CRASH, FIRST_HALF],
            env=control.env(TMPDIR=str(shared), RECONCILER_STATE=str(state)),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    proc = crash(control.state)
    report = control.state / "last-error.txt"
    assert proc.returncode == 1
    assert f"This is a bug in reconciler; the traceback is in {report}" in proc.stderr
    info = report.lstat()
    assert stat.S_ISREG(info.st_mode) and info.st_uid == 0
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert stat.S_IMODE(control.state.stat().st_mode) == 0o700
    text = report.read_text()
    assert "RuntimeError: a bug that quoted ***" in text
    assert FIRST_HALF not in text and FIRST_HALF not in proc.stderr

    # a state directory that cannot be written: said so, and written nowhere else
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")
    proc = crash(blocked / "state")
    assert proc.returncode == 1
    assert "its traceback was not saved: the state directory" in proc.stderr
    assert "written nowhere else" in proc.stderr

    assert victim.read_text() == "root's own content\n"
    assert sorted(os.listdir(shared)) == sorted(planted)
    for name in planted:
        assert (shared / name).is_symlink()
    assert [p for p in tmp_path.rglob("last-error.txt") if not p.is_symlink()] == [report]
