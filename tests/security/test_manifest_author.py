"""Attack: a manifest author (anyone who can push to the control repo) reaches for root.

With the reconciler running as root, a Lane without ``user:`` ran its agents as uid 0;
``ssh.identityFile``/``ssh.knownHosts`` took any path on the reconciler's host, so a read-only
``plan`` logged in with root's own personal key to a host that trusts it; a lane without a user
sent root's ``GH_TOKEN`` to a manifest-chosen ``apiUrl``. Each is performed here, with no admin
policy (the safe defaults) and with one, and each must be refused before anything is contacted —
while what the policy allows still works.
"""

from __future__ import annotations

import http.server
import json
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.security.security_support import (
    Control,
    agent_doc,
    doc,
    require_root,
    task_doc,
)
from tests.support.linux_users import User

require_root()


def rows(doctor: str, lane: str) -> dict[str, str]:
    """``doctor``'s failing rows of one lane: check → the rest of the line."""
    found = {}
    for line in doctor.splitlines():
        fields = line.split()
        if len(fields) > 2 and fields[0] == lane and "FAIL" in line:
            found[fields[1]] = line
    return found


def userless_lane(name: str = "web", **spec: Any) -> str:
    base: dict[str, Any] = {
        "workspaceRoot": "~/worktrees",
        "repos": [{"name": "app", "checkout": "~/src/app", "forge": {"kind": "local"}}],
    }
    base.update(spec)
    return doc("Lane", name, base)


@pytest.mark.parametrize("user", [None, "root", "daemon"])
def test_no_manifest_makes_a_root_reconciler_run_an_agent_as_root_or_a_system_user(
    control: Control, agents: Path, isolated_home: Path, user: str | None
) -> None:
    extra = {"user": user} if user else {}
    control.commit(
        userless_lane(**extra),
        agent_doc(agents, "commit"),
        task_doc("escalate", "web"),
    )
    validate = control.cli("validate")
    assert validate.returncode == 1
    assert "manifests/all.yaml:" in validate.stderr and "does not allow" in validate.stderr
    assert "the default policy (no policy file)" in validate.stderr

    for _ in range(2):
        applied = control.apply()
        assert applied.returncode == 0, applied.stderr
    status = {t["name"]: t for t in control.status()["tasks"]}
    assert status["escalate"]["phase"] == "unknown"
    assert "does not allow" in status["escalate"]["reason"]
    # nothing ran: no run directory in root's home nor in the named user's
    homes = [isolated_home] + ([Path(f"~{user}").expanduser()] if user else [])
    assert not any((home / "worktrees").exists() for home in homes)
    doctor = control.cli("doctor")
    assert doctor.returncode == 1
    assert "policy" in rows(doctor.stdout, "web"), doctor.stdout


def own_repo(home: Path) -> None:
    """``~/src/app`` for a lane served as the reconciler's own user (root's test home)."""
    seed, bare, src = home / "seed", home / "remotes" / "app.git", home / "src" / "app"
    ident = ["-c", "user.name=t", "-c", "user.email=t@x.invalid"]
    for argv in (
        ["git", "init", "-q", "-b", "main", str(seed)],
        ["git", *ident, "-C", str(seed), "commit", "-q", "--allow-empty", "-m", "init"],
        ["git", "clone", "-q", "--bare", str(seed), str(bare)],
        ["git", "clone", "-q", str(bare), str(src)],
    ):
        subprocess.run(argv, check=True, capture_output=True)


def test_the_admin_can_allow_lanes_as_the_reconcilers_own_user(
    control: Control, agents: Path, isolated_home: Path, tmp_path: Path
) -> None:
    """The refusal above is the policy's, not an accident: an admin's policy lifts it."""
    own_repo(isolated_home)
    policy = tmp_path / "policy.yaml"
    policy.write_text("apiVersion: reconciler/v1\nkind: Policy\nspec:\n  reconcilerUser: true\n")
    control.policy = policy
    control.commit(
        userless_lane(repos=[{"name": "app", "checkout": "~/src/app"}]),
        agent_doc(agents, "nocommit"),
        task_doc("allowed", "web", agent="nocommit", maxIterations=1, maxAttempts=1),
    )
    assert control.cli("validate").returncode == 0
    control.converge({"allowed": "failed"})  # it ran (as root, as the admin allowed)
    assert (isolated_home / "worktrees/.runs/allowed/1.1/output.log").exists()


# ------------------------------------------------------------------------------------ ssh


@pytest.fixture
def sshd(tmp_path: Path, make_user: Callable[[], User]) -> Iterator[Any]:
    from tests.ssh.ssh_support import Sshd

    user = make_user()
    server = Sshd(tmp_path / "sshd", user).start()
    try:
        yield server
    finally:
        server.stop()


def keypair(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return path.with_suffix(".pub").read_text().strip()


def test_a_manifest_cannot_log_in_with_roots_own_key_or_rewrite_a_file(
    control: Control, sshd: Any, isolated_home: Path, tmp_path: Path
) -> None:
    from tests.ssh.ssh_support import install_authorized_keys

    user = sshd.user
    # root's personal key, which the lane host trusts for its own reasons
    personal = keypair(isolated_home / ".ssh" / "id_ed25519")
    install_authorized_keys(user, personal)
    kind, key = sshd.public_host_key()
    known = isolated_home / ".ssh" / "known_hosts"
    known.write_text(f"[127.0.0.1]:{sshd.port} {kind} {key}\n")
    precious = tmp_path / "passwd"  # a stand-in for /etc/passwd
    precious.write_text("root:x:0:0:root:/root:/bin/bash\n")
    before = precious.read_text()
    connections = sshd.log_text().count("Connection from")  # sshd's own readiness probe
    host = f"ssh://{user.name}@127.0.0.1:{sshd.port}"
    for identity, known_hosts in (
        ("~/.ssh/id_ed25519", "~/.ssh/known_hosts"),
        ("~/.config/reconciler/ssh/id_ed25519", str(precious)),
    ):
        control.commit(
            doc(
                "Lane",
                "far",
                {
                    "host": host,
                    "ssh": {"identityFile": identity, "knownHosts": known_hosts},
                    "repos": [{"name": "app", "checkout": "~/src/app"}],
                },
            )
        )
        for args in (("plan",), ("status", "--json"), ("doctor",), ("apply", "--yes")):
            control.cli(*args)
        scan = control.cli("keys", "scan", "far", "--yes", "--replace")
        assert scan.returncode == 1 and "does not allow" in scan.stderr, scan.stderr
        assert "nothing was read or written" in scan.stderr
        authorize = control.cli("keys", "authorize", "far")
        assert authorize.returncode == 1
    # sshd never saw a connection; the file a manifest named was not rewritten
    assert "publickey" not in sshd.log_text()
    assert sshd.log_text().count("Connection from") <= max(connections, 1)  # the probe only
    assert precious.read_text() == before
    assert not (isolated_home / ".config/reconciler/ssh/id_ed25519").exists()


def test_the_default_key_directory_still_works_and_keys_scan_writes_only_there(
    control: Control, sshd: Any, isolated_home: Path
) -> None:
    host = f"ssh://{sshd.user.name}@127.0.0.1:{sshd.port}"
    control.commit(
        doc("Lane", "far", {"host": host, "repos": [{"name": "app", "checkout": "~/src/app"}]})
    )
    scan = control.cli("keys", "scan", "far", "--yes")
    assert scan.returncode == 0, scan.stderr
    known = isolated_home / ".config/reconciler/ssh/known_hosts"
    assert f"[127.0.0.1]:{sshd.port}" in known.read_text()
    assert known.stat().st_mode & 0o777 == 0o600
    authorize = control.cli("keys", "authorize", "far")
    assert authorize.returncode == 0, authorize.stderr
    assert authorize.stdout.startswith('restrict,command="')


# ----------------------------------------------------------------------------- tokens


class Recorder(http.server.BaseHTTPRequestHandler):
    seen: list[dict[str, str]] = []

    def do_GET(self) -> None:
        type(self).seen.append(dict(self.headers))
        self.send_response(404)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
def api() -> Iterator[tuple[str, list[dict[str, str]]]]:
    """A GitHub API impostor on loopback that records every request it gets."""
    seen: list[dict[str, str]] = []
    handler = type("Handler", (Recorder,), {"seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", seen
    finally:
        server.shutdown()
        server.server_close()


def github_lane(name: str, api_url: str, **spec: Any) -> str:
    base: dict[str, Any] = {
        "workspaceRoot": "~/worktrees",
        "repos": [
            {
                "name": "app",
                "checkout": "~/src/app",
                "forge": {"kind": "github", "repo": "acme/app", "apiUrl": api_url},
            }
        ],
    }
    base.update(spec)
    return doc("Lane", name, base)


def test_no_token_of_the_reconciler_is_sent_for_a_lane(
    control: Control,
    agents: Path,
    make_user: Callable[[], User],
    api: tuple[str, list[dict[str, str]]],
    tmp_path: Path,
    isolated_home: Path,
) -> None:
    url, seen = api
    own_repo(isolated_home)
    secret = "ghp_" + "R00tT0k3n" * 4
    lane_user = make_user()
    # 1. no policy: a manifest-chosen API URL is refused for a lane with its own user
    control.commit(
        github_lane("web", url, user=lane_user.name),
        agent_doc(agents, "commit"),
        task_doc("t", "web"),
    )
    for args in (("plan",), ("doctor",), ("apply", "--yes")):
        out = control.cli(*args, GH_TOKEN=secret, GITHUB_TOKEN=secret)
        assert secret not in out.stdout + out.stderr
    assert seen == []
    # 2. the admin allows that URL and lanes as root: a lane without a user still never
    #    takes root's GH_TOKEN (it must name a token file); the API sees no request with it
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "apiVersion: reconciler/v1\nkind: Policy\nspec:\n  reconcilerUser: true\n"
        f'  githubApiUrls: ["{url}"]\n'
    )
    control.policy = policy
    control.commit(github_lane("web", url), agent_doc(agents, "commit"), task_doc("t", "web"))
    doctor = control.cli("doctor", GH_TOKEN=secret, GITHUB_TOKEN=secret)
    token_row = rows(doctor.stdout, "web").get("forge-token", "")
    assert "never used for a lane" in token_row, doctor.stdout
    control.cli("apply", "--yes", GH_TOKEN=secret, GITHUB_TOKEN=secret)
    assert all(secret not in json.dumps(headers) for headers in seen)
    assert seen == []
