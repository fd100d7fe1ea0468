"""Pre-flight checks of a lane before dispatch: repos, bases, remotes, workspace, disk, git, agents.

Each check is one ``PreflightCheck`` with a one-sentence ``detail`` and, when it fails, a concrete
``fix``. Read-only: it must not create the workspace root, fetch, or start an agent.
"""

from __future__ import annotations

import os
import re
import shutil
import stat

from reconciler.diskspace import existing_ancestor, human_bytes
from reconciler.node import git as gitops
from reconciler.node.agents import ADAPTERS
from reconciler.node.errors import NodeError
from reconciler.node.lane import Lane, check_branch
from reconciler.node.loginenv import login_env
from reconciler.node.owner import UnreadableOwner, read_owner
from reconciler.node.pulls import pulls_for
from reconciler.node.runs import agent_env
from reconciler.protocol import (
    AgentRef,
    PreflightCheck,
    PreflightRequest,
    owned_elsewhere,
    owns,
)

MIN_GIT = (2, 30)


def _ok(name: str, subject: str, detail: str) -> PreflightCheck:
    return PreflightCheck(name=name, ok=True, subject=subject, detail=detail)


def _fail(name: str, subject: str, detail: str, fix: str) -> PreflightCheck:
    return PreflightCheck(name=name, ok=False, subject=subject, detail=detail, fix=fix)


def preflight(lane: Lane, req: PreflightRequest) -> list[PreflightCheck]:
    checks: list[PreflightCheck] = []
    for repo_name in req.bases:
        lane.repo(repo_name)  # a base for a repo the lane lacks is a request error
    checks.append(_git_version())
    for name, repo in lane.repos.items():
        checks.extend(_repo_checks(lane, name, req.bases.get(name, []), repo.remote, repo.forge))
        checks.extend(_forge_checks(lane, name))
    checks.extend(_workspace_checks(lane, req.min_free_bytes))
    checks.append(_home_check(lane))
    checks.append(_owner_check(lane))
    checks.append(_login_env_check())
    for agent in req.agents:
        env = _run_env(lane, agent)  # what a run of the agent gets, built once for its checks
        checks.append(_agent_check(agent, env))
        auth = _auth_check(agent, env)
        if auth is not None:
            checks.append(auth)
        config = _config_check(agent, env)
        if config is not None:
            checks.append(config)
    return checks


def _git_version() -> PreflightCheck:
    try:
        found = gitops.version()
    except gitops.GitError as exc:
        return _fail("git", "", str(exc), "install git 2.30 or newer for the lane user")
    shown = ".".join(map(str, found))
    if found < MIN_GIT:
        return _fail(
            "git",
            "",
            f"git {shown} is older than 2.30.",
            "upgrade git to 2.30 or newer (worktree handling relies on it)",
        )
    return _ok("git", "", f"git {shown} is installed.")


def _repo_checks(
    lane: Lane, name: str, bases: list[str], remote: str, forge: str | None
) -> list[PreflightCheck]:
    checkout = lane.checkouts[name]
    if not os.path.isdir(checkout):
        return [
            _fail(
                "checkout",
                name,
                f"The checkout {checkout} of repo {name} does not exist.",
                f"clone the repository there (git clone URL {checkout}) or fix the lane's "
                "checkout path",
            )
        ]
    if not gitops.is_repo(checkout):
        return [
            _fail(
                "checkout",
                name,
                f"{checkout} exists but is not a git repository.",
                f"clone the repository into {checkout} or point the lane at the real clone",
            )
        ]
    checks = [_ok("checkout", name, f"{checkout} is a git repository."), _identity(name, checkout)]
    for base in bases:
        try:
            check_branch(base, "base branch")
        except NodeError as exc:
            checks.append(_fail("base-branch", f"{name}:{base}", str(exc), "fix the task's base"))
            continue
        ref = gitops.base_ref(checkout, base, remote)
        if ref is None:
            checks.append(
                _fail(
                    "base-branch",
                    f"{name}:{base}",
                    f"Base branch {base} exists neither locally nor as {remote}/{base} "
                    f"in {checkout}.",
                    f"fetch it (git -C {checkout} fetch {remote} {base}) or fix the task's base",
                )
            )
        else:
            checks.append(
                _ok("base-branch", f"{name}:{base}", f"Base branch {base} resolves to {ref}.")
            )
    # Every successful task is delivered by a push (with or without a forge).
    try:
        url = gitops.remote_url(checkout, remote)
    except gitops.GitError as exc:
        checks.append(
            _fail(
                "remote",
                name,
                str(exc),
                f"git -C {checkout} remote add {remote} URL, or set the repo's remote",
            )
        )
    else:
        checks.append(_ok("remote", name, f"Remote {remote} is {url}."))
    return checks


def _identity(name: str, checkout: str) -> PreflightCheck:
    """Whether commits in the repo's worktrees have an author: the identity git finds in the
    checkout, which runs export to every agent (some agents hide ~/.gitconfig from git)."""
    found = {}
    for key in ("user.name", "user.email"):
        proc = gitops.run(["config", "--get", key], checkout, check=False)
        found[key] = proc.stdout.strip() if proc.returncode == 0 else ""
    if all(found.values()):
        who = f"{found['user.name']} <{found['user.email']}>"
        return _ok("git-identity", name, f"Commits in {name} are authored by {who}.")
    missing = " and ".join(k for k, v in found.items() if not v)
    return PreflightCheck(
        name="git-identity",
        ok=False,
        subject=name,
        detail=f"git has no {missing} in {checkout}: an agent's `git commit` fails with "
        '"Author identity unknown" (commits: reconciler falls back to its own identity).',
        fix="as the lane user, git config --global user.name NAME and "
        "git config --global user.email ADDRESS",
        advisory=True,  # doctor says it; the tasks whose agent commits will say it too
    )


def _workspace_checks(lane: Lane, min_free: int) -> list[PreflightCheck]:
    root = lane.root
    checks: list[PreflightCheck] = []
    anchor = existing_ancestor(root)
    if os.path.exists(root) and not os.path.isdir(root):
        checks.append(
            _fail(
                "workspace-writable",
                "",
                f"The workspace root {root} exists but is not a directory.",
                f"remove {root} or choose another workspaceRoot",
            )
        )
    elif not os.access(anchor, os.W_OK | os.X_OK):
        what = "is not writable" if anchor == root else f"cannot be created in {anchor}"
        checks.append(
            _fail(
                "workspace-writable",
                "",
                f"The workspace root {root} {what} by this user.",
                f"make {anchor} writable by the lane user (chown/chmod) or choose another "
                "workspaceRoot",
            )
        )
    else:
        verb = "is writable" if anchor == root else "can be created"
        checks.append(_ok("workspace-writable", "", f"The workspace root {root} {verb}."))
    try:
        st = os.statvfs(anchor)
    except OSError as exc:
        checks.append(
            _fail("disk", "", f"Free space at {anchor} cannot be read: {exc}.", "check the mount")
        )
        return checks
    free = st.f_bavail * st.f_frsize
    if free < min_free:
        checks.append(
            _fail(
                "disk",
                "",
                f"Only {human_bytes(free)} are free at {anchor}; "
                f"at least {human_bytes(min_free)} needed.",
                f"free disk space on the file system holding {anchor} or move the workspace root",
            )
        )
    else:
        checks.append(_ok("disk", "", f"{human_bytes(free)} free at {anchor}."))
    return checks


def _home_check(lane: Lane) -> PreflightCheck:
    """The lane user's home keeps other users out: its checkouts, worktrees, tokens and agent
    logins are usually inside. Advisory: it is reported, but tasks are still dispatched."""
    home = os.path.expanduser("~")
    try:
        mode = stat.S_IMODE(os.stat(home).st_mode)
    except OSError as exc:
        return _fail("home", "", f"The home {home} cannot be examined: {exc}.", "check it")
    if not mode & 0o005:
        return _ok("home", "", f"The home {home} is mode {mode:o}: other users cannot enter it.")
    under = home.rstrip("/") + "/"
    inside = [
        f"{kind} ~/{path[len(under) :]}"
        for kind, path in (
            *(("checkout", c) for c in lane.checkouts.values()),
            ("worktrees", lane.root),
        )
        if path.startswith(under)
    ]
    what = f"the lane's {', '.join(inside)}" if inside else "what the lane keeps there"
    return PreflightCheck(
        name="home",
        ok=False,
        detail=f"The home {home} is mode {mode:o}: every user on this host can read {what}.",
        fix=f"chmod 700 {home}",
        advisory=True,
    )


def _owner_check(lane: Lane) -> PreflightCheck:
    """The state directory asking owns the lane (or none does yet: the first apply claims it)."""
    try:
        owner = read_owner(lane)
    except UnreadableOwner as exc:
        detail, _, fix = str(exc).partition("; ")
        return _fail("lane-owner", "", f"{detail[:1].upper()}{detail[1:]}.", fix)
    if owner is None:
        return _ok(
            "lane-owner", "", "No state directory owns the lane yet; the first apply claims it."
        )
    if owns(owner, lane.state):
        return _ok("lane-owner", "", f"This state directory ({owner.path}) owns the lane.")
    detail, fix = owned_elsewhere(lane.ref.name, owner)
    return _fail("lane-owner", "", f"{detail[:1].upper()}{detail[1:]}.", fix)


def _login_env_check() -> PreflightCheck:
    found = login_env()
    if found.error is not None:
        return _fail(
            "login-env",
            "",
            f"The login environment of {found.env['USER']} could not be captured: {found.error}.",
            "make the user's login profile run non-interactively (see docs/troubleshooting.md)",
        )
    return _ok(
        "login-env",
        "",
        f"{len(found.env)} variables from `{found.shell} -l`; PATH={found.env.get('PATH', '')}.",
    )


def _run_env(lane: Lane, agent: AgentRef) -> dict[str, str]:
    """The environment a run of ``agent`` gets in this lane (without its run markers)."""
    adapter = ADAPTERS[agent.kind]
    return agent_env(lane.ref.env, agent, strip=adapter.strip_env, defaults=adapter.env_defaults)


def _config_check(agent: AgentRef, env: dict[str, str]) -> PreflightCheck | None:
    """What the adapter knows the real CLI will refuse in this configuration."""
    subject = (agent.command or [agent.kind])[0]  # as the agent check names it: blocks its tasks
    problem = ADAPTERS[agent.kind].doctor(agent, env)
    if problem is None:
        if agent.kind == "command":
            return None  # any program: nothing is known about it
        return _ok("agent-config", subject, f"Nothing known to fail for the {agent.kind} agent.")
    return _fail("agent-config", subject, *problem)


def _auth_check(agent: AgentRef, env: dict[str, str]) -> PreflightCheck | None:
    login = ADAPTERS[agent.kind].login
    if login is None:
        return None
    names, files, fix = login.variables, login.files, login.fix
    subject = (agent.command or [agent.kind])[0]  # as the agent check names it: blocks its tasks
    found = [n for n in names if env.get(n)]
    if found:
        endpoint = next((f"; it talks to {env[v]} ({v})" for v in ENDPOINTS if env.get(v)), "")
        return _ok(
            "agent-auth", subject, f"{found[0]} is set for the {agent.kind} agent{endpoint}."
        )
    paths = [_login_path(f, env) for f in files]
    logins = [p for p in paths if os.path.isfile(p)]
    keyed = login.key_only
    if keyed is not None and env.get(keyed):
        return _fail(
            "agent-auth",
            subject,
            f"The {agent.kind} agent talks to {env[keyed]} ({keyed}), which takes an API key, "
            f"but none of {', '.join(names)} is set"
            + (f" ({logins[0]} is a login for the vendor's own service)." if logins else "."),
            fix,
        )
    if logins:
        return _ok("agent-auth", subject, f"{logins[0]} holds a {agent.kind} login.")
    return _fail(
        "agent-auth",
        subject,
        f"No credentials for the {agent.kind} agent: none of {', '.join(names)} is set in the "
        f"lane's environment and there is no {' or '.join(paths)}.",
        fix,
    )


# Where an agent's model API is, when not the provider's own (as the CLIs read them).
ENDPOINTS = (
    "ANTHROPIC_BASE_URL",
    "OPENAI_BASE_URL",
    "OPENAI_API_BASE",
    "GOOGLE_GEMINI_BASE_URL",
)

_DEFAULTED = re.compile(r"^\$\{(\w+):-([^}]*)\}(.*)$")


def _login_path(template: str, env: dict[str, str]) -> str:
    """Where an agent keeps its login, in the agent's environment: ``${CODEX_HOME:-~/.codex}``
    is ``$CODEX_HOME`` when that is set, else ``~/.codex``; ``~`` is the agent's ``HOME``."""
    m = _DEFAULTED.match(template)
    path = (env.get(m[1]) or m[2]) + m[3] if m else template
    if path.startswith("~/"):
        path = os.path.join(env.get("HOME") or os.path.expanduser("~"), path[2:])
    return path


def _agent_check(agent: AgentRef, env: dict[str, str]) -> PreflightCheck:
    command = agent.command or ([agent.kind] if agent.kind != "command" else [])
    if not command:
        return _fail(
            "agent",
            agent.kind,
            "An agent of kind command has no command to run.",
            "set the agent's command (an argv list)",
        )
    binary = command[0]
    path = env.get("PATH", "")
    if os.sep in binary:
        full = os.path.expanduser(binary)
        found = full if os.path.isfile(full) and os.access(full, os.X_OK) else None
    else:
        found = shutil.which(binary, path=path)
    if found is None:
        where = "is not an executable file" if os.sep in binary else f"is not on PATH ({path})"
        return _fail(
            "agent",
            binary,
            f"The agent binary {binary} {where}.",
            f"install {binary} for the lane user, or set PATH in the lane's or agent's env, "
            "or give an absolute command",
        )
    return _ok("agent", binary, f"{binary} resolves to {found}.")


def _forge_checks(lane: Lane, name: str) -> list[PreflightCheck]:
    """For a forge that can probe its access (GitHub): the token is there and private, the
    forge accepts it, sees the repository, lets it push and open PRs, and has rate limit left.
    Reads only; an unchanged repository costs no points. A forge without the probe: nothing."""
    try:
        forge = pulls_for(lane, name)
    except NodeError as exc:
        return [_fail("forge-token", name, str(exc), "make the lane's forge token readable")]
    probe = forge.capabilities.access if forge is not None else None
    if forge is None or probe is None:
        return []
    checks = [_ok("forge-token", name, "The lane's forge token is present.")]
    try:
        access = probe.access()
        forge.flush()
    except NodeError as exc:
        checks.append(_fail("forge-access", name, str(exc), "see the message"))
        return checks
    can_write, full_name = access.can_write, access.full_name
    remaining, limit = access.remaining, access.limit
    if not can_write:
        checks.append(
            _fail(
                "forge-access",
                name,
                f"The token can read {full_name} but may not push to it or open pull requests.",
                "give the token contents and pull requests read/write permission",
            )
        )
    else:
        checks.append(_ok("forge-access", name, f"The token may push to {full_name}."))
    if remaining <= 0:
        checks.append(
            _fail(
                "forge-rate-limit",
                name,
                f"The token's rate limit is used up (0 of {limit} left).",
                "wait for the reset, or give the lane its own token",
            )
        )
    else:
        checks.append(_ok("forge-rate-limit", name, f"{remaining} of {limit} requests left."))
    return checks
