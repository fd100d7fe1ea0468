"""SSH lanes end to end, against the loopback sshd and a throwaway lane user.

The reconciler's side (control repo, state, key, known hosts) is root's, under the test's
temporary directory; the lane's side (checkout, bare origin with the local forge's PR records,
worktrees, run directories, agent processes) is the lane user's, in its home, reached only
through ``ssh … reconciler node``. The passes are the real engine's (``Engine.apply``), the merge
is the real command line's.

- the whole lifecycle: start, iterate on a failed check, a remote agent ``kill -9``'d (and a run
  whose supervisor died with it) marked crashed and retried, one PR per task, a merge, cleanup;
- sshd stopped mid-run: the lane's tasks are ``unknown`` and nothing is started, stopped, marked
  or duplicated; sshd back (same port, same host key): the runs are adopted and converge;
- whatever the client asks, the node serves the authorized lane only: another workspace root,
  checkout or remote is refused, and so is a path that leads out of the root.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from reconciler.engine import Context, Engine, PassResult
from reconciler.lanes import lane_ref
from reconciler.lanes.ssh import SshTransport, authorized_keys_line, ensure_key
from reconciler.manifests.models import LaneSpec
from reconciler.plan import Phase, TaskStatus
from reconciler.protocol import (
    AgentRef,
    Batch,
    BatchResult,
    ObserveRequest,
    PrepareWorkspaceRequest,
    ReadLogRequest,
    StartRunRequest,
    TaskRef,
    lane_pin,
)
from reconciler.state import Store
from tests.ssh.ssh_support import (
    LANE,
    LaneProcess,
    Side,
    Sshd,
    install_authorized_keys,
    kill_lane_processes,
    lane_agents,
    lane_processes,
    make_remote_repo,
    manifest,
    require_root_and_sshd,
    stable_port,
)
from tests.support.git import GIT_ID

require_root_and_sshd()

# Agents: small Python scripts the lane user reads and runs. They read the prompt on stdin, work
# in the worktree (their cwd), commit, and print DONE.
AGENTS: dict[str, str] = {
    # Creates fixed.txt only on its second run in the same worktree.
    "second-time": """
        import os, subprocess, sys
        sys.stdin.read()
        name = "fixed.txt" if os.path.exists("attempted.txt") else "attempted.txt"
        with open(name, "w") as f:
            f.write(os.environ["RECONCILER_ITERATION"] + "\\n")
        subprocess.run(["git", *GIT_ID, "add", "-A"], check=True)
        subprocess.run(["git", *GIT_ID, "commit", "-qm", "work on " + name], check=True)
        print("DONE")
    """,
    # Attempt 1 waits (up to a minute) to be killed; later attempts do the work.
    "crash-first": """
        import os, subprocess, sys, time
        sys.stdin.read()
        if os.environ["RECONCILER_ATTEMPT"] == "1":
            print("waiting to be killed", flush=True)
            time.sleep(60)
            sys.exit(7)
        with open("survived.txt", "w") as f:
            f.write("ok\\n")
        subprocess.run(["git", *GIT_ID, "add", "-A"], check=True)
        subprocess.run(["git", *GIT_ID, "commit", "-qm", "survived"], check=True)
        print("DONE")
    """,
    # Works once the test opens its gate ($GATE_DIR/<task>), waiting at most a minute.
    "gated": """
        import os, subprocess, sys, time
        sys.stdin.read()
        task = os.environ["RECONCILER_TASK"]
        gate = os.path.join(os.environ["GATE_DIR"], task)
        deadline = time.time() + 60
        while not os.path.exists(gate):
            if time.time() > deadline:
                print("the gate never opened", flush=True)
                sys.exit(9)
            time.sleep(0.1)
        with open(task + ".txt", "w") as f:
            f.write("run " + os.environ["RECONCILER_ATTEMPT"] + " went through the gate\\n")
        subprocess.run(["git", *GIT_ID, "add", "-A"], check=True)
        subprocess.run(["git", *GIT_ID, "commit", "-qm", "gated work"], check=True)
        print("DONE")
    """,
}

MOVING = {Phase.PENDING, Phase.QUEUED, Phase.RUNNING, Phase.BACKOFF, Phase.CLOSING}


@dataclass
class Remote:
    """One SSH lane of one test: a repo, workspace root, agents and gates of its own in the lane
    user's home (``tag`` names them), and the reconciler's control repo and state."""

    side: Side
    sshd: Sshd
    tag: str
    slots: int = 3

    # ------------------------------------------------------------------ the lane's side

    @property
    def home(self) -> Path:
        return self.side.user.home

    @property
    def root(self) -> Path:
        """The workspace root as this machine sees it (the manifest says ``~/lanes/<tag>``)."""
        return self.home / "lanes" / self.tag

    @property
    def bare(self) -> Path:
        return self.home / "remotes" / f"{self.tag}.git"

    @property
    def checkout(self) -> Path:
        return self.home / "src" / self.tag

    @property
    def agents_dir(self) -> Path:
        return self.home / "agents" / self.tag

    @property
    def gates(self) -> Path:
        return self.home / "gates" / self.tag

    def spec(self) -> dict[str, Any]:
        spec = self.side.spec(self.sshd)
        spec.update(
            maxConcurrency=self.slots,
            workspaceRoot=f"~/lanes/{self.tag}",
            env={"GATE_DIR": str(self.gates)},
            repos=[{"name": "app", "checkout": f"~/src/{self.tag}", "forge": {"kind": "local"}}],
        )
        return spec

    def lane_spec(self) -> LaneSpec:
        return LaneSpec.model_validate(self.spec())

    def setup(self) -> Remote:
        make_remote_repo(self.side.user, self.tag)
        for directory in (self.agents_dir, self.gates):  # root's, readable by the lane user
            directory.mkdir(parents=True, mode=0o755)
            directory.chmod(0o755)
        for name, source in AGENTS.items():
            path = self.agents_dir / f"{name}.py"
            path.write_text(f"GIT_ID = {GIT_ID!r}\n" + textwrap.dedent(source), encoding="utf-8")
            path.chmod(0o644)
        key = ensure_key(str(self.side.identity)).public
        install_authorized_keys(self.side.user, authorized_keys_line(LANE, self.lane_spec(), key))
        self.side.trust(self.sshd)
        return self

    def open_gate(self, task: str) -> None:
        (self.gates / task).write_text("open\n")

    def user_git(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """git as the lane user (root's git refuses repositories another user owns)."""
        return self.side.user.run(["git", *args], check=check)

    def prs(self) -> list[dict[str, Any]]:
        shown = self.user_git(
            "-C", str(self.bare), "show", "refs/reconciler/pulls:pulls.json", check=False
        )
        if shown.returncode != 0:
            return []
        pulls: list[dict[str, Any]] = json.loads(shown.stdout)["pulls"]
        return pulls

    def worktrees(self) -> list[str]:
        listed = self.user_git("-C", str(self.checkout), "worktree", "list", "--porcelain")
        paths = [line[9:] for line in listed.stdout.splitlines() if line.startswith("worktree ")]
        return sorted(p for p in paths if p != str(self.checkout))

    def run_dirs(self) -> dict[str, list[str]]:
        runs = self.root / ".runs"
        if not runs.is_dir():
            return {}
        return {t.name: sorted(r.name for r in t.iterdir()) for t in sorted(runs.iterdir())}

    def agents(self) -> dict[str, list[LaneProcess]]:
        return lane_agents(self.root)

    def wait_for_agents(self, tasks: set[str], timeout: float = 20) -> dict[str, LaneProcess]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.agents()
            if tasks <= set(found):
                return {t: found[t][0] for t in tasks}
            assert time.monotonic() < deadline, f"no agents for {tasks - set(found)}: {found}"
            time.sleep(0.05)

    # ------------------------------------------------------------------ the reconciler's side

    def commit(self, tasks: dict[str, dict[str, Any]], message: str = "manifests") -> str:
        docs = [
            manifest("Config", "default", {"backoff": {"base": "200ms", "max": "1s"}}),
            manifest("Lane", LANE, self.spec()),
        ]
        python = self.side.installed.python  # a Python the lane user can run
        docs += [
            manifest(
                "Agent",
                name,
                {"kind": "command", "command": [python, str(self.agents_dir / f"{name}.py")]},
            )
            for name in sorted(AGENTS)
        ]
        for name, spec in tasks.items():
            task = {"lane": LANE, "repo": "app", "prompt": f"Please do {name}.", **spec}
            task.setdefault("success", {"markers": ["DONE"]})
            docs.append(manifest("Task", name, task))
        return self.side.commit_manifests(docs, message)

    @property
    def engine(self) -> Engine:
        return Engine(Context(control=str(self.side.root / "control"), state_dir=self.state))

    @property
    def state(self) -> Path:
        return self.side.root / "state"

    def apply(self) -> PassResult:
        engine = self.engine
        desired = engine.load()
        with engine.locked(None) as store:
            result = engine.apply(desired, store)
        report = result.report
        assert report is not None
        assert report.ok, report.failed
        return result

    def converge(self, timeout: float = 60) -> PassResult:
        """Passes until one plans nothing and no task is in motion."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.apply()
            phases = {t.phase for t in result.plan.tasks}
            if result.plan.empty and not phases & MOVING:
                return result
            assert time.monotonic() < deadline, f"no convergence: {self.tasks(result)}"
            time.sleep(0.1)

    @staticmethod
    def tasks(result: PassResult) -> dict[str, TaskStatus]:
        return {t.name: t for t in result.plan.tasks}

    def store(self) -> Store:
        return Store.open_readonly(self.state)


@pytest.fixture
def remote(side: Side) -> Iterator[Remote]:
    lane = Remote(side, side.sshd, f"life-{secrets.token_hex(3)}", slots=5).setup()
    try:
        yield lane
    finally:
        kill_lane_processes(lane.root)


@pytest.fixture
def own_sshd(side: Side, tmp_path: Path) -> Iterator[Sshd]:
    """A server of this test only, to stop and start again on the same port and host key."""
    server = Sshd(tmp_path / "own-sshd", side.user, port=stable_port()).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def outage(side: Side, own_sshd: Sshd) -> Iterator[Remote]:
    lane = Remote(side, own_sshd, f"outage-{secrets.token_hex(3)}", slots=2).setup()
    try:
        yield lane
    finally:
        kill_lane_processes(lane.root)


# ----------------------------------------------------------------------------- the lifecycle


def test_an_ssh_lane_runs_the_whole_lifecycle_on_the_remote_side(remote: Remote) -> None:
    user = remote.side.user
    tasks: dict[str, dict[str, Any]] = {
        "iterates": {
            "agent": "second-time",
            "success": {"markers": ["DONE"], "checks": [["test", "-f", "fixed.txt"]]},
        },
        "crashy": {"agent": "crash-first"},
        "wiped": {"agent": "crash-first"},
        "halted": {"agent": "gated"},  # its gate never opens: it runs until it is stopped
        "orphaned": {"agent": "gated"},
    }
    remote.commit(tasks)
    first = remote.apply()
    assert sorted((a.kind.value, a.task) for a in first.plan.actions) == [
        ("start", "crashy"),
        ("start", "halted"),
        ("start", "iterates"),
        ("start", "orphaned"),
        ("start", "wiped"),
    ]
    # The agents run on the lane's side, as the lane user, in its home.
    running = remote.wait_for_agents({"crashy", "wiped", "halted", "orphaned"})
    for proc in running.values():
        assert proc.uid == user.uid
        assert proc.run_dir.startswith(f"{remote.root}/.runs/")
        assert proc.pgid != proc.pid  # the supervisor leads the run's group
    # kill -9 on the remote side: crashy's agent alone (its supervisor records the signal),
    # wiped's whole run, supervisor included (no exit record: liveness decides it is gone), and
    # orphaned's supervisor alone (its agent works on: the run is not over).
    os.kill(running["crashy"].pid, signal.SIGKILL)
    os.killpg(running["wiped"].pgid, signal.SIGKILL)
    os.kill(running["orphaned"].pgid, signal.SIGKILL)
    # Pausing a task stops its remote run: its whole process group, on the remote side.
    tasks["halted"]["paused"] = True
    remote.commit(tasks, "pause halted")
    paused = remote.apply()
    assert ("stop", "halted") in [(a.kind.value, a.task) for a in paused.plan.actions]
    halted_run = f"{remote.root}/.runs/halted/1.1"
    assert [p for p in lane_processes(remote.root) if p.run_dir == halted_run] == []
    assert json.loads(Path(halted_run, "exit.json").read_text())["signal"] == signal.SIGTERM
    # The orphaned agent still works in its worktree: its run is alive, nothing is started
    # beside it (two agents in one worktree), pass after pass.
    for result in (paused, remote.apply(), remote.apply()):
        assert not [a for a in result.plan.actions if a.task == "orphaned"], result.plan.actions
        assert remote.tasks(result)["orphaned"].phase == Phase.RUNNING
        assert [p.pid for p in remote.agents()["orphaned"]] == [running["orphaned"].pid]
    remote.open_gate("orphaned")  # it ends with no supervisor to record how: crashed, retried

    converged = remote.converge()
    status = remote.tasks(converged)
    assert {n: t.phase for n, t in status.items()} == {
        "crashy": Phase.PR_OPEN,
        "halted": Phase.PAUSED,
        "iterates": Phase.PR_OPEN,
        "orphaned": Phase.PR_OPEN,
        "wiped": Phase.PR_OPEN,
    }, status
    assert (status["iterates"].attempt, status["iterates"].iteration) == (1, 2)
    for name in ("crashy", "wiped", "orphaned"):
        assert (status[name].attempt, status[name].iteration) == (2, 1)

    # The runs, as the lane user's files on the remote side.
    assert remote.run_dirs() == {
        "crashy": ["1.1", "2.1"],
        "halted": ["1.1"],
        "iterates": ["1.1", "1.2"],
        "orphaned": ["1.1", "2.1"],
        "wiped": ["1.1", "2.1"],
    }
    runs = remote.root / ".runs"
    for run_dir in runs.glob("*/*"):
        assert run_dir.stat().st_uid == user.uid and run_dir.stat().st_mode & 0o077 == 0
    assert json.loads((runs / "crashy/1.1/exit.json").read_text())["signal"] == signal.SIGKILL
    assert not (runs / "wiped/1.1/exit.json").exists()
    assert not (runs / "orphaned/1.1/exit.json").exists()
    gated = remote.user_git("-C", str(remote.root / "app/orphaned"), "log", "--format=%s")
    assert gated.stdout.splitlines()[:2] == ["gated work", "gated work"]  # 1.1's, then 2.1's
    # The iteration got the failed check as feedback and ran in the same worktree.
    prompt = (runs / "iterates/1.2/prompt.md").read_text()
    assert "test -f fixed.txt" in prompt, prompt
    assert (remote.root / "app/iterates/fixed.txt").read_text() == "2\n"

    # The state recorded the verdicts, with the causes.
    with remote.store() as store:
        verdicts = {(r.task, r.attempt, r.iteration): (r.mark, r.outcome) for r in store.runs()}
        events = {(e.task, e.message) for e in store.events(limit=1000)}
    assert verdicts == {
        ("crashy", 1, 1): ("crashed", "crashed"),
        ("crashy", 2, 1): (None, "succeeded"),
        ("halted", 1, 1): ("stopped", None),
        ("iterates", 1, 1): (None, "failed"),
        ("iterates", 1, 2): (None, "succeeded"),
        ("orphaned", 1, 1): ("crashed", "crashed"),
        ("orphaned", 2, 1): (None, "succeeded"),
        ("wiped", 1, 1): ("crashed", "crashed"),
        ("wiped", 2, 1): (None, "succeeded"),
    }
    gone = "run 1.1 crashed: its process is gone and it left no exit record"
    assert ("crashy", "run 1.1 crashed: the agent was killed by SIGKILL") in events, events
    assert ("wiped", gone) in events and ("orphaned", gone) in events, events

    # Exactly one PR per task on the local forge, in the lane user's bare origin.
    prs = remote.prs()
    heads = ["agent/crashy", "agent/iterates", "agent/orphaned", "agent/wiped"]
    assert sorted(p["head"] for p in prs) == heads
    for pr in prs:
        assert pr["state"] == "open"
        head = remote.user_git("-C", str(remote.bare), "rev-parse", pr["head"]).stdout.strip()
        assert pr["head_sha"] == head
    assert remote.agents() == {}
    # Converged means converged: another pass changes nothing and opens nothing.
    assert remote.apply().plan.empty
    assert len(remote.prs()) == 4

    # Merge one through the local forge with the command line (over ssh, as the lane user).
    merged = remote.side.cli("pr", "merge", "iterates")
    assert merged.returncode == 0, merged.stderr
    done = remote.tasks(remote.converge())
    assert done["iterates"].phase == Phase.DONE
    assert done["crashy"].phase == done["wiped"].phase == done["orphaned"].phase == Phase.PR_OPEN
    assert done["halted"].phase == Phase.PAUSED
    states = {p["head"]: p["state"] for p in remote.prs()}
    assert states == {
        "agent/crashy": "open",
        "agent/iterates": "merged",
        "agent/orphaned": "open",
        "agent/wiped": "open",
    }
    on_main = remote.user_git("-C", str(remote.bare), "show", "main:fixed.txt")
    assert on_main.stdout == "2\n"
    # Cleanup removed the merged task's worktree on the remote side, and only that one.
    assert not (remote.root / "app/iterates").exists()
    assert remote.worktrees() == [
        str(remote.root / f"app/{name}") for name in ("crashy", "halted", "orphaned", "wiped")
    ]


# ------------------------------------------------------------------------------ the outage


def test_sshd_stopped_mid_run_changes_nothing_and_restarted_it_adopts_the_runs(
    outage: Remote, own_sshd: Sshd
) -> None:
    remote = outage
    remote.commit({"early": {"agent": "gated"}, "late": {"agent": "gated"}})
    started = remote.apply()
    assert sorted((a.kind.value, a.task) for a in started.plan.actions) == [
        ("start", "early"),
        ("start", "late"),
    ]
    agents = remote.wait_for_agents({"early", "late"})
    with remote.store() as store:
        rows_before = {r.task: r for r in store.runs()}
    assert {t: r.pid for t, r in rows_before.items()} == {t: p.pgid for t, p in agents.items()}

    own_sshd.stop()
    # A new task arrives while the host is away.
    remote.commit(
        {"early": {"agent": "gated"}, "late": {"agent": "gated"}, "added": {"agent": "gated"}},
        "add a task",
    )
    remote.open_gate("added")

    def passes_while_down() -> None:
        result = remote.apply()
        assert result.plan.actions == ()  # nothing started, stopped, marked, pushed or pruned
        tasks = remote.tasks(result)
        assert {n: t.phase for n, t in tasks.items()} == dict.fromkeys(
            ("added", "early", "late"), Phase.UNKNOWN
        ), tasks
        for task in tasks.values():
            assert "cannot reach" in task.reason and "Connection refused" in task.reason

    passes_while_down()
    # early's agent finishes while the host is unreachable; late's goes on.
    remote.open_gate("early")
    exit_json = remote.root / ".runs/early/1.1/exit.json"
    deadline = time.monotonic() + 20
    while not exit_json.exists():
        assert time.monotonic() < deadline, "early's run did not end"
        time.sleep(0.05)
    passes_while_down()
    assert remote.run_dirs() == {"early": ["1.1"], "late": ["1.1"]}
    assert remote.agents().keys() == {"late"}
    assert remote.agents()["late"][0].pid == agents["late"].pid
    assert remote.prs() == []
    with remote.store() as store:
        assert {r.task: r for r in store.runs()} == rows_before  # no mark, no verdict, no new run

    own_sshd.start()  # the same port and host key: the known hosts file still fits
    back = remote.apply()
    tasks = remote.tasks(back)
    # late's run is adopted alive (the same process), not started again; early's end is read
    # and its PR opened; the slot early freed goes to the task that arrived meanwhile.
    assert sorted((a.kind.value, a.task) for a in back.plan.actions) == [
        ("open-pr", "early"),
        ("start", "added"),
    ]
    assert tasks["late"].phase == Phase.RUNNING and tasks["late"].attempt == 1
    assert remote.agents()["late"][0].pid == agents["late"].pid
    with remote.store() as store:
        early = store.runs("early")
    assert [(r.attempt, r.iteration, r.outcome) for r in early] == [(1, 1, "succeeded")]

    remote.open_gate("late")
    final = remote.tasks(remote.converge())
    assert {n: t.phase for n, t in final.items()} == dict.fromkeys(
        ("added", "early", "late"), Phase.PR_OPEN
    ), final
    assert remote.run_dirs() == {"added": ["1.1"], "early": ["1.1"], "late": ["1.1"]}
    assert sorted(p["head"] for p in remote.prs()) == ["agent/added", "agent/early", "agent/late"]
    with remote.store() as store:
        rows = {r.task: r for r in store.runs()}
    assert {t: (r.attempt, r.iteration, r.mark, r.outcome) for t, r in rows.items()} == {
        "added": (1, 1, None, "succeeded"),
        "early": (1, 1, None, "succeeded"),
        "late": (1, 1, None, "succeeded"),
    }
    for task in ("early", "late"):  # the very runs started before the outage
        assert rows[task].pid == rows_before[task].pid
        assert rows[task].start_time == rows_before[task].start_time


def test_a_start_that_never_reached_the_host_costs_no_attempt(
    outage: Remote, own_sshd: Sshd
) -> None:
    remote = outage
    remote.commit({"blip": {"agent": "gated", "maxAttempts": 1}})
    remote.open_gate("blip")
    engine = remote.engine

    def host_goes_away(plan: object) -> bool:
        own_sshd.stop()  # after the pass observed the lane, before it dispatches the start
        return True

    with engine.locked(None) as store:
        blipped = engine.apply(engine.load(), store, confirm=host_goes_away)
    assert blipped.report is not None
    assert [(a.kind.value, a.task) for a, _ in blipped.report.failed] == [("start", "blip")]
    assert remote.run_dirs() == {}  # the request never reached the node
    own_sshd.start()
    final = remote.tasks(remote.converge())
    assert final["blip"].phase == Phase.PR_OPEN, final["blip"]
    assert remote.run_dirs() == {"blip": ["1.1"]}


# ------------------------------------------------------------------------------ refusals


def test_the_node_serves_only_the_authorized_root_checkout_and_paths(remote: Remote) -> None:
    user = remote.side.user
    spec = remote.lane_spec()
    transport = SshTransport(LANE, spec)
    ref = lane_ref(LANE, spec)
    observed = transport.exchange(Batch(requests=[ObserveRequest(lane=ref)]))
    assert observed.responses[0].ok, observed  # the authorized lane is served

    # Something the lane user can write and read, outside the lane's workspace root.
    outside = user.home / f"outside-{remote.tag}"
    secret = outside / "sneaky" / "1.1" / "output.log"
    user.run(["/bin/sh", "-c", f"mkdir -p {secret.parent} && echo s3cr3t-{remote.tag} > {secret}"])

    # Requests for the same lane name bounded otherwise: another workspace root (the one
    # holding "sneaky", or the whole home with ~/.ssh), another checkout, another remote.
    moved = []
    for change in (
        {"workspaceRoot": str(outside)},
        {"workspaceRoot": "~"},
        {"repos": [{"name": "app", "checkout": "~/.ssh", "forge": {"kind": "local"}}]},
        {"repos": [{"name": "app", "checkout": f"~/src/{remote.tag}", "remote": "upstream"}]},
    ):
        other_ref = lane_ref(LANE, LaneSpec.model_validate({**remote.spec(), **change}))
        assert lane_pin(other_ref) != lane_pin(ref)
        moved.append(other_ref)
    probe = TaskRef(name="probe", repo="app", base="main", branch="agent/probe")
    batch = Batch(
        requests=[
            request
            for other_ref in moved
            for request in (
                ObserveRequest(lane=other_ref),
                PrepareWorkspaceRequest(lane=other_ref, task=probe),
                StartRunRequest(
                    lane=other_ref,
                    task=probe,
                    attempt=1,
                    iteration=1,
                    generation="g",
                    prompt="p",
                    agent=AgentRef(kind="command", command=["/bin/sh", "-c", "id > pwned"]),
                ),
                ReadLogRequest(lane=other_ref, task="sneaky", attempt=1, iteration=1),
            )
        ]
    )
    answers = [transport.exchange(batch)]
    # Asking for another lane's pin on the command line changes nothing: sshd runs the forced
    # command, with the authorized pin.
    argv = transport.argv([remote.side.installed.command, "node", "--pin", lane_pin(moved[0])])
    asked = subprocess.run(
        argv,
        input=batch.model_dump_json(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert asked.returncode == 0, asked.stderr
    answers.append(BatchResult.model_validate_json(asked.stdout))
    for answer in answers:
        assert len(answer.responses) == len(batch.requests)
        for response in answer.responses:
            assert not response.ok and response.failure is not None
            error = response.failure.error
            assert "refused" in error and f"keys authorize {LANE}" in error, error
            assert f"s3cr3t-{remote.tag}" not in error
    assert not (outside / "app").exists() and not (user.home / "app").exists()
    assert not list(user.home.glob("**/pwned"))

    # Within the authorized lane, a path that leads out of the root through a symlink is
    # refused too: a worktree and a run directory that would land in (or read) `outside`.
    links = (
        f"mkdir -p {remote.root}/app {remote.root}/.runs && "
        f"ln -s {outside} {remote.root}/app/escape && "
        f"ln -s {outside}/sneaky {remote.root}/.runs/sneaky"
    )
    user.run(["/bin/sh", "-c", links])
    task = TaskRef(name="escape", repo="app", base="main", branch="agent/escape")
    answer = transport.exchange(
        Batch(
            requests=[
                PrepareWorkspaceRequest(lane=ref, task=task),
                ReadLogRequest(lane=ref, task="sneaky", attempt=1, iteration=1),
            ]
        )
    )
    for response in answer.responses:
        assert not response.ok and response.failure is not None
        assert "resolves outside the workspace root" in response.failure.error
        assert f"s3cr3t-{remote.tag}" not in response.model_dump_json()
    assert sorted(p.name for p in outside.iterdir()) == ["sneaky"]  # no worktree landed there
    assert lane_processes(remote.root) == []
    # …and the same requests for a task inside the root are served, so the refusal was the path.
    inside = TaskRef(name="inside", repo="app", base="main", branch="agent/inside")
    served = transport.exchange(Batch(requests=[PrepareWorkspaceRequest(lane=ref, task=inside)]))
    assert served.responses[0].ok, served
    assert (remote.root / "app/inside").stat().st_uid == user.uid
