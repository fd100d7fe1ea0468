"""The reconciler's side of SSH lanes without a server: the ssh command line, the authorized_keys
line, the client key, and the known hosts file. Needs only ssh-keygen (no root, no sshd)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from reconciler.lanes import LaneUnavailable, lane_ref, transport_for
from reconciler.lanes.ssh import (
    HostKey,
    KeyProblem,
    SshTransport,
    authorized_keys_line,
    ensure_key,
    known_keys,
    trust_host,
)
from reconciler.manifests.models import LaneSpec, SshTarget, parse_ssh_host
from reconciler.protocol import Batch, lane_pin

if shutil.which("ssh-keygen") is None:
    pytest.skip(
        "ssh-keygen is not installed (apt-get install openssh-client)", allow_module_level=True
    )


def spec(host: str = "ssh://agent@build-2:2222", **ssh: Any) -> LaneSpec:
    return LaneSpec.model_validate(
        {"host": host, "repos": [{"name": "app", "checkout": "~/src/app"}], "ssh": ssh or None}
    )


@pytest.mark.parametrize(
    ("host", "target"),
    [
        ("ssh://agent@build-2", SshTarget("agent", "build-2", 22)),
        ("ssh://agent@build-2:2222", SshTarget("agent", "build-2", 2222)),
        ("ssh://a_b@10.0.0.5:22", SshTarget("a_b", "10.0.0.5", 22)),
        ("ssh://u@[::1]:2200", SshTarget("u", "::1", 2200)),
    ],
)
def test_ssh_hosts_parse(host: str, target: SshTarget) -> None:
    assert parse_ssh_host(host) == target
    assert spec(host).ssh_target == target


@pytest.mark.parametrize(
    ("host", "why"),
    [
        ("build-2", "is not a host"),
        ("ssh://build-2", "names no user"),
        ("ssh://u@h/path", "is not a valid ssh:// host"),
        ("ssh://u@-oProxyCommand=x", "is not a valid ssh:// host"),
        ("ssh://-l@h", "is not a valid ssh:// host"),
        ("ssh://u@h:70000", "a port is 1-65535"),
    ],
)
def test_bad_ssh_hosts_say_why(host: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_ssh_host(host)


def test_known_hosts_names_follow_openssh() -> None:
    assert SshTarget("u", "h", 22).known_hosts_name == "h"
    assert SshTarget("u", "h", 2222).known_hosts_name == "[h]:2222"
    assert str(SshTarget("u", "::1", 2222)) == "u@[::1]:2222"


def test_the_ssh_command_line_is_pinned_and_carries_no_request(tmp_path: Path) -> None:
    lane = spec(identityFile="~/k/id", knownHosts="/etc/r%x/known", command="/opt/r/reconciler")
    transport = transport_for("far", lane)
    assert isinstance(transport, SshTransport)
    argv = transport.argv()
    assert argv[:4] == ["ssh", "-F", "none", "-T"]
    assert argv[argv.index("-i") + 1] == os.path.expanduser("~/k/id")
    options = [argv[i + 1] for i, a in enumerate(argv) if a == "-o"]
    assert {
        "BatchMode=yes",
        "StrictHostKeyChecking=yes",
        "UserKnownHostsFile=/etc/r%%x/known",  # ssh expands % tokens: escaped
        "GlobalKnownHostsFile=/dev/null",
        "IdentitiesOnly=yes",
        "IdentityAgent=none",
        "ClearAllForwardings=yes",
        "ConnectTimeout=10",
    } <= set(options)
    assert argv[argv.index("--") :] == ["--", "build-2", "/opt/r/reconciler", "node"]
    assert argv[argv.index("-p") + 1] == "2222" and argv[argv.index("-l") + 1] == "agent"


def test_a_missing_key_makes_the_lane_unavailable_with_the_fix(tmp_path: Path) -> None:
    transport = SshTransport("far", spec(identityFile=str(tmp_path / "nope")))
    with pytest.raises(LaneUnavailable, match="run `reconciler keys authorize far`"):
        transport.exchange(Batch(requests=[]))


def test_paths_ssh_cannot_take_are_refused() -> None:
    transport = SshTransport("far", spec(knownHosts="/tmp/with space"))
    with pytest.raises(LaneUnavailable, match="quotes or blanks"):
        transport.argv()


def test_authorized_keys_line() -> None:
    public = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKh9"
    pin = lane_pin(lane_ref("far", spec()))
    assert authorized_keys_line("far", spec(), public) == (
        f'restrict,command="reconciler node --pin {pin}" {public} reconciler:far'
    )
    with_from = spec(**{"from": "10.0.0.5,192.168.1.0/24", "command": "/usr/local/bin/reconciler"})
    assert authorized_keys_line("far", with_from, public) == (
        f'restrict,command="/usr/local/bin/reconciler node --pin {pin}",'
        f'from="10.0.0.5,192.168.1.0/24" {public} reconciler:far'
    )  # ssh options do not bound the lane on its host: the same pin
    moved = spec().model_copy(update={"workspace_root": "/elsewhere"})
    assert lane_pin(lane_ref("far", moved)) != pin  # a new root needs a new line


def test_the_key_is_created_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "cfg" / "ssh" / "id_ed25519"
    first = ensure_key(str(path))
    assert first.created and first.path == str(path)
    assert first.public.startswith("ssh-ed25519 ") and len(first.public.split()) == 2
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    second = ensure_key(str(path))
    assert not second.created and second.public == first.public
    path.chmod(0o644)
    with pytest.raises(KeyProblem, match="chmod 600"):
        ensure_key(str(path))


def test_fingerprints_match_ssh_keygen(tmp_path: Path) -> None:
    key = ensure_key(str(tmp_path / "id"))
    kind, data = key.public.split()
    pub = tmp_path / "id.pub"
    shown = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", str(pub)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()[1]
    assert HostKey(kind, data).fingerprint == shown


def test_trusting_a_host_replaces_only_its_keys(tmp_path: Path) -> None:
    target = SshTarget("u", "build-2", 2222)
    known = tmp_path / "kh" / "known_hosts"
    a = ensure_key(str(tmp_path / "a")).public.split()
    b = ensure_key(str(tmp_path / "b")).public.split()
    known.parent.mkdir()
    known.write_text(
        f"# a comment\nother {a[0]} {a[1]}\n[build-2]:2222 {a[0]} {a[1]}\n"
        f"@revoked [build-2]:2222 {a[0]} {a[1]}\n"
    )
    assert known_keys(str(known), target) == [HostKey(a[0], a[1])]
    assert known_keys(str(known), SshTarget("u", "build-2", 22)) == []
    trust_host(str(known), target, [HostKey(b[0], b[1])])
    assert known.read_text().splitlines() == [
        "# a comment",
        f"other {a[0]} {a[1]}",
        f"@revoked [build-2]:2222 {a[0]} {a[1]}",
        f"[build-2]:2222 {b[0]} {b[1]}",
    ]
    assert known.stat().st_mode & 0o777 == 0o600
    assert known_keys(str(known), target) == [HostKey(b[0], b[1])]


def test_hashed_known_hosts_entries_are_recognised(tmp_path: Path) -> None:
    target = SshTarget("u", "build-2", 2222)
    key = ensure_key(str(tmp_path / "a")).public.split()
    known = tmp_path / "known_hosts"
    known.write_text(f"[build-2]:2222 {key[0]} {key[1]}\n")
    subprocess.run(["ssh-keygen", "-H", "-f", str(known)], capture_output=True, check=True)
    assert known.read_text().startswith("|1|")
    assert known_keys(str(known), target) == [HostKey(key[0], key[1])]
    trust_host(str(known), target, [])
    assert known_keys(str(known), target) == []
