"""The real agent CLIs at pinned versions, installed once into a cache outside the repository.

npm packages go to ``<cache>/npm/<package>@<version>/`` (``npm install --prefix``), aider to its
own virtualenv ``<cache>/aider-<version>/``. The cache is ``$RECONCILER_AGENT_CACHE``, else
``/var/cache/reconciler-tests``: outside the checkout (which may sit in a private home) and
readable by the lane users the agents run as. An install is made in a temporary directory and
renamed into place under a lock, so concurrent test processes install once and never see half
an install. A newer CLI is a change of ``VERSIONS``, in one commit with what it needed.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class Pinned:
    package: str  # the npm package or PyPI distribution
    version: str
    binary: str  # the command it installs
    registry: str  # "npm" or "pypi"


VERSIONS: dict[str, Pinned] = {
    "claude": Pinned("@anthropic-ai/claude-code", "2.1.197", "claude", "npm"),
    "codex": Pinned("@openai/codex", "0.171.0", "codex", "npm"),
    "gemini": Pinned("@google/gemini-cli", "0.61.0", "gemini", "npm"),
    "aider": Pinned("aider-chat", "0.86.2", "aider", "pypi"),
}
INSTALL_TIMEOUT = 900
SYSTEM_PYTHON = "/usr/bin/python3"


def cache_root() -> Path:
    return Path(os.environ.get("RECONCILER_AGENT_CACHE") or "/var/cache/reconciler-tests")


def _home(pin: Pinned) -> Path:
    if pin.registry == "npm":
        return cache_root() / "npm" / f"{pin.package.replace('/', '+')}@{pin.version}"
    return cache_root() / f"{pin.binary}-{pin.version}"


def _binary(pin: Pinned, home: Path) -> Path:
    if pin.registry == "npm":
        return home / "node_modules" / ".bin" / pin.binary
    return home / "bin" / pin.binary


def _install(pin: Pinned, into: Path) -> None:
    if pin.registry == "npm":
        npm = shutil.which("npm")
        if npm is None or shutil.which("node") is None:
            pytest.skip(f"{pin.package} needs Node.js and npm, which are not installed")
        argv = [npm, "install", "--prefix", str(into), "--no-audit", "--no-fund"]
        argv += ["--loglevel=error", f"{pin.package}@{pin.version}"]
        env = {**os.environ, "npm_config_update_notifier": "false"}
        _run(argv, env, pin)
    else:
        if not os.access(SYSTEM_PYTHON, os.X_OK):
            pytest.skip(f"{pin.package} needs {SYSTEM_PYTHON}, which lane users can run")
        _run([SYSTEM_PYTHON, "-m", "venv", str(into)], dict(os.environ), pin)
        pip = [str(into / "bin" / "pip"), "install", "-q", "--disable-pip-version-check"]
        _run([*pip, f"{pin.package}=={pin.version}"], dict(os.environ), pin)


def _run(argv: list[str], env: dict[str, str], pin: Pinned) -> None:
    proc = subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT, check=False
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"installing {pin.package} {pin.version} failed ({' '.join(argv[:3])}…): "
            f"{proc.stderr[-2000:]}{proc.stdout[-1000:]}"
        )


def _check_venv(pin: Pinned, home: Path) -> None:
    """A virtualenv runs the Python it was made with: one made by another Python (root's pyenv,
    in a home lane users cannot enter) fails every run with "Permission denied"."""
    if pin.registry != "pypi":
        return
    cfg = (home / "pyvenv.cfg").read_text()
    wanted = f"home = {os.path.dirname(SYSTEM_PYTHON)}"
    if wanted not in cfg.splitlines():
        raise AssertionError(
            f"{home} was not made with {SYSTEM_PYTHON}, which lane users can run (pyvenv.cfg: "
            f"{cfg.splitlines()[0]!r}); remove it, and the next test installs it again"
        )


def cli(name: str) -> Path:
    """The pinned ``name`` CLI (claude, codex, gemini, aider), installed on first use."""
    pin = VERSIONS[name]
    home = _home(pin)
    binary = _binary(pin, home)
    if binary.exists():
        _check_venv(pin, home)
        return binary
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    home.parent.mkdir(parents=True, exist_ok=True)
    home.parent.chmod(0o755)
    with open(home.parent / f".{home.name}.lock", "a+") as lock:  # one install per package
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not binary.exists():
            staging = Path(tempfile.mkdtemp(prefix=f".{home.name}.", dir=home.parent))
            try:
                if pin.registry == "pypi":  # a venv records its own path: build it in place
                    staging.rmdir()
                    staging = home
                _install(pin, staging)
                staging.chmod(0o755)
                if staging != home:
                    staging.rename(home)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
    return binary
