"""The SSH lane's cost: the batch one pass sends a lane, through the in-process, local-user and
ssh transports in turn (each lane's node a session, started once and reused), an observe+plan
pass over N tasks with the lane in-process and behind ssh (what ssh adds should be one batch,
whatever N), and a pass over ``FLEET`` ssh lanes (as many users on one sshd) against a pass over
one of them.

Needs root and ``/usr/sbin/sshd``: it creates a throwaway login user (``tests.support
.linux_users``) and runs a loopback sshd letting only that user in (``tests.ssh.ssh_support``).
Elsewhere its rows say ``skipped`` with the reason. The user is removed and sshd stopped at the
end of the section, also when it fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bench.manifests import CONFIG_DOC, agent_doc, seed_task_rows, task_doc
from bench.options import Options
from bench.runs import busy_seconds
from bench.sandbox import Sandbox
from bench.table import Table, log, median
from reconciler import gitfiles
from reconciler.engine import Context, Engine
from reconciler.lanes import InProcessTransport, Transport, close_sessions, local_user
from reconciler.lanes.local_user import LocalUserTransport
from reconciler.lanes.ssh import SshTransport, authorized_keys_line, ensure_key
from reconciler.manifests.models import LaneSpec
from reconciler.observe import observe
from reconciler.plan import Observed
from reconciler.protocol import Batch, BatchResult
from tests.ssh import ssh_support
from tests.support import linux_users

TRANSPORT_TASKS = 200
BATCH_REPS = 7  # each repetition sends the batch through every transport in turn
PASS_REPS = 5  # each repetition runs the in-process pass and the ssh pass in turn
ROUND_TRIPS_TARGET = 1.5  # what ssh adds to a pass, in ssh batches: one per lane and pass
SSH_OVER_USER_TARGET = 2.0  # a batch over a reused connection against the same as a local user
FLEET = 20  # ssh lanes (users) of the fleet pass
FLEET_TASKS = 10  # tasks per fleet lane
FLEET_TARGET = 1.5  # a pass over the fleet against a pass over one of its lanes
TOOLS = ("ssh", "ssh-keygen", "setpriv", "useradd", "userdel", "git")
BATCH_ROW = "node batch, in-process / local user / ssh"
BATCH_SPLIT_ROW = "  ssh batch: connection + node start-up + work"
SSH_OVER_USER_ROW = "  ssh batch / local user batch, sessions reused"
FLEET_ROW = f"pass over {FLEET} ssh lanes / over 1 ({FLEET_TASKS} tasks each)"
FLEET_CPU_ROW = f"  pass over {FLEET} ssh lanes: cores busy"
FLEET_OWN_ROW = f"  pass over {FLEET} ssh lanes / over 1: the reconciler's own CPU"
NEAR, USER, FAR = "near", "user", ssh_support.LANE  # in-process, local user, ssh
KINDS: dict[str, type[object]] = {
    NEAR: InProcessTransport,
    USER: LocalUserTransport,
    FAR: SshTransport,
}


def pass_row(n: int) -> str:
    return f"pass over {n} tasks, ssh / in-process"


def extra_row(n: int) -> str:
    return f"  pass over {n} tasks, ssh - in-process / one ssh batch"


class Recorder:
    """A transport that keeps the batches a pass sends through it, and sends them on."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.batches: list[Batch] = []

    def exchange(self, batch: Batch) -> BatchResult:
        self.batches.append(batch)
        return self.inner.exchange(batch)


def unavailable() -> str | None:
    """Why this machine cannot host the local-user and ssh lanes, or None."""
    if os.geteuid() != 0:
        return "needs root: it creates a login user, switches to it and runs sshd"
    if not os.access(ssh_support.SSHD, os.X_OK):
        return f"{ssh_support.SSHD} is missing: apt-get install openssh-server"
    for tool in TOOLS:
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


@contextlib.contextmanager
def lane_host(box: Sandbox) -> Iterator[ssh_support.Side]:
    """A throwaway login user with ``~/src/app`` (a clone of ``~/remotes/app.git``), a
    reconciler it can run, and an sshd on 127.0.0.1 letting only that user in (the test
    support's ``Side``). The local-user transport runs the user's Python meanwhile. The user is
    removed and sshd stopped on the way out, whatever happened."""
    base = box.root / "transports"
    saved = local_user.PYTHON
    user = ssh_support.create_user()
    sshd: ssh_support.Sshd | None = None
    try:
        sshd = ssh_support.Sshd(base / "sshd", user)
        installed = ssh_support.install_reconciler(user)  # pytest.skip when the user cannot
        ssh_support.make_remote_repo(user)
        sshd.start()
        local_user.PYTHON = installed.python  # the lane's installation, as an admin sets it up
        yield ssh_support.Side(root=base, user=user, sshd=sshd, installed=installed)
    finally:
        local_user.PYTHON = saved
        try:
            if sshd is not None:
                sshd.stop()
        finally:
            linux_users.remove_user(user)


def settle() -> None:
    """Let the set-up's writes age past the node's racy window. The figures are of unchanged
    passes, over repositories nothing wrote to for a while; a node keeps what a ref file holds
    only once the file is older than that window (``gitfiles.RACY_NS``), so passes over
    checkouts made a moment ago would measure a repository being changed."""
    wait = gitfiles.RACY_NS / 1e9 + 0.1
    log(f"  waiting {wait:.1f}s for the checkouts' files to be older than the racy window")
    time.sleep(wait)


def checked(observed: Observed, lanes: int) -> None:
    """Every lane answered and every repository was observed (else the figures mean nothing)."""
    problems = [f"{v.name}: {v.error}" for v in observed.lanes.values() if not v.reachable]
    for view in observed.lanes.values():
        problems += [f"{view.name} {r}: {rv.error}" for r, rv in view.repos.items() if rv.error]
    if problems or len(observed.lanes) != lanes:
        raise SystemExit(f"the transports pass did not observe cleanly: {problems[:5]}")


def skipped(table: Table, n: int, reason: str) -> None:
    log(f"transports: skipped ({reason})")
    for name in (BATCH_ROW, pass_row(n), FLEET_ROW):
        table.add(name, f"skipped: {reason}")


def run(box: Sandbox, table: Table, options: Options) -> None:
    """One pass's batch (pre-flight + observe, one repository) through each transport, and an
    observe+plan pass over ``n`` tasks with the lane in-process and behind ssh."""
    n = options.transport_tasks
    reason = unavailable()
    if reason is not None:
        skipped(table, n, reason)
        return
    log(f"transports: a login user, sshd on 127.0.0.1, {n} tasks per pass")
    t0 = time.perf_counter()
    try:
        with lane_host(box) as side:
            log(f"  user {side.user.name} and sshd ready in {time.perf_counter() - t0:.1f}s")
            world = World(box, side)
            settle()
            ssh = batch_figures(table, world)
            pass_figures(table, world, n, ssh)
            fleet_figures(table, world)
    except pytest.skip.Exception as exc:  # install_reconciler: no Python the user can run
        skipped(table, n, exc.msg or "the lane user cannot run the reconciler")
    finally:
        close_sessions()
    log(f"  transports section took {time.perf_counter() - t0:.1f}s (users removed, sshd stopped)")


@dataclass
class World:
    """The same repository layout three ways: the bench's own (root's) in the sandbox, and the
    lane user's ``~/src/app`` through ``setpriv`` and through sshd's forced, pinned node."""

    box: Sandbox
    side: ssh_support.Side

    def __post_init__(self) -> None:
        base, home = self.side.root, self.side.user.home
        checkout = self.box.repo(base / "src" / "app")
        self.specs: dict[str, dict[str, Any]] = {
            NEAR: {  # the reconciler's own user: in-process
                "workspaceRoot": str(self.box.lane_root(base / "worktrees")),
                "repos": [{"name": "app", "checkout": str(checkout)}],
            },
            USER: {  # another user on this machine: setpriv, `reconciler node` on stdin
                "user": self.side.user.name,
                "workspaceRoot": f"{home}/worktrees",
                "repos": [{"name": "app", "checkout": f"{home}/src/app"}],
            },
            FAR: self.side.spec(),  # the same user's home behind sshd: a forced, pinned node
        }
        key = ensure_key(str(self.side.identity)).public
        line = authorized_keys_line(FAR, LaneSpec.model_validate(self.specs[FAR]), key)
        ssh_support.install_authorized_keys(self.side.user, line)
        self.side.trust()

    def engine(self, name: str, lanes: list[str], tasks: int) -> Engine:
        return control_engine(
            self.box, self.side.root / name, {k: self.specs[k] for k in lanes}, tasks
        )


def control_engine(
    box: Sandbox, where: Path, specs: dict[str, dict[str, Any]], tasks: int
) -> Engine:
    """A control repo at ``where`` with the lanes of ``specs`` and ``tasks`` tasks on each; a
    state row per task."""
    docs = "\n---\n".join(ssh_support.lane_manifest(k, spec) for k, spec in specs.items())
    files = {
        "config.yaml": CONFIG_DOC,
        "agents.yaml": agent_doc("noop", ["/bin/true"]),
        "lanes.yaml": docs + "\n",
    }
    for lane in specs:
        for i in range(tasks):
            task = f"{lane}-task-{i:03d}"
            files[f"tasks/{task}.yaml"] = task_doc(task, lane, "app", "noop", i)
    repo = box.control(where, files)
    ctx = Context(control=str(repo), state_dir=where.parent / f"{where.name}.state")
    seed_task_rows(ctx)
    return Engine(ctx)


def recorded_batches(world: World) -> dict[str, tuple[Transport, Batch]]:
    """Per lane: its transport and the one batch a real observe pass sent through it."""
    engine = world.engine("control-batch", [NEAR, USER, FAR], 1)
    desired = engine.load()
    lanes = engine.lanes(desired)
    recorders: dict[str, Recorder] = {}
    for name, lane in lanes.items():
        if not isinstance(lane.transport, KINDS[name]):
            raise SystemExit(f"lane {name} got {type(lane.transport).__name__}")
        recorders[name] = Recorder(lane.transport)
        lane.transport = recorders[name]
    with engine.reading() as store:
        checked(observe(desired, store, lanes, engine.clock), 3)
    for name, rec in recorders.items():
        if len(rec.batches) != 1:
            raise SystemExit(f"a pass sent lane {name} {len(rec.batches)} batches, not 1")
    return {name: (rec.inner, rec.batches[0]) for name, rec in recorders.items()}


def send(name: str, transport: Transport, batch: Batch, into: list[float]) -> None:
    t = time.perf_counter()
    result = transport.exchange(batch)
    into.append(time.perf_counter() - t)
    if len(result.responses) != len(batch.requests) or not all(r.ok for r in result.responses):
        raise SystemExit(f"lane {name} answered the bench batch with failures: {result}")


def batch_figures(table: Table, world: World) -> float:
    """The batch a pass sends each lane (recorded from a real pass), then sent again and again,
    each real batch through the local-user and ssh transports followed by an empty one (paired
    differences). Returns one ssh batch's median seconds."""
    recorded = recorded_batches(world)
    ops = "+".join(r.op for r in recorded[NEAR][1].requests)
    empty = Batch(requests=[])
    full: dict[str, list[float]] = {name: [] for name in recorded}
    bare: dict[str, list[float]] = {USER: [], FAR: []}
    for _ in range(BATCH_REPS):
        send(NEAR, *recorded[NEAR], full[NEAR])
        for name in (USER, FAR):
            transport, batch = recorded[name]
            send(name, transport, batch, full[name])
            send(name, transport, empty, bare[name])
    inproc, user, ssh = (median(full[k]) for k in (NEAR, USER, FAR))
    start, ssh_empty = median(bare[USER]), median(bare[FAR])
    connection = median([s - u for s, u in zip(bare[FAR], bare[USER], strict=True)])
    work = median([f - e for f, e in zip(full[FAR], bare[FAR], strict=True)])
    table.add(
        BATCH_ROW,
        f"{inproc:.3f}s / {user:.3f}s / {ssh:.3f}s; local user/in-process {user / inproc:.1f}, "
        f"ssh/in-process {ssh / inproc:.1f} ({ops}, 1 repo; median of {BATCH_REPS})",
    )
    table.measure("ssh batch", ssh)
    table.measure("local user batch", user)
    table.measure("in-process batch", inproc)
    table.add(
        BATCH_SPLIT_ROW,
        f"{connection:.3f}s + {start:.3f}s + {work:.3f}s (each lane's node a reused session: an "
        f"empty batch takes {ssh_empty:.3f}s over ssh, {start:.3f}s as the local user; the work "
        f"in-process {inproc:.3f}s)",
    )
    over = ssh / user
    table.add(
        SSH_OVER_USER_ROW,
        f"{over:.2f} ({ssh:.3f}s / {user:.3f}s)",
        f"≤ {SSH_OVER_USER_TARGET:g}",
        over <= SSH_OVER_USER_TARGET,
    )
    return ssh


def pass_figures(table: Table, world: World, n: int, ssh: float) -> None:
    """An observe+plan pass over ``n`` tasks, the lane in-process, then the lane behind ssh."""
    engines = {NEAR: world.engine("control-near", [NEAR], n)}
    engines[FAR] = world.engine("control-far", [FAR], n)
    loaded = {name: e.load() for name, e in engines.items()}
    passes: dict[str, list[float]] = {name: [] for name in engines}
    for rep in range(PASS_REPS + 1):  # the first round warms up (imports, caches)
        for name, e in engines.items():
            t = time.perf_counter()
            with e.reading() as store:
                result, observed = e.observe_and_plan(loaded[name], store)
            elapsed = time.perf_counter() - t
            checked(observed, 1)
            if len(result.tasks) != n:
                raise SystemExit(f"the {name} pass planned {len(result.tasks)} tasks, not {n}")
            if rep:
                passes[name].append(elapsed)
    near_pass, far_pass = median(passes[NEAR]), median(passes[FAR])
    ratio = far_pass / near_pass
    table.add(
        pass_row(n),
        f"{ratio:.2f} ({far_pass:.3f}s / {near_pass:.3f}s; median of {PASS_REPS})",
    )
    extra = (far_pass - near_pass) / ssh
    table.add(
        extra_row(n),
        f"{extra:.2f} (ssh adds {far_pass - near_pass:.3f}s to the pass; one ssh batch {ssh:.3f}s)",
        f"≤ {ROUND_TRIPS_TARGET:g}",
        extra <= ROUND_TRIPS_TARGET,
    )


@contextlib.contextmanager
def fleet(world: World) -> Iterator[dict[str, dict[str, Any]]]:
    """``FLEET`` ssh lanes: the section's user and ``FLEET - 1`` more, each with its checkout and
    its key's forced, pinned node, behind one more sshd letting them all in. The lane specs by
    name; the users are removed and that sshd stopped on the way out, whatever happened."""
    side = world.side
    base = side.root / "fleet"
    users: list[linux_users.User] = []
    sshd: ssh_support.Sshd | None = None
    try:
        for _ in range(FLEET - 1):
            user = ssh_support.create_user()
            users.append(user)
            ssh_support.make_remote_repo(user)
        sshd = ssh_support.Sshd(base / "sshd", side.user, also=users).start()
        specs: dict[str, dict[str, Any]] = {}
        for i, user in enumerate([side.user, *users]):
            lane = ssh_support.Side(
                root=base / f"l{i}", user=user, sshd=sshd, installed=side.installed
            )
            name = f"far{i:02d}"
            specs[name] = lane.spec()
            key = ensure_key(str(lane.identity)).public
            line = authorized_keys_line(name, LaneSpec.model_validate(specs[name]), key)
            ssh_support.install_authorized_keys(user, line)
            lane.trust()
        yield specs
    finally:
        close_sessions()
        try:
            if sshd is not None:
                sshd.stop()
        finally:
            for user in users:
                linux_users.remove_user(user)


def fleet_figures(table: Table, world: World) -> None:
    """An observe+plan pass over ``FLEET`` ssh lanes of ``FLEET_TASKS`` tasks each, against the
    same pass over one of them (sessions started by a first, unmeasured round)."""
    t0 = time.perf_counter()
    with fleet(world) as specs:
        made = time.perf_counter() - t0
        log(f"  {FLEET} lane users, their checkouts and keys ready in {made:.1f}s")
        settle()
        root = world.side.root
        one = next(iter(specs))
        engines = {
            "one": control_engine(world.box, root / "control-one", {one: specs[one]}, FLEET_TASKS),
            "all": control_engine(world.box, root / "control-fleet", specs, FLEET_TASKS),
        }
        lanes = {"one": 1, "all": FLEET}
        loaded = {name: e.load() for name, e in engines.items()}
        passes: dict[str, list[float]] = {name: [] for name in engines}
        busy: list[float] = []  # the machine's busy cores during each fleet pass
        used: list[float] = []  # the machine's CPU seconds during each fleet pass
        own: dict[str, list[float]] = {name: [] for name in engines}  # this process's CPU
        first: dict[str, float] = {}
        for rep in range(PASS_REPS + 1):  # the first round starts the sessions
            for name, e in engines.items():
                t, cpu, mine = time.perf_counter(), busy_seconds(), time.process_time()
                with e.reading() as store:
                    result, observed = e.observe_and_plan(loaded[name], store)
                elapsed = time.perf_counter() - t
                if rep:
                    own[name].append(time.process_time() - mine)
                if name == "all" and rep:
                    used.append(busy_seconds() - cpu)
                    busy.append(used[-1] / elapsed)
                checked(observed, lanes[name])
                if len(result.tasks) != lanes[name] * FLEET_TASKS:
                    raise SystemExit(f"the {name} fleet pass planned {len(result.tasks)} tasks")
                if rep:
                    passes[name].append(elapsed)
                else:
                    first[name] = elapsed
        single, every = median(passes["one"]), median(passes["all"])
        ratio = every / single
        table.add(
            FLEET_ROW,
            f"{ratio:.2f} ({every:.3f}s / {single:.3f}s; median of {PASS_REPS}; the first pass, "
            f"sessions starting: {first['all']:.2f}s / {first['one']:.2f}s; set-up {made:.0f}s)",
            f"≤ {FLEET_TARGET:g}",
            ratio <= FLEET_TARGET,
        )
        cores = os.cpu_count() or 1
        table.add(
            FLEET_CPU_ROW,
            f"{median(busy):.1f} of {cores} cores busy during the {FLEET}-lane pass (every "
            f"lane's node, sshd and ssh share this machine): its CPU over all {cores} cores, "
            f"none idle, is {median(used) / cores / single:.1f}x the one-lane pass at best here",
        )
        mine_all, mine_one = median(own["all"]), median(own["one"])
        table.measure("reconciler CPU per ssh lane", (mine_all - mine_one) / (FLEET - 1))
        table.measure("tasks per fleet lane", FLEET_TASKS)
        table.add(
            FLEET_OWN_ROW,
            f"{mine_all / single:.1f}x the one-lane pass ({mine_all * 1000:.1f} ms of CPU over "
            f"{FLEET} lanes, {mine_one * 1000:.1f} ms over 1: "
            f"{(mine_all - mine_one) / (FLEET - 1) * 1000:.2f} ms a lane, planning its "
            f"{FLEET_TASKS} tasks included). The part that stays on this machine when every "
            "lane is a host of its own: one interpreter plans every lane, so the pass is at "
            "least this long",
        )
