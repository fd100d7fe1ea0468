"""Throwaway Linux users for the tests that need real trust boundaries (root only).

A user's files are written by that user (``User.run`` through ``setpriv`` with a reset
environment), never by root on its behalf, so the kernel's permission checks stand between them
exactly as in production. ``remove_user`` kills what the user left running and removes the home.
"""

from __future__ import annotations

import atexit
import compileall
import functools
import importlib.metadata
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
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import reconciler
from tests.support.git import GIT_ID

PYTHON = "/usr/bin/python3"  # a Python every user can run
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


# ------------------------------------------------- a reconciler every lane user can run

CHECKOUT = Path(__file__).resolve().parents[2]
NOBODY = 65534  # a uid and gid of no one's files and no groups: what any lane user can reach
# What lane users run (the node, its supervisors) and root's CLI: each needs its dependencies.
PROBE = (
    "import os, reconciler.cli, reconciler.daemon, reconciler.node.server, "
    "reconciler.node.supervisor, reconciler.node.forkserver, reconciler.node.forge_github; "
    "print(os.path.realpath(os.path.dirname(reconciler.__file__)))"
)
FIRST = "reconciler_tests_copy"  # the module that makes ``import reconciler`` find the copy
FIRST_SOURCE = '''"""Written by tests/support/linux_users.py: ``import reconciler`` finds the copy beside
this module first, also where the working directory (a private checkout, for root\'s CLI started
there) comes earlier on sys.path."""
import importlib.machinery
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


class CopyFirst:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name != "reconciler":
            return None
        return importlib.machinery.PathFinder.find_spec(name, [HERE])


sys.meta_path.insert(0, CopyFirst)
'''


@dataclass(frozen=True)
class Installation:
    """How lane users (and root's CLI in the tests) run this checkout's reconciler."""

    python: str  # a Python every user can run, importing this checkout's reconciler
    reconciler: str  # its ``reconciler`` console script
    how: str  # which of the ways below it is, for messages


@functools.cache
def lane_installation() -> Installation:
    """This checkout's reconciler as every lane user can run it, made once per test process.

    Lane users run ``python -m reconciler node`` and run supervisors themselves, so neither the
    interpreter nor what it imports may sit where they cannot go: pyenv under /root, or a clone
    in a 0700 directory (``mktemp -d``, ``/root/src``) with its ``.venv``. The cheapest that a
    user with no groups (uid 65534) really can run, judged by running it as that user:

    1. this interpreter, when it and the checkout are open to others;
    2. a virtualenv of the system Python of the same version (in a fresh 0755 directory, removed
       at exit) whose ``.pth`` adds this checkout and this interpreter's site-packages: the
       interpreter is private (pyenv under /root) but the checkout is not;
    3. the same virtualenv holding a world-readable copy of the ``reconciler`` package and of the
       distributions it requires at run time (recursively, no extras), which import first (see
       ``FIRST_SOURCE``): the checkout itself is private.
    """
    script = Path(sys.executable).parent / "reconciler"
    if script.exists() and _cannot_run(sys.executable, str(script), CHECKOUT) is None:
        return Installation(sys.executable, str(script), "this interpreter")
    system = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
    if not os.access(system, os.X_OK):
        pytest.skip(f"no Python {sys.version_info[:2]} that lane users can run ({system})")
    base = shared_tempdir("reconciler-python-")
    atexit.register(shutil.rmtree, base, True)
    venv = base / "venv"
    subprocess.run([system, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    script = venv / "bin" / "reconciler"
    script.write_text(
        f"#!{python}\nimport sys\nfrom reconciler.entry import main\nsys.exit(main())\n",
        encoding="utf-8",
    )
    script.chmod(0o755)
    site = next((venv / "lib").glob("python3*/site-packages"))
    pth = site / "reconciler-tests.pth"
    ours = [p for p in sys.path if p.endswith("site-packages") and os.path.isdir(p)]
    pth.write_text("\n".join([str(CHECKOUT), *ours]) + "\n", encoding="utf-8")
    pth.chmod(0o644)
    if _cannot_run(python, str(script), CHECKOUT) is None:
        return Installation(
            python, str(script), "a virtualenv of the system Python reading the checkout"
        )
    pth.unlink()
    _copy_runtime(site)
    failed = _cannot_run(python, str(script), site)
    if failed is not None:
        raise AssertionError(f"uid {NOBODY} cannot run the copy of the reconciler: {failed}")
    return Installation(
        python, str(script), f"a copy of the reconciler and its dependencies in {site}"
    )


def shared_python() -> str:
    """A Python every lane user can run that imports this checkout's reconciler and its runtime
    dependencies (``lane_installation``)."""
    return lane_installation().python


def agent_python() -> str:
    """A Python every lane user can run for agent scripts, which import nothing of the
    reconciler: the system's, else ``shared_python()``."""
    return PYTHON if os.access(PYTHON, os.X_OK) else shared_python()


def shared_tempdir(prefix: str, mode: int = 0o755) -> Path:
    """A fresh directory of root's that every user can reach (the temporary directory's parents
    must let them through: else under /tmp). The caller removes it."""
    base = tempfile.gettempdir()
    if not _traversable(base):
        base = "/tmp"
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    path.chmod(mode)
    return path


def _traversable(path: str) -> bool:
    """Can others (no owner, no group) pass through every directory of ``path``?"""
    here = Path(path).resolve()
    return all(os.stat(p).st_mode & 0o001 for p in [here, *here.parents])


def _cannot_run(python: str, script: str, where: Path) -> str | None:
    """Why a user with no groups (uid 65534) cannot run ``python`` importing ``where``'s
    ``reconciler`` with what the node and the CLI import, and the console script ``script``
    (through ``/bin/sh -c``, as sshd's forced command runs it); None when it can."""
    setpriv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--"]
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/"}
    imported = ""
    for argv in ([python, "-c", PROBE], ["/bin/sh", "-c", f"{script} --version"]):
        proc = subprocess.run(
            [*setpriv, *argv], capture_output=True, text=True, cwd="/", env=env, check=False
        )
        if proc.returncode != 0:
            return f"{argv[:2]} exited {proc.returncode}: {proc.stderr.strip()[-500:]}"
        imported = imported or proc.stdout.strip()
    wanted = os.path.realpath(where / "reconciler")
    return None if imported == wanted else f"imported {imported}, not {wanted}"


def runtime_distributions() -> list[importlib.metadata.Distribution]:
    """The distributions the ``reconciler`` distribution requires at run time, recursively
    (markers evaluated for this interpreter, no extras)."""
    found: dict[str, importlib.metadata.Distribution] = {}
    todo = list(importlib.metadata.requires("reconciler") or [])
    while todo:
        req = Requirement(todo.pop())
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(req.name)
        if name not in found:
            found[name] = importlib.metadata.distribution(req.name)
            todo += found[name].requires or []
    return [found[name] for name in sorted(found)]


def _copy_runtime(site: Path) -> None:
    """The ``reconciler`` package and its runtime distributions' files (with their byte code)
    into ``site``, world-readable (0755 directories, 0644 files), imported first."""
    package = Path(reconciler.__file__).parent
    # Not the checkout's byte code: other test processes may be writing it meanwhile.
    shutil.copytree(package, site / "reconciler", ignore=shutil.ignore_patterns("__pycache__"))
    for dist in runtime_distributions():
        root = Path(str(dist.locate_file(""))).resolve()
        for file in dist.files or []:
            source = Path(str(dist.locate_file(file))).resolve()
            if not source.is_relative_to(root) or not source.is_file():
                continue  # console scripts in bin/, or a RECORD line without its file
            target = site / source.relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    (site / f"{FIRST}.py").write_text(FIRST_SOURCE, encoding="utf-8")
    (site / f"{FIRST}.pth").write_text(f"import {FIRST}\n", encoding="utf-8")
    compileall.compile_dir(str(site), quiet=1)  # what was copied without its byte code
    for directory, _dirs, files in os.walk(site):
        os.chmod(directory, 0o755)
        for name in files:
            os.chmod(os.path.join(directory, name), 0o644)
