"""The reconcile pass: load → observe → plan → apply → state, and the saved-plan guard.

This module wires the parts together; it decides nothing itself (the planner decides) and renders
nothing (the CLI renders).
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from reconciler import safefile
from reconciler.apply import Applier, ApplyReport
from reconciler.control import ControlRepo, load_desired
from reconciler.lanes import LaneClient, LaneUnavailable, RequestFailed
from reconciler.lanes.policy import load_policy
from reconciler.manifests.errors import ManifestErrors
from reconciler.manifests.loader import LaneCheck, gc_paused
from reconciler.manifests.models import Desired, LaneSpec
from reconciler.manifests.policy import Policy
from reconciler.observe import observe
from reconciler.plan import Action, Blocked, Observed, Plan, PoolFill, Why, plan
from reconciler.protocol import ClaimLaneRequest, ClaimResult, RateLimit, Recheck, StateRef
from reconciler.state import LAST_REVISION, StateError, StateLock, Store
from reconciler.trust import private_file, untrusted

PLAN_FORMAT = 1


class UserError(Exception):
    """A problem the user can fix; the message is a sentence (the CLI adds no traceback)."""


@dataclass(frozen=True)
class Context:
    control: str
    state_dir: Path
    policy: str | None = None  # --policy; None: $RECONCILER_POLICY, then /etc/reconciler/…

    @classmethod
    def resolve(cls, control: str | None, state: str | None, policy: str | None = None) -> Context:
        """``--control``/``--state``, then ``$RECONCILER_CONTROL``/``$RECONCILER_STATE``, then the
        working copy around the current directory and its ``.reconciler``."""
        spec = control or os.environ.get("RECONCILER_CONTROL") or _enclosing_repo(Path.cwd())
        local = Path(spec).expanduser() if "://" not in spec else None
        if local is not None and local.exists():
            spec = str(local)
        if state or os.environ.get("RECONCILER_STATE"):
            state_dir = Path(state or os.environ["RECONCILER_STATE"]).expanduser()
        elif local is not None and (local / ".git").exists():
            state_dir = local / ".reconciler"
        else:
            state_dir = Path.cwd() / ".reconciler"
        return cls(control=spec, state_dir=state_dir.absolute(), policy=policy)


def _enclosing_repo(cwd: Path) -> str:
    """The working copy that contains ``cwd`` (like git itself), else ``cwd``."""
    for directory in (cwd, *cwd.parents):
        if (directory / ".git").exists():
            return str(directory)
    return str(cwd)


@dataclass(frozen=True)
class Fallback:
    """A read command shows the last good revision: the control repo's HEAD has manifest
    errors, and ``good`` is the revision the last pass applied (what ``run`` goes on
    reconciling until they are fixed)."""

    head: str
    good: str
    errors: ManifestErrors

    @property
    def problem(self) -> str:
        return (
            f"{self.errors.summary()} at {self.head[:12]}; showing the last good revision "
            f"{self.good[:12]} until they are fixed"
        )


@dataclass(frozen=True)
class PassResult:
    plan: Plan
    report: ApplyReport | None
    observed: Observed | None = None
    # (lane, repo) → what its forge last said of the token's rate limit (GitHub), this pass
    rates: Mapping[tuple[str, str], RateLimit] = field(default_factory=dict)


class Engine:
    def __init__(self, ctx: Context, clock: Callable[[], float] = time.time) -> None:
        self.ctx = ctx
        self.clock = clock
        self._control: ControlRepo | None = None
        self._state_trusted = False
        # the lanes' clients, for the lane specs (a desired state's dict) and _LaneBasis made of
        self._lanes: tuple[dict[str, LaneSpec], _LaneBasis, dict[str, LaneClient]] | None = None
        self._identity: StateRef | None = None
        self._writer = False  # holding the state lock: its batches claim lanes no state owns
        self.fallback: Fallback | None = None  # set by load_for_reading
        # lanes to move to this state on the next pass (``--take-over``; ALL: every lane)
        self.take_over: frozenset[str] = frozenset()
        self.taken_over: list[str] = []  # what the take-overs did, one sentence per lane moved
        # (lane, repo) → what its forge said of the token's rate limit on the last observation
        self.rates: dict[tuple[str, str], RateLimit] = {}

    @property
    def state_dir(self) -> Path:
        """The state directory, once it is known that no one else can write it: its caches are
        pickles and its database decides what the reconciler does, so a directory another user
        can change (say ``.reconciler`` inside someone else's working copy) would be theirs to
        run code as the reconciler."""
        if not self._state_trusted:
            why = untrusted(self.ctx.state_dir)
            if why is not None:
                raise UserError(
                    f"the state directory {self.ctx.state_dir} cannot be trusted: {why}. Whoever "
                    "can write it could make the reconciler run code as you; use a directory "
                    "only you can write (--state DIR or $RECONCILER_STATE; mkdir -m 700 DIR)"
                )
            self._state_trusted = True
        return self.ctx.state_dir

    @property
    def control(self) -> ControlRepo:
        if self._control is None:
            self._control = ControlRepo.open(self.ctx.control, self.state_dir)
        return self._control

    def load(
        self, worktree: bool = False, rev: str | None = None, lane_check: LaneCheck | None = None
    ) -> Desired:
        """Desired state at the control repo's current revision, or at ``rev`` (raises
        ManifestErrors). ``lane_check`` adds lanes' policy problems as errors (``validate``)."""
        return load_desired(
            self.control, self.state_dir, worktree=worktree, rev=rev, lane_check=lane_check
        )

    def load_for_reading(self) -> Desired:
        """The desired state a read command shows (status, describe, plan, doctor, logs): HEAD's,
        or, when HEAD's manifests are broken, the last revision a pass applied, with
        ``self.fallback`` saying so. With no good revision to fall back on, the errors raise."""
        self.fallback = None  # what this load says, not what an earlier one did
        try:
            return self.load()
        except ManifestErrors as exc:
            store = Store.open_readonly(self.state_dir)
            try:
                good = store.get_meta(LAST_REVISION)
            finally:
                store.close()
            head = self.control.revision()
            if good is None or good == head:
                raise
            desired = self.load(rev=good)
            self.fallback = Fallback(head, good, exc)
            return desired

    def policy(self) -> Policy:
        """The admin policy in force (read again when its file changed); ``PolicyError``."""
        return load_policy(self.ctx.policy)

    def identity(self) -> StateRef:
        """The state directory every lane batch acts for: its database's id (None before there
        is one), where it is and on which host. A lane obeys only the state that owns it."""
        if self._identity is None or self._identity.id is None:
            try:
                with self.reading() as store:
                    found = store.state_id()
            except StateError:  # a damaged database: doctor and friends still name the lanes
                found = None
            self._identity = _state_ref(self.state_dir, found)
        return self._identity

    def lanes(self, desired: Desired) -> dict[str, LaneClient]:
        """A client per lane; the policy decides which of them may be contacted at all. A lane's
        client lasts while its spec, the policy and the identity stay as they are, across passes
        and revisions: what it remembers (a pre-flight that passed) outlives one pass."""
        policy = self.policy()
        basis = (policy, self.identity(), self._writer)
        cached = self._lanes
        if cached is not None and cached[0] is desired.lanes and _same_basis(cached[1], basis):
            return cached[2]
        known = cached[2] if cached is not None and _same_basis(cached[1], basis) else {}
        lanes = {}
        for name, spec in desired.lanes.items():
            client = known.get(name)
            if client is None or client.spec != spec:
                client = LaneClient(name, spec, policy=policy, state=basis[1], claim=basis[2])
            lanes[name] = client
        self._lanes = (desired.lanes, basis, lanes)
        return lanes

    def observe_and_plan(
        self, desired: Desired, store: Store, recheck: Sequence[Recheck] = ()
    ) -> tuple[Plan, Observed]:
        """Observe and plan; ``recheck`` names PRs whose forge feedback is read anew."""
        rates: dict[tuple[str, str], RateLimit] = {}
        # A pass allocates a few objects per task and frees them together; with 10k tasks the
        # cyclic collector would rescan the whole desired state many times for nothing.
        with gc_paused():
            lanes = self.lanes(desired)
            observed = observe(desired, store, lanes, self.clock, recheck=recheck, rates=rates)
            self.rates = rates
            return plan(desired, observed, self.clock()), observed

    @contextmanager
    def locked(self, timeout: float | None) -> Iterator[Store]:
        lock = StateLock(self.state_dir)
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock.acquire(timeout)
        try:
            store = Store.open(self.state_dir)
            self._identity = _state_ref(self.state_dir, store.state_id())
            self._writer = True
            try:
                yield store
            finally:
                self._writer = False
                store.close()
        finally:
            lock.release()

    @contextmanager
    def reading(self) -> Iterator[Store]:
        store = Store.open_readonly(self.state_dir)
        try:
            yield store
        finally:
            store.close()

    def apply(
        self,
        desired: Desired,
        store: Store,
        saved: Plan | None = None,
        confirm: Callable[[Plan], bool] | None = None,
        log: Callable[[str], None] = lambda _m: None,
        *,
        recheck: Sequence[Recheck] = (),
        fill_pools: bool = True,
    ) -> PassResult:
        """One pass under the lock. With ``saved``, refuse it if stale and apply its actions.
        ``recheck``: PRs whose forge feedback the observation reads anew (webhooks named them).
        ``fill_pools``: top up the plan's pools at the end of the pass (``run`` does it beside
        the passes instead: ``apply.fill_pools``)."""
        if self.take_over:
            if saved is not None:
                raise UserError(
                    "--take-over does not go with a saved plan: the plan was made while the lane "
                    "was another state's, so it holds nothing for it; run `reconciler apply "
                    "--take-over LANE` without the plan file"
                )
            self._take_over(desired, store, log)
        current, observed = self.observe_and_plan(desired, store, recheck)
        rates = dict(self.rates)
        if saved is not None:
            if saved.revision != desired.revision or saved.serial != store.serial():
                raise UserError(
                    f"the saved plan is stale: it was computed at control revision "
                    f"{saved.revision[:12]} and state serial {saved.serial}, but the control repo "
                    f"is at {desired.revision[:12]} and the state at serial {store.serial()}; "
                    "run `reconciler plan --out FILE` again"
                )
            current = replace(current, actions=saved.actions)
        if confirm is not None and not current.empty and not confirm(current):
            return PassResult(current, None, observed, rates)
        applier = Applier(desired, observed, store, self.lanes(desired), log=log, clock=self.clock)
        report = applier.apply(current, fill=fill_pools)
        return PassResult(current, report, observed, rates)

    def _take_over(self, desired: Desired, store: Store, log: Callable[[str], None]) -> None:
        """Move the lanes of ``--take-over`` to this state, each recorded as an event; done once
        (a ``run`` takes them over on its first pass)."""
        names = sorted(desired.lanes) if ALL_LANES in self.take_over else sorted(self.take_over)
        unknown = [name for name in names if name not in desired.lanes]
        if unknown:
            raise UserError(
                f"--take-over names {', '.join(unknown)}, not a lane of the manifests (lanes: "
                f"{', '.join(sorted(desired.lanes)) or 'none'}); give a lane's name, or `all`"
            )
        lanes = self.lanes(desired)
        for name in names:
            client = lanes[name]
            try:
                result = client.one(ClaimLaneRequest(lane=client.ref, take_over=True), ClaimResult)
            except (LaneUnavailable, RequestFailed) as exc:
                raise type(exc)(f"lane {name} could not be taken over: {exc}") from exc
            previous = result.previous
            if previous is None:
                continue
            message = (
                f"lane {name} taken over from the state directory {previous.path} on "
                f"{previous.host} (state id {previous.id[:12]})"
            )
            with store.transaction() as tx:
                tx.add_event(None, "lane-taken-over", message, desired.revision, self.clock())
            self.taken_over.append(message)
            log(message)
        self.take_over = frozenset()


ALL_LANES = "all"

_LaneBasis = tuple[Policy, StateRef, bool]  # what every lane client is made with


def _same_basis(a: _LaneBasis, b: _LaneBasis) -> bool:
    return a[0] is b[0] and a[1:] == b[1:]


def _state_ref(state_dir: Path, state_id: str | None) -> StateRef:
    host = socket.gethostname()
    return StateRef(id=state_id, path=str(state_dir), host=host, machine=_machine() or host)


def _machine() -> str:
    """What tells this host apart from others of the same name: systemd's machine id."""
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            with open(path, encoding="ascii", errors="replace") as handle:
                found = handle.read(64).strip()
        except OSError:
            continue
        if found:
            return found
    return ""


# ---------------------------------------------------------------------------- saved plans


def plan_to_json(p: Plan) -> dict[str, Any]:
    """The stable ``plan --json`` shape (design §7), plus the format for saved plans."""
    data: dict[str, Any] = {
        "format": PLAN_FORMAT,
        "revision": p.revision,
        "serial": p.serial,
        "actions": [a.to_json() for a in p.actions],
        "blocked": [
            {"task": b.task, "reason": b.reason, "reasonCode": b.why.value} for b in p.blocked
        ],
    }
    if p.requeue is not None:  # omitted, as the plan's other keys are, when there is none
        data["requeue"] = p.requeue.to_json(p.now)
    if p.pools:
        data["pools"] = [fill.to_json() for fill in p.pools]
    return data


def save_plan(p: Plan, path: Path) -> None:
    """Written through a fresh temporary file (never through a symlink planted at the path or
    beside it), readable by its owner only: reasons quote what agents printed."""
    safefile.write_atomic(path, (json.dumps(plan_to_json(p), indent=2) + "\n").encode(), 0o600)


def read_plan(path: Path) -> Plan:
    """A plan saved by ``plan --out``. Its actions are what ``apply`` does, so a file someone
    else could have written (say, in /tmp) is refused."""
    try:
        with path.open("rb") as handle:
            if not private_file(handle.fileno()):
                raise UserError(
                    f"{path}: the plan file can be written by someone else (it belongs to "
                    f"uid {os.fstat(handle.fileno()).st_uid}, or others may write it), and a "
                    "plan decides what apply does; save the plan where only you can write"
                )
            data = json.loads(handle.read().decode("utf-8"))
        if data.get("format") != PLAN_FORMAT:
            raise ValueError(f"unknown plan format {data.get('format')!r}")
        return Plan(
            revision=str(data["revision"]),
            serial=int(data["serial"]),
            now=0.0,
            actions=tuple(Action.from_json(a) for a in data["actions"]),
            blocked=tuple(
                Blocked(b["task"], b["reason"], Why(b["reasonCode"]))
                for b in data.get("blocked", [])
            ),
            pools=tuple(PoolFill(**fill) for fill in data.get("pools", [])),
        )
    except FileNotFoundError as exc:
        raise UserError(
            f"{path}: no such plan file; create one with `reconciler plan --out`"
        ) from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: not a plan saved by `reconciler plan --out` ({exc})") from exc
