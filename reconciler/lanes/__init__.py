"""The only door to a project: a lane client sends batches of node requests through a transport.

Transports carry the same JSON (``reconciler.protocol``); the control plane never learns which one
it talks to. This package must not decide anything: it carries requests and reports failures.
A lane's words are untrusted: the messages of ``LaneUnavailable`` and ``RequestFailed`` have
anything shaped like a credential masked before they travel further (to state, logs, the
terminal). (The node's own names, ``reconciler.node.lane.Lane`` and ``NodeError``, are the other
side of the same door: ``LaneClient`` and ``RequestFailed`` here.)
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Sequence
from typing import Protocol, TypeVar

from pydantic import BaseModel, ValidationError

from reconciler.manifests.models import Desired, LaneSpec
from reconciler.manifests.policy import Policy
from reconciler.protocol import (
    RESULTS,
    AgentRef,
    Batch,
    BatchResult,
    LaneRef,
    PreflightCheck,
    PreflightRequest,
    Pricing,
    RepoHooks,
    RepoRef,
    Request,
    Response,
    StateRef,
)
from reconciler.redact import redact

T = TypeVar("T", bound=BaseModel)


class LaneUnavailable(Exception):
    """The lane could not be reached at all (transport failure): its tasks are ``unknown``.

    ``check`` names what failed for ``doctor`` (``user``, ``install``, ``host``…); the message is
    "what is wrong; what to do"."""

    def __init__(self, message: str, check: str = "lane") -> None:
        super().__init__(redact(message))
        self.check = check


class RequestFailed(Exception):
    """One request failed inside the lane; ``temporary`` failures are worth a later retry."""

    def __init__(self, message: str, temporary: bool = False) -> None:
        super().__init__(redact(message))
        self.temporary = temporary


class Transport(Protocol):
    """Carries one batch to a lane and its results back. Transports that cross a process
    boundary serialise the batch as JSON (``reconciler node`` reads it on stdin)."""

    def exchange(self, batch: Batch) -> BatchResult: ...


PREFLIGHT_FRESH = 30.0  # seconds a passed pre-flight stands for the passes that follow it


class InProcessTransport:
    """The lane user is the reconciler's own user: call the node code directly.

    The batch is the same validated value a remote node would parse from JSON, so the node
    sees exactly what other transports deliver, without the encoding cost. Such a lane shares
    the reconciler's environment, so the node is told not to take a token from it: a lane's
    GitHub token comes from its ``credentials.github`` file, never from the reconciler's own
    ``GH_TOKEN``.
    """

    def exchange(self, batch: Batch) -> BatchResult:
        from reconciler.node.server import handle

        return handle(batch, env_tokens=False)


def lane_ref(name: str, spec: LaneSpec) -> LaneRef:
    return LaneRef(
        name=name,
        workspace_root=spec.workspace_root,
        repos=[
            RepoRef(
                name=r.name,
                checkout=r.checkout,
                remote=r.remote,
                forge=r.forge.kind if r.forge else None,
                github_repo=r.forge.repo if r.forge else None,
                api_url=r.forge.api_url if r.forge else None,
                pool=r.pool,
                sparse=list(r.sparse),
                hooks=RepoHooks(
                    after_create=r.hooks.after_create,
                    before_run=r.hooks.before_run,
                    after_run=r.hooks.after_run,
                    before_remove=r.hooks.before_remove,
                    timeout=r.hooks.timeout,
                ),
            )
            for r in spec.repos
        ],
        env=dict(spec.env),
        github_token_file=spec.credentials.github,
    )


def agent_ref(desired: Desired, agent: str) -> AgentRef:
    spec = desired.agents[agent]
    return AgentRef(
        kind=spec.kind,
        command=spec.command,
        args=list(spec.args),
        env=dict(spec.env),
        pricing=Pricing(**spec.pricing.model_dump()) if spec.pricing else None,
        commits=spec.commits,
    )


class LaneClient:
    """A client for one lane: builds its ``LaneRef`` once and exchanges batches.

    Every batch names ``state``, the state directory it acts for: the lane refuses changes from
    any but its owner. ``claim``: this client's reconciler holds that state's lock, so a lane no
    state owns yet becomes its on the first batch."""

    def __init__(
        self,
        name: str,
        spec: LaneSpec,
        transport: Transport | None = None,
        policy: Policy | None = None,
        *,
        state: StateRef | None = None,
        claim: bool = False,
    ) -> None:
        self.name = name
        self.spec = spec
        self.ref = lane_ref(name, spec)
        self.transport = transport or transport_for(name, spec, policy)
        self.state = state
        self.claim = claim
        # the last pre-flight that passed: (the request, when, its checks)
        self._passed: tuple[PreflightRequest, float, list[PreflightCheck]] | None = None

    def passed_preflight(
        self, request: PreflightRequest, now: float
    ) -> list[PreflightCheck] | None:
        """The checks of the same pre-flight when it passed less than ``PREFLIGHT_FRESH``
        seconds ago: a pass need not ask again (a failed one is asked every pass, so a fix is
        seen at once; ``doctor`` always asks)."""
        passed = self._passed
        if passed is None or passed[0] != request or not 0 <= now - passed[1] < PREFLIGHT_FRESH:
            return None
        return passed[2]

    def preflight_seen(
        self, request: PreflightRequest, now: float, checks: list[PreflightCheck]
    ) -> None:
        ok = all(c.ok or c.advisory for c in checks)
        self._passed = (request, now, checks) if ok else None

    def call(self, requests: Sequence[Request]) -> list[Response]:
        batch = Batch(requests=list(requests), state=self.state, claim=self.claim)
        try:
            result = self.transport.exchange(batch)
        except LaneUnavailable:
            raise
        except (OSError, ValidationError) as exc:
            raise LaneUnavailable(f"lane {self.name}: {exc}") from exc
        if len(result.responses) != len(batch.requests):
            raise LaneUnavailable(
                f"lane {self.name}: answered {len(result.responses)} of "
                f"{len(batch.requests)} requests"
            )
        return result.responses

    def close(self) -> None:
        """End the lane's idle node sessions (a transport that keeps none has nothing to end)."""
        close = getattr(self.transport, "close", None)
        if callable(close):
            close()

    def preflight_request(self, desired: Desired) -> PreflightRequest:
        """What pre-flight checks for this lane: its free disk, the base of each repository its
        tasks start from, and the agents they run. One request for every pass and ``doctor``."""
        bases: dict[str, set[str]] = {}
        agents: set[str] = set()
        for task in desired.by_lane.get(self.name, {}).values():
            bases.setdefault(task.spec.repo, set()).add(task.spec.base)
            agents.add(task.spec.agent)
        return PreflightRequest(
            lane=self.ref,
            min_free_bytes=int(self.spec.min_free_disk),
            bases={repo: sorted(b) for repo, b in bases.items()},
            agents=[agent_ref(desired, name) for name in sorted(agents)],
        )

    def one(self, request: Request, result_type: type[T]) -> T:
        """Send one request; return its typed result or raise ``RequestFailed``."""
        expected = RESULTS[request.op]
        if result_type is not expected:
            raise TypeError(f"{request.op} answers {expected.__name__}, not {result_type.__name__}")
        (response,) = self.call([request])
        return unwrap(response, result_type)


def unwrap(response: Response, result_type: type[T]) -> T:
    if not response.ok:
        failure = response.failure
        raise RequestFailed(
            failure.error if failure else "the lane reported a failure without a message",
            temporary=bool(failure and failure.temporary),
        )
    return result_type.model_validate(response.result or {})


def transport_for(name: str, spec: LaneSpec, policy: Policy | None = None) -> Transport:
    """Pick the transport a lane needs: in-process for the reconciler's own user, the
    local-user transport (``setpriv`` to the lane user) for another user on this machine, and
    OpenSSH to a forced ``reconciler node`` for an ``ssh://`` host — unless the admin policy
    (``policy``, else the one in force on this host) refuses what the lane names: then a
    transport that contacts nothing and says why."""
    from reconciler.lanes.policy import RefusedTransport, load_policy, violations

    policy = policy if policy is not None else load_policy()
    problems = violations(policy, name, spec)
    if problems:
        return RefusedTransport(name, problems)
    if spec.host != "local":
        from reconciler.lanes.ssh import SshTransport

        return SshTransport(name, spec)
    me = pwd.getpwuid(os.geteuid()).pw_name
    if spec.user is None or spec.user == me:
        return InProcessTransport()
    from reconciler.lanes.local_user import LocalUserTransport

    return LocalUserTransport(name, spec.user)


def close_sessions() -> None:
    """End every idle node session of this process (also done at interpreter exit)."""
    from reconciler.lanes.process import SESSIONS

    SESSIONS.close()


def serve_node(pin: str | None = None) -> int:
    """``reconciler node``: serve one batch, or a session of batches, on stdin/stdout (the far
    end of every transport).
    ``pin``: serve only the lane configuration with this ``lane_pin`` (ssh forced commands)."""
    from reconciler.node.server import main as node_main

    return node_main(pin)
