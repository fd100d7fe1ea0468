"""Throwaway Linux users for the tests that need real trust boundaries (root only).

A user's files are written by that user (``User.run`` through ``setpriv`` with a reset
environment), never by root on its behalf, so the kernel's permission checks stand between them
exactly as in production. ``remove_user`` kills what the user left running and removes the home.
"""

from __future__ import annotations

import atexit
import functools
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

PYTHON = "/usr/bin/python3"  # a Python every user can run
GIT_ID = ["-c", "user.name=t", "-c", "user.email=t@example.invalid"]
WRITE_STDIN = "import sys; open(sys.argv[1], 'w').write(sys.stdin.read())"


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    home: Path

    def setpriv(self) -> list[str]:
        """The argv prefix that runs a command as this user with a reset environment."""
        return [
            "setpriv",
            f"--reuid={self.uid}",
            f"--regid={self.gid}",
            "--init-groups",
            "--reset-env",
            "--",
        ]

    def run(
        self, argv: list[str], *, input: str | None = None, check: bool = True, cwd: str = "/"
    ) -> subprocess.CompletedProcess[str]:
        """``argv`` as this user (nothing of root's environment)."""
        proc = subprocess.run(
            [*self.setpriv(), *argv],
            input=input,
            capture_output=True,
            text=True,
            cwd=cwd,
            timeout=120,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"{argv} as {self.name} failed: {proc.stderr}{proc.stdout}")
        return proc

    def sh(self, script: str, *, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(["/bin/sh", "-c", script], check=check)

    def write(self, path: Path | str, text: str, mode: int = 0o644) -> None:
        """Write a file as this user (making its directories), so the kernel judges it."""
        self.run(["mkdir", "-p", str(Path(path).parent)])
        self.run([PYTHON, "-c", WRITE_STDIN, str(path)], input=text)
        self.run(["chmod", f"{mode:o}", str(path)])


def create_user(prefix: str = "rcuser", *, private_home: bool = False) -> User:
    """A fresh login user with a home, unlocked for ssh keys (``*``: no password works)."""
    name = f"{prefix}{secrets.token_hex(3)}"
    for attempt in range(20):  # another test process may hold the passwd lock for a moment
        proc = subprocess.run(
            ["useradd", "-m", "-s", "/bin/sh", name], capture_output=True, text=True, check=False
        )
        if proc.returncode == 0:
            break
        if attempt == 19:
            raise AssertionError(f"useradd {name} failed: {proc.stderr}")
        time.sleep(0.25)
    subprocess.run(["usermod", "-p", "*", name], check=True, capture_output=True)
    pw = pwd.getpwnam(name)
    home = Path(pw.pw_dir)
    if private_home:
        home.chmod(0o700)  # as a careful admin sets it (doctor flags anything else)
    return User(name=name, uid=pw.pw_uid, gid=pw.pw_gid, home=home)


def make_repo(user: User, name: str = "app") -> Path:
    """``~/remotes/<name>.git`` and its clone ``~/src/<name>`` (one commit on main, the user's
    identity configured in the clone), made by the user; returns the clone."""
    src = user.home / "src" / name
    bare = user.home / "remotes" / f"{name}.git"
    seed = user.home / "seed" / name
    user.sh(
        " && ".join(
            [
                f"mkdir -p {seed} {bare.parent} {src.parent}",
                f"git -C {seed} init -q -b main",
                f"echo '# {name}' > {seed}/README.md",
                f"git -C {seed} add -A",
                f"git {' '.join(GIT_ID)} -C {seed} commit -qm initial",
                f"git clone -q --bare {seed} {bare}",
                f"git clone -q {bare} {src}",
                f"git -C {src} config user.name {user.name}",
                f"git -C {src} config user.email {user.name}@example.invalid",
            ]
        )
    )
    return src


def remove_user(user: User) -> None:
    """Kill what the user left running, then remove it with its home."""
    subprocess.run(["pkill", "-KILL", "-u", user.name], check=False)
    for attempt in range(20):
        proc = subprocess.run(
            ["userdel", "-r", "-f", user.name], capture_output=True, text=True, check=False
        )
        if proc.returncode in (0, 6, 12):  # 6: no such user; 12: the home was gone already
            return
        if attempt == 19:
            raise AssertionError(f"userdel {user.name} failed: {proc.stderr}")
        time.sleep(0.25)


@functools.cache
def shared_python() -> str:
    """A Python every lane user can run that imports this checkout (and its dependencies).

    This test's interpreter may live in root's private home (pyenv under /root): then a
    throwaway virtualenv of the system Python of the same version, owned by root and readable by
    all, with a ``.pth`` to this checkout and its site-packages."""
    real = os.path.realpath(sys.executable)
    if not real.startswith("/root/") and not sys.executable.startswith("/root/"):
        return sys.executable
    system = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
    if not os.access(system, os.X_OK):
        pytest.skip(f"no Python {sys.version_info[:2]} that lane users can run ({system})")
    shared = Path(tempfile.mkdtemp(prefix="reconciler-python-"))
    shared.chmod(0o755)
    atexit.register(shutil.rmtree, shared, True)
    venv = shared / "venv"
    subprocess.run([system, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    ours = [p for p in sys.path if p.endswith("site-packages") and os.path.isdir(p)]
    checkout = str(Path(__file__).resolve().parents[2])
    (site / "reconciler-tests.pth").write_text("\n".join([checkout, *ours]) + "\n")
    return str(venv / "bin" / "python")
