"""An SSH lane's shared connection: one per lane and trust, in a directory only its user enters."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from reconciler import gitfiles
from reconciler.lanes.ssh import SshTransport
from reconciler.manifests.models import LaneSpec
from tests.node.node_support import SETTLED_NS, older_than_window
from tests.support.waiting import wait_for


def transport(keys: Path, name: str = "far", user: str = "agent") -> SshTransport:
    spec = LaneSpec.model_validate(
        {
            "host": f"ssh://{user}@build-2:2222",
            "ssh": {
                "identityFile": str(keys / "id_far"),
                "knownHosts": str(keys / "known_hosts"),
            },
            "repos": [{"name": "app", "checkout": "~/app"}],
        }
    )
    return SshTransport(name, spec)


def option(argv: list[str], key: str) -> str | None:
    for value in argv:
        if value.startswith(f"{key}="):
            return value.split("=", 1)[1]
    return None


def test_batches_share_a_connection_whose_socket_only_the_reconciler_reaches() -> None:
    # a short directory, so that the socket is beside the key (not in the shared fallback)
    keys = Path(tempfile.mkdtemp(prefix="rk", dir="/tmp"))
    try:
        shares_one_connection_per_lane_and_trust(keys)
    finally:
        shutil.rmtree(keys)


def shares_one_connection_per_lane_and_trust(keys: Path) -> None:
    (keys / "id_far").write_text("key one\n")
    (keys / "known_hosts").write_text("[build-2]:2222 ssh-ed25519 AAAA\n")
    far = transport(keys)
    argv = far.argv()
    assert option(argv, "ControlMaster") == "auto"
    socket = far.control_socket()
    assert socket.startswith(str(keys / "mux") + "/")
    assert option(argv, "ControlPath") == socket
    assert os.stat(os.path.dirname(socket)).st_mode & 0o777 == 0o700
    # another lane to the same user@host, or a changed key or host key: another connection
    assert transport(keys, name="near").control_socket() != socket
    (keys / "known_hosts").write_text("[build-2]:2222 ssh-ed25519 BBBB\n")
    assert far.control_socket() != socket
    # a socket directory others could enter is never used: no sharing at all
    os.chmod(os.path.dirname(far.control_socket()), 0o755)
    assert option(far.argv(), "ControlMaster") == "no"
    assert option(far.argv(), "ControlPath") == "none"


def test_a_deep_key_directory_puts_the_socket_where_its_path_fits(tmp_path: Path) -> None:
    keys = tmp_path / ("d" * 60) / ("e" * 60)
    keys.mkdir(parents=True, mode=0o700)
    socket = transport(keys).control_socket()
    assert len(socket) + 17 <= 104
    assert socket.startswith(f"/tmp/reconciler-ssh-{os.geteuid()}/")


def test_the_socket_is_named_anew_only_when_the_key_or_host_keys_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every batch asks for its connection's socket: the key and known-hosts files are read
    again only when one of them changed, and always while a change is recent (within one
    timestamp tick a rewrite can leave a file's identity as it was)."""
    keys = tmp_path / "k"
    keys.mkdir(mode=0o700)
    (keys / "id_far").write_text("key one\n")
    (keys / "known_hosts").write_text("[build-2]:2222 ssh-ed25519 AAAA\n")
    far = transport(keys)
    reads: list[str] = []
    real = open

    def counted(path: object, *args: object, **kwargs: object) -> object:
        reads.append(str(path))
        return real(path, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr("builtins.open", counted)
    monkeypatch.setattr(gitfiles, "RACY_NS", 3600 * 10**9)  # every change is recent
    young = far.control_socket()
    assert far.control_socket() == young and len(reads) == 4  # recent files: read each time
    monkeypatch.setattr(gitfiles, "RACY_NS", SETTLED_NS)
    wait_for(lambda: older_than_window(keys), "the files to be older than the window")
    reads.clear()
    socket = far.control_socket()
    assert socket == young  # the same contents, the same connection
    assert far.control_socket() == far.control_socket() == socket and len(reads) == 2
    # a key rotated (a new file, as `keys authorize` writes it): read again, a new socket
    (keys / "id_far.new").write_text("key two\n")
    os.replace(keys / "id_far.new", keys / "id_far")
    assert far.control_socket() != socket
