"""The admin policy: what manifests may name — users, SSH hosts, keys, known hosts, API URLs.

A manifest author can run code as any lane user the admin allows (design §9); this is where the
admin says which. The policy lives outside the control repo, in a root-owned file on the
reconciler's host (``/etc/reconciler/policy.yaml``, in the spirit of Argo CD's AppProject), and
without one the defaults are the safe ones:

- a lane never runs as root, and runs as the reconciler's own user (``user:`` omitted) only when
  the reconciler is not root;
- a local lane runs as a regular user (uid from ``UID_MIN`` of ``/etc/login.defs`` up, not
  ``nobody``), never as a system account;
- an SSH lane logs in with a key and trusts host keys only from the reconciler's own key
  directory (``~/.config/reconciler/ssh/``), never as root;
- GitHub tokens go only to ``https://api.github.com``.

Pure: the facts about this machine (who the reconciler is, which uid a user has, where its home
is, how paths resolve) arrive as a ``Facts`` value; loading the file is
``reconciler.lanes.policy``. A wildcard never admits root: only a literal ``root`` does.
"""

from __future__ import annotations

import fnmatch
import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from reconciler.manifests.models import LaneSpec, Metadata, Spec, _Document

DEFAULT_PATH = "/etc/reconciler/policy.yaml"
KEY_DIR = "~/.config/reconciler/ssh"
GITHUB_API = "https://api.github.com"
NOBODY = 65534

Pattern = Annotated[str, StringConstraints(min_length=1, pattern=r"^[^\s]+$")]
PathPattern = Annotated[str, StringConstraints(pattern=r"^(~|~/.*|/.*)$")]
ApiUrl = Annotated[str, StringConstraints(pattern=r"^https?://[^\s@]+$")]


class PolicySpec(Spec):
    reconciler_user: bool | None = Field(
        None,
        description="may a lane run as the reconciler's own user (spec.user omitted or equal "
        "to it)? Default: only when the reconciler does not run as root",
    )
    users: list[Pattern] | None = Field(
        None,
        description="Linux users a local lane may run as (shell wildcards, e.g. agent-*); a "
        "wildcard never matches root. Default: regular users (uid >= UID_MIN), never root",
    )
    ssh_hosts: list[Pattern] | None = Field(
        None,
        description="where SSH lanes may log in: [USER@]HOST[:PORT] with shell wildcards "
        "(e.g. agent-*@build-*.example.com:22); a wildcard user never matches root. "
        "Default: any host, any user but root",
    )
    ssh_keys: list[PathPattern] = Field(
        default_factory=lambda: [f"{KEY_DIR}/*"],
        description="private keys an SSH lane may name in ssh.identityFile (paths with shell "
        "wildcards on the reconciler's host; ~ is the reconciler's home)",
    )
    known_hosts: list[PathPattern] = Field(
        default_factory=lambda: [f"{KEY_DIR}/*"],
        description="known hosts files an SSH lane may name in ssh.knownHosts; the only files "
        "`reconciler keys scan` writes",
    )
    github_api_urls: list[ApiUrl] = Field(
        default_factory=lambda: [GITHUB_API],
        description="GitHub REST API roots a lane's token may be sent to (exact URLs)",
    )
    notify_urls: list[Pattern] | None = Field(
        None,
        description="URLs the Config's webhook and slack notification sinks may post to "
        "(shell wildcards, e.g. https://hooks.slack.com/services/*). Default: any URL",
    )


class PolicyDoc(_Document):
    kind: Literal["Policy"]
    metadata: Metadata = Field(default_factory=lambda: Metadata(name="policy"))
    spec: PolicySpec = Field(default_factory=PolicySpec)


POLICY_KINDS: dict[str, type[_Document]] = {"Policy": PolicyDoc}


@dataclass(frozen=True)
class Policy:
    """The policy in force and where it came from (``source`` is None for the defaults)."""

    spec: PolicySpec = field(default_factory=PolicySpec)
    source: str | None = None

    @property
    def origin(self) -> str:
        return f"the policy {self.source}" if self.source else "the default policy (no policy file)"


@dataclass(frozen=True)
class Facts:
    """What the policy needs to know about this machine."""

    euid: int
    user: str  # the reconciler's own user name
    home: str  # the reconciler's home (``~`` in control-side paths)
    uid_min: int = 1000
    uid_of: Callable[[str], int | None] = lambda _name: None  # None: no such user
    realpath: Callable[[str], str] = posixpath.normpath


@dataclass(frozen=True)
class Violation:
    """One thing a lane names that the policy does not allow: where, what, how to fix it."""

    loc: tuple[str | int, ...]  # the field in the Lane document
    message: str
    hint: str


def lane_violations(policy: Policy, facts: Facts, name: str, spec: LaneSpec) -> list[Violation]:
    """Everything lane ``name`` names that ``policy`` does not allow (empty: allowed)."""
    found: list[Violation] = []
    p = policy.spec
    origin = policy.origin
    target = spec.ssh_target
    if target is None:
        found += _local_user(policy, facts, name, spec)
    else:
        address = f"{target.user}@{target.host}:{target.port}"
        if not _admits(p.ssh_hosts, address, target.user, default_any=True):
            allowed = ", ".join(p.ssh_hosts or []) or "any user but root"
            found.append(
                Violation(
                    ("spec", "host"),
                    f"lane {name} logs in as {target.user}@{target.host} (port {target.port}), "
                    f"which {origin} does not allow (sshHosts: {allowed})",
                    "use a host and user the admin allows, or ask the admin to add it to "
                    "sshHosts in the policy",
                )
            )
        options = spec.ssh_options
        for key, value, patterns, what in (
            ("identityFile", options.identity_file, p.ssh_keys, "sshKeys"),
            ("knownHosts", options.known_hosts, p.known_hosts, "knownHosts"),
        ):
            if not path_allowed(facts, value, patterns):
                found.append(
                    Violation(
                        ("spec", "ssh", key),
                        f"lane {name} names the file {value} as ssh.{key}, which {origin} "
                        f"does not allow ({what}: {', '.join(patterns)})",
                        f"use a file the admin allows (the default is {KEY_DIR}/ on the "
                        f"reconciler's host), or ask the admin to add it to {what}",
                    )
                )
    for index, repo in enumerate(spec.repos):
        if repo.forge is None or repo.forge.kind != "github":
            continue
        url = (repo.forge.api_url or GITHUB_API).rstrip("/")
        if url not in {u.rstrip("/") for u in p.github_api_urls}:
            found.append(
                Violation(
                    ("spec", "repos", index, "forge", "apiUrl"),
                    f"lane {name} would send its GitHub token to {url}, which {origin} does "
                    f"not allow (githubApiUrls: {', '.join(p.github_api_urls)})",
                    "use an API root the admin allows, or ask the admin to add it to githubApiUrls",
                )
            )
    return found


def _local_user(policy: Policy, facts: Facts, name: str, spec: LaneSpec) -> list[Violation]:
    p = policy.spec
    origin = policy.origin
    user = spec.user or facts.user
    if user == facts.user:
        allowed = p.reconciler_user if p.reconciler_user is not None else facts.euid != 0
        if allowed:
            return []
        how = "names no user" if spec.user is None else f"names user {user}"
        return [
            Violation(
                ("spec", "user") if spec.user is not None else ("spec",),
                f"lane {name} {how}, so its agents would run as the reconciler's own user "
                f"{facts.user}" + (" (root)" if facts.euid == 0 else "") + f", which {origin} "
                "does not allow",
                "name the lane's own Linux user (spec.user: agent-NAME, created with useradd), "
                "or let the admin allow it (reconcilerUser: true in the policy)",
            )
        ]
    uid = facts.uid_of(user)
    if uid is None:
        return []  # the transport says the user does not exist, with the fix
    if p.users is not None:
        ok = _admits(p.users, user, user, default_any=False, root=uid == 0)
        rule = f"users: {', '.join(p.users)}"
    else:
        ok = uid != 0 and uid >= facts.uid_min and uid != NOBODY
        rule = f"regular users only, uid {facts.uid_min} and up, never root"
    if ok:
        return []
    return [
        Violation(
            ("spec", "user"),
            f"lane {name} runs as user {user} (uid {uid}), which {origin} does not allow ({rule})",
            "give the lane a dedicated user (useradd -m agent-NAME), or ask the admin to "
            "allow this one in the policy's users",
        )
    ]


def _admits(
    patterns: list[str] | None,
    subject: str,
    user: str,
    *,
    default_any: bool,
    root: bool = False,
) -> bool:
    """Does a pattern admit ``subject``? A wildcard never admits root (``user`` root, or
    ``root`` set for a uid-0 alias): only a pattern naming it literally does."""
    is_root = root or user == "root"
    if patterns is None:
        return default_any and not is_root
    for pattern in patterns:
        if not fnmatch.fnmatchcase(subject, _with_port(pattern, subject)):
            continue
        if is_root and not _literal_user(pattern, user):
            continue
        return True
    return False


def _with_port(pattern: str, subject: str) -> str:
    """``[USER@]HOST[:PORT]`` patterns: a missing user or port matches any (subjects of SSH
    hosts are ``USER@HOST:PORT``; user names have neither)."""
    if "@" not in subject:
        return pattern
    if "@" not in pattern:
        pattern = "*@" + pattern
    if ":" not in pattern.split("@", 1)[1]:
        pattern += ":*"
    return pattern


def _literal_user(pattern: str, user: str) -> bool:
    head = pattern.split("@", 1)[0] if "@" in pattern else pattern
    return head == user


def expand(facts: Facts, path: str) -> str:
    """A control-side path: ``~`` is the reconciler's home."""
    if path == "~" or path.startswith("~/"):
        path = facts.home + path[1:]
    return posixpath.normpath(path)


_GLOB = frozenset("*?[")


def path_allowed(facts: Facts, path: str, patterns: list[str]) -> bool:
    """Does ``path`` match a pattern both as written and with every symlink resolved? An entry
    of the key directory that is a symlink to root's own key matches as written, not resolved,
    so it is refused."""
    written = expand(facts, path)
    resolved = facts.realpath(written)
    wanted = [expand(facts, p) for p in patterns]
    return any(fnmatch.fnmatchcase(written, w) for w in wanted) and any(
        fnmatch.fnmatchcase(resolved, _resolved_pattern(facts, w)) for w in wanted
    )


def _resolved_pattern(facts: Facts, pattern: str) -> str:
    """The pattern with its literal leading directories resolved (a home under a symlinked
    /home still matches)."""
    parts = pattern.split("/")
    first = next((i for i, part in enumerate(parts) if _GLOB & set(part)), len(parts))
    prefix = "/".join(parts[:first]) or "/"
    rest = parts[first:]
    return posixpath.join(facts.realpath(prefix), *rest) if rest else facts.realpath(prefix)
