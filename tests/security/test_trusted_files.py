"""Attack: change the files that decide what a root reconciler does — the admin policy and the
state directory — as someone other than root.

Whoever can write the policy decides what every lane may do; whoever can write the state
directory can plant a cache the reconciler unpickles (code, run as root) or a database that is its
memory. The default state directory is ``.reconciler`` inside the control repo's working copy,
which may well belong to a manifest author. Every command must refuse both, before reading them.
"""

from __future__ import annotations

import os
import pickle
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.security.security_support import (
    Control,
    agent_doc,
    lane_doc,
    require_root,
    task_doc,
)
from tests.support.linux_users import User

require_root()

POLICY = "apiVersion: reconciler/v1\nkind: Policy\nspec:\n  users: ['*']\n  reconcilerUser: true\n"


def commands(control: Control) -> list[subprocess.CompletedProcess[str]]:
    return [
        control.cli(*args) for args in (("validate",), ("plan",), ("status",), ("apply", "--yes"))
    ]


def test_a_policy_others_can_write_is_refused_by_every_command(
    make_user: Callable[[], User], control: Control, agents: Path, tmp_path: Path
) -> None:
    a = make_user()
    control.commit(lane_doc(a, "lane-a"), agent_doc(agents, "commit"), task_doc("t", "lane-a"))
    policy = tmp_path / "etc" / "policy.yaml"
    policy.parent.mkdir()
    policy.write_text(POLICY)
    control.policy = policy
    assert control.cli("policy").returncode == 0

    cases: list[tuple[str, Callable[[], None], Callable[[], None]]] = [
        ("mode 666", lambda: policy.chmod(0o666), lambda: policy.chmod(0o644)),
        ("mode 664", lambda: policy.chmod(0o664), lambda: policy.chmod(0o644)),
        (
            "a lane user's file",
            lambda: os.chown(policy, a.uid, a.gid),
            lambda: os.chown(policy, 0, 0),
        ),
        (
            "in a directory others can write",
            lambda: policy.parent.chmod(0o777),
            lambda: policy.parent.chmod(0o755),
        ),
    ]
    for what, break_it, mend in cases:
        break_it()
        try:
            for proc in [*commands(control), control.cli("policy")]:
                assert proc.returncode == 1, (what, proc.args, proc.stdout)
                assert "cannot be trusted" in proc.stderr and "nothing runs" in proc.stderr, what
        finally:
            mend()
    # a symlink a lane user controls, pointing at a policy they wrote
    theirs = a.home / "policy.yaml"
    a.write(theirs, POLICY, 0o644)
    link = tmp_path / "etc" / "link.yaml"
    link.symlink_to(theirs)
    control.policy = link
    assert "cannot be trusted" in control.cli("status").stderr
    # nothing ran through any of it
    assert not (a.home / "worktrees").exists()
    # a broken policy is reported like a manifest, and allows nothing
    policy.write_text("apiVersion: reconciler/v1\nkind: Policy\nspec:\n  userz: []\n")
    control.policy = policy
    broken = control.cli("status")
    assert broken.returncode == 1 and f"{policy}:4:3" in broken.stderr, broken.stderr


def test_a_state_directory_someone_else_can_write_is_never_read(
    make_user: Callable[[], User],
    control: Control,
    agents: Path,
    tmp_path: Path,
    isolated_home: Path,
) -> None:
    """The manifest author owns the control working copy; root runs the reconciler in it with
    the default state directory, <control>/.reconciler, which the author prepared. Root's git
    trusts the directory, as git's own error message tells admins to do."""
    (isolated_home / ".gitconfig").write_text("[safe]\n\tdirectory = *\n")
    author = make_user()
    a = make_user()
    control.commit(lane_doc(a, "lane-a"), agent_doc(agents, "commit"), task_doc("t", "lane-a"))
    owned = author.home / "control"
    subprocess.run(["git", "clone", "-q", str(control.repo), str(owned)], check=True)
    subprocess.run(["chown", "-R", f"{author.uid}:{author.gid}", str(owned)], check=True)
    proof = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str, ...]]:
            return (os.system, (f"touch {proof}",))

    poisoned = pickle.dumps({"format": "x", "entries": Payload()})
    author.run(["mkdir", "-p", str(owned / ".reconciler" / "cache")])
    for name in ("desired.pickle", "manifests.pickle"):
        author.write(owned / ".reconciler" / "cache" / name, "", 0o644)
        (owned / ".reconciler" / "cache" / name).write_bytes(poisoned)  # content only
    # no --state: the default, <control>/.reconciler, the author's
    theirs: dict[str, Any] = {"RECONCILER_STATE": "", "RECONCILER_CONTROL": str(owned)}
    for args in (("validate",), ("plan",), ("status",), ("apply", "--yes")):
        proc = control.cli(*args, cwd=owned, **theirs)
        assert proc.returncode == 1, (args, proc.stdout, proc.stderr)
        assert "the state directory" in proc.stderr and "cannot be trusted" in proc.stderr
        assert f"belongs to uid {author.uid}" in proc.stderr
    assert not proof.exists()
    assert not (a.home / "worktrees").exists()

    # In a state directory of root's own, a cache file someone else wrote is not unpickled.
    (control.state / "cache").mkdir(parents=True)
    planted = control.state / "cache" / "desired.pickle"
    planted.write_bytes(poisoned)
    os.chown(planted, author.uid, author.gid)
    proc = control.cli("plan", cwd=owned)
    assert proc.returncode == 0, proc.stderr
    assert "+ start" in proc.stdout
    assert not proof.exists()
