"""What every test shares: its HOME inside its temporary directory, and a permissive admin policy.

The suite runs as root (in CI too) and most of its worlds use lanes without ``user:``, which the
safe default policy refuses for a root reconciler. Every test process and the CLI subprocesses
it starts (``RECONCILER_POLICY`` is inherited, or copied by the worlds' environments) use
``PERMISSIVE`` instead; the security suite sets the policy of each attack explicitly.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import tempfile
from pathlib import Path

import pytest

PERMISSIVE = """\
apiVersion: reconciler/v1
kind: Policy
spec:
  reconcilerUser: true
  users: ["*"]
  sshHosts: ["*"]
  sshKeys: ["/*"]
  knownHosts: ["/*"]
  githubApiUrls: ["https://api.github.com", "https://ghe.example.com/api/v3"]
"""


def _permissive_policy() -> str:
    directory = tempfile.mkdtemp(prefix="reconciler-test-policy-")
    atexit.register(shutil.rmtree, directory, True)
    path = os.path.join(directory, "policy.yaml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(PERMISSIVE)
    os.chmod(path, 0o644)
    return path


if "RECONCILER_POLICY" not in os.environ:
    os.environ["RECONCILER_POLICY"] = _permissive_policy()


def _signals_as_in_a_terminal() -> None:
    """SIGINT and SIGHUP as a terminal gives them, however the suite was started: `nohup`
    ignores SIGHUP, and a job put in the background by a shell without job control ignores
    SIGINT, and an ignored signal stays ignored in every child. Tests send both to the
    commands they start (Ctrl-C to `status --watch`, a poke to `run`) and expect them heard."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGHUP) is signal.SIG_IGN:
        signal.signal(signal.SIGHUP, signal.SIG_DFL)


_signals_as_in_a_terminal()


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HOME (and git's and XDG's configuration) inside ``tmp_path``, so no test can touch the
    real home or be steered by the caller's git or control repo; fails loudly if that did not
    take. The home is private, as a careful admin sets a lane user's (pre-flight checks it)."""
    home = tmp_path / "home"
    home.mkdir(mode=0o700, exist_ok=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for var in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "RECONCILER_CONTROL"):
        monkeypatch.delenv(var, raising=False)
    assert Path.home() == home, "HOME still points outside the test's temporary directory"
    assert os.path.expanduser("~") == str(home)
    return home
