"""Damage is named with the fix: a corrupt or unreadable state database, a full disk on either
side, one action the state cannot record, a start that never happened, and the state lost
altogether. Real lane users, the real CLI as root; every error a user sees is a sentence with
the file and the fix, never "unexpected … This is a bug", and nothing is ever duplicated.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reconciler.state import Store
from tests.security.security_support import (
    Control,
    agent_doc,
    lane_doc,
    require_root,
    task_doc,
)
from tests.support.disks import fill, tmpfs
from tests.support.linux_users import User, shared_tempdir

require_root()

BUG = "This is a bug"


def no_bug(proc: subprocess.CompletedProcess[str]) -> None:
    text = proc.stdout + proc.stderr
    assert BUG not in text and "Traceback" not in text, text


def describe(control: Control, task: str) -> dict[str, Any]:
    proc = control.cli("describe", task, "--json")
    assert proc.returncode == 0, proc.stderr
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


def prs(user: User) -> list[tuple[int, str, str]]:
    """The local forge's PRs of the user's ``app`` repository: (number, head, state)."""
    proc = user.run(
        [
            "git",
            "-C",
            str(user.home / "remotes/app.git"),
            "show",
            "refs/reconciler/pulls:pulls.json",
        ],
        check=False,
    )
    if proc.returncode != 0:
        return []
    return sorted((p["number"], p["head"], p["state"]) for p in json.loads(proc.stdout)["pulls"])


def live_runs(user: User) -> dict[int, str]:
    """The user's live processes that belong to a run: pid → run directory."""
    found: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != user.uid:
                continue
            raw = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        env = dict(item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
        run_dir = env.get(b"RECONCILER_RUN_DIR")
        if run_dir:
            found[int(entry)] = run_dir.decode()
    return found


def one_lane(control: Control, user: User, agents: Path, *tasks: str, **lane: Any) -> None:
    control.commit(
        lane_doc(user, "lane", **lane),
        agent_doc(agents, "commit"),
        agent_doc(agents, "sleep"),
        *(task_doc(t, "lane", agent="sleep" if t.startswith("live") else "commit") for t in tasks),
    )


# ----------------------------------------------------------------------------- corrupt database


def test_a_corrupt_database_is_named_with_the_fix_by_every_command(
    make_user: Callable[[], User], control: Control, agents: Path
) -> None:
    user = make_user()
    one_lane(control, user, agents, "t1")
    control.converge({"t1": "pr-open"})
    db = control.state / "state.db"
    db.write_bytes(os.urandom(32 * 1024))
    for command in (
        ["apply", "--yes"],
        ["plan"],
        ["status"],
        ["describe", "t1"],
        ["run", "--once"],
    ):
        proc = control.cli(*command)
        assert proc.returncode == 1, (command, proc.stdout, proc.stderr)
        no_bug(proc)
        assert f"the state database {db} is damaged (file is not a database)" in proc.stderr
        assert "`reconciler state check`" in proc.stderr
        assert f"mv {db} {db}.damaged" in proc.stderr, proc.stderr
    assert not (control.state / "last-error.txt").exists()
    check = control.cli("state", "check")
    assert check.returncode == 1 and "DAMAGED" in check.stdout, check.stdout
    assert f"error: the state database {db} is damaged; to go on, move it aside" in check.stderr

    db.rename(control.state / "state.db.damaged")
    control.converge({"t1": "pr-open"})
    assert prs(user) == [(1, "agent/t1", "open")]
    assert control.cli("state", "check").returncode == 0


def test_a_state_directory_another_user_cannot_read_is_named_not_read_as_empty(
    make_user: Callable[[], User], python: str, agents: Path
) -> None:
    """An operator running `state check` as themselves against the service's private state,
    laid out like /var/lib/reconciler: the way there is open, the state directory is not."""
    user, operator = make_user(), make_user()
    shared = shared_tempdir("reconciler-lib-")
    try:
        control = Control(shared, python=python)
        one_lane(control, user, agents, "t1")
        control.converge({"t1": "pr-open"})
        control.state.chmod(0o700)
        check_as_another_user(control, operator)
    finally:
        shutil.rmtree(shared)


def check_as_another_user(control: Control, operator: User) -> None:
    proc = operator.run(
        [control.python, "-m", "reconciler", "state", "check", "--state", str(control.state)],
        check=False,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    no_bug(proc)
    db = control.state / "state.db"
    assert f"the state database {db} cannot be read by user {operator.name}" in proc.stderr
    assert f"{control.state} is in the way; it belongs to root and is mode 700" in proc.stderr
    assert "run the reconciler as root (sudo -u root reconciler …)" in proc.stderr, proc.stderr
    assert f"or let {operator.name} read {control.state}" in proc.stderr
    assert "no database yet" not in proc.stdout  # not mistaken for an empty state
    # the same user as the writer (an apply of its own): the state belongs to whoever runs it
    control.state.chmod(0o755)
    proc = operator.run([control.python, "-c", OPEN_AS_WRITER, str(control.state)], check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"the state database {db} cannot be written by user "), proc
    assert f"{control.state} is in the way; it belongs to root and is mode 755" in proc.stdout
    assert f"or make {operator.name} its owner (chown -R {operator.name} {control.state})" in (
        proc.stdout
    )


OPEN_AS_WRITER = """
import sys
from pathlib import Path
from reconciler.state import StateDenied, Store
try:
    Store.open(Path(sys.argv[1]))
except StateDenied as exc:
    print(exc)
"""


# ------------------------------------------------------------------------------------ full disk


def test_a_full_state_disk_names_the_database_and_the_space_left(
    make_user: Callable[[], User], control: Control, agents: Path
) -> None:
    user = make_user()
    one_lane(control, user, agents, "t1", "t2")
    with tmpfs(control.state, "size=2m,mode=700") as state:
        control.converge({"t1": "pr-open"})
        ballast = fill(state)
        control.commit(
            lane_doc(user, "lane"),
            agent_doc(agents, "commit"),
            task_doc("t1", "lane"),
            task_doc("t2", "lane"),
            task_doc("t3", "lane"),
            message="one more task, to be recorded on a full disk",
        )
        proc = control.apply()
        assert proc.returncode == 1, proc.stdout + proc.stderr
        no_bug(proc)
        assert f"the state database {state / 'state.db'} cannot be written" in proc.stderr
        assert "no space left on the device (" in proc.stderr and f" free on {state})" in (
            proc.stderr
        ), proc.stderr
        assert "free some space, then run again" in proc.stderr
        ballast.unlink()
        control.converge({"t1": "pr-open", "t2": "pr-open", "t3": "pr-open"})
    found = prs(user)  # one each, whatever order the runs finished in
    assert sorted((head, state) for _, head, state in found) == [
        ("agent/t1", "open"),
        ("agent/t2", "open"),
        ("agent/t3", "open"),
    ]
    assert sorted(number for number, _, _ in found) == [1, 2, 3]


def test_one_action_the_full_state_disk_refuses_fails_alone(
    make_user: Callable[[], User], control: Control, agents: Path
) -> None:
    """A real SQLITE_FULL (an OperationalError) in the middle of one task's start: that start is
    listed as failed, the other task starts in the same pass, and both converge afterwards."""
    user = make_user()
    one_lane(control, user, agents, "victim", "other")
    with tmpfs(control.state, "size=2m,mode=700") as state:
        assert control.cli("plan").returncode == 0
        Store.open(state).close()
        db = state / "state.db"
        conn = sqlite3.connect(db, isolation_level=None)
        conn.execute(  # the victim's run record drags 8 MB with it: more than the disk holds
            "CREATE TRIGGER ballast AFTER INSERT ON runs WHEN NEW.task = 'victim' BEGIN"
            " INSERT INTO meta (key, value) VALUES ('ballast', zeroblob(8000000)); END"
        )
        conn.close()
        proc = control.apply()
        assert proc.returncode == 1, proc.stdout + proc.stderr
        no_bug(proc)
        assert "Apply complete! 1 applied, 1 failed." in proc.stdout, proc.stdout
        assert f"error: start victim: the state database {db} cannot be written: no space" in (
            proc.stderr
        ), proc.stderr
        assert [r["attempt"] for r in describe(control, "other")["runs"]] == [1]
        victim = describe(control, "victim")
        assert victim["runs"] == []
        assert any(e["kind"] == "error" for e in victim["events"])

        conn = sqlite3.connect(db, isolation_level=None)
        conn.execute("DROP TRIGGER ballast")
        conn.close()
        control.converge({"victim": "pr-open", "other": "pr-open"})
    assert sorted(head for _, head, _ in prs(user)) == ["agent/other", "agent/victim"]


def test_a_full_lane_disk_costs_no_attempt_and_names_the_path(
    make_user: Callable[[], User], control: Control, agents: Path
) -> None:
    user = make_user()
    one_lane(control, user, agents, "t1")
    runs = user.home / "worktrees" / ".runs"
    user.run(["mkdir", "-p", str(runs)])
    with tmpfs(runs, f"size=512k,mode=700,uid={user.uid},gid={user.gid}") as disk:
        ballast = fill(disk)
        for _ in range(2):
            proc = control.apply()
            assert proc.returncode == 1, proc.stdout + proc.stderr
            no_bug(proc)
            assert "start t1: start-run failed on the lane: No space left on device" in (
                proc.stderr
            ), proc.stderr
            assert f"0.0 B free on {runs / 't1' / '1.1'}" in proc.stderr, proc.stderr
        t1 = describe(control, "t1")
        assert t1["runs"] == []
        assert [e["kind"] for e in t1["events"]].count("start-deferred") == 2
        ballast.unlink()
        control.converge({"t1": "pr-open"})
        status = {t["name"]: t for t in control.status()["tasks"]}["t1"]
        assert (status["attempt"], status["iteration"]) == (1, 1)


# ------------------------------------------------------------------- the start that never happened


def test_a_start_cut_short_by_a_crash_is_not_charged(
    make_user: Callable[[], User], control: Control, agents: Path
) -> None:
    user = make_user()
    one_lane(control, user, agents, "t1")
    killed = control.cli("apply", "--yes", RECONCILER_CRASH_AT="after-run-intent")
    assert killed.returncode == -9, killed.stdout + killed.stderr
    plan = json.loads(control.cli("plan", "--json").stdout)
    assert [(a["action"], a["attempt"]) for a in plan["actions"]] == [("start", 1)], plan
    control.converge({"t1": "pr-open"})
    t1 = describe(control, "t1")
    assert [(r["attempt"], r["iteration"], r["outcome"]) for r in t1["runs"]] == [
        (1, 1, "succeeded")
    ]
    kinds = [e["kind"] for e in t1["events"]]
    assert "start-lost" in kinds and "run-crashed" not in kinds, kinds


# --------------------------------------------------------------------------- the state, rebuilt


def test_moving_the_state_aside_rebuilds_it_without_duplicates(
    make_user: Callable[[], User], control: Control, agents: Path
) -> None:
    a, b = make_user(), make_user()
    control.commit(
        lane_doc(a, "lane-a"),
        lane_doc(b, "lane-b"),
        agent_doc(agents, "commit"),
        agent_doc(agents, "sleep"),
        task_doc("done-a", "lane-a"),
        task_doc("done-b", "lane-b"),
        task_doc("live-b", "lane-b", agent="sleep"),
    )
    control.converge({"done-a": "pr-open", "done-b": "pr-open", "live-b": "running"})
    before = {"a": prs(a), "b": prs(b)}
    live = live_runs(b)
    assert set(live.values()) == {str(b.home / "worktrees/.runs/live-b/1.1")}, live

    (control.state / "state.db").rename(control.state / "state.db.bak")
    proc = control.apply()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("adopt-pr") == 2, proc.stdout
    phases = control.converge({"done-a": "pr-open", "done-b": "pr-open", "live-b": "running"})
    assert phases == {"done-a": "pr-open", "done-b": "pr-open", "live-b": "running"}
    assert {"a": prs(a), "b": prs(b)} == before
    assert live_runs(b) == live  # the same agent, and no second one
    assert live_runs(a) == {}
    assert [(r["attempt"], r["iteration"]) for r in describe(control, "live-b")["runs"]] == [(1, 1)]


# ----------------------------------------------------------------------------------- the backup


def test_a_backup_never_writes_through_a_symlink_a_lane_user_planted(
    make_user: Callable[[], User], control: Control, agents: Path, tmp_path: Path
) -> None:
    user = make_user()
    one_lane(control, user, agents, "t1")
    control.converge({"t1": "pr-open"})
    victim = tmp_path / "victim"
    victim.write_text("root's file\n")
    victim.chmod(0o644)
    tmp_path.chmod(0o755)
    target = user.home / "state-backup.db"
    user.run(["ln", "-s", str(victim), str(target)])
    proc = control.cli("state", "backup", str(target))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert victim.read_text() == "root's file\n"
    st = target.lstat()
    assert not target.is_symlink() and st.st_uid == 0 and st.st_mode & 0o777 == 0o600
    conn = sqlite3.connect(f"{target.as_uri()}?mode=ro", uri=True)
    assert conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == 1
    conn.close()
    assert sorted(p.name for p in user.home.iterdir() if p.name.startswith(".tmp")) == []


# ------------------------------------------------------------------------------------ the home


def test_a_home_others_can_enter_fails_doctor_but_not_dispatch(
    make_user: Callable[[], User], control: Control, agents: Path
) -> None:
    user = make_user()
    user.home.chmod(0o755)  # what `useradd -m` makes on Debian
    one_lane(control, user, agents, "t1")
    doctor = control.cli("doctor")
    assert doctor.returncode == 1, doctor.stdout + doctor.stderr
    row = next(line for line in doctor.stdout.splitlines() if " home " in line)
    assert "FAIL" in row and f"The home {user.home} is mode 755" in row
    assert "the lane's checkout ~/src/app, worktrees ~/worktrees" in row
    assert f"chmod 700 {user.home}" in row and "tasks are still dispatched" in row
    control.converge({"t1": "pr-open"})
    user.home.chmod(0o700)
    assert control.cli("doctor").returncode == 0
