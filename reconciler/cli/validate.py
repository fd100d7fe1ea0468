"""The commands about the manifests and the policy: validate, policy, schema."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from reconciler import safefile
from reconciler.cli.common import (
    EXIT_OK,
    plural,
)
from reconciler.cli.render import (
    warn,
)
from reconciler.engine import Engine
from reconciler.lanes.policy import machine_facts
from reconciler.manifests.policy import lane_violations
from reconciler.manifests.schema import schema_documents
from reconciler.notify import schema_documents as notification_schemas
from reconciler.report import report_schemas


def cmd_validate(engine: Engine, args: argparse.Namespace) -> int:
    policy = engine.policy()
    facts = machine_facts()
    desired = engine.load(
        worktree=True, lane_check=lambda name, spec: lane_violations(policy, facts, name, spec)
    )
    counts = ", ".join(
        plural(n, what)
        for n, what in (
            (len(desired.tasks), "task"),
            (len(desired.lanes), "lane"),
            (len(desired.agents), "agent"),
        )
    )
    for warning in desired.warnings:
        warn(str(warning))
    print(f"{counts}: the manifests are valid, and {policy.origin} allows every lane.")
    return EXIT_OK


def cmd_policy(engine: Engine, args: argparse.Namespace) -> int:
    """What the policy in force allows, with every default spelt out."""
    policy = engine.policy()
    facts = machine_facts()
    spec = policy.spec
    own = spec.reconciler_user if spec.reconciler_user is not None else facts.euid != 0
    data = {
        "source": policy.source,
        "reconcilerUser": own,
        "users": spec.users,
        "sshHosts": spec.ssh_hosts,
        "sshKeys": spec.ssh_keys,
        "knownHosts": spec.known_hosts,
        "githubApiUrls": spec.github_api_urls,
        "notifyUrls": spec.notify_urls,
    }
    if args.json:
        print(json.dumps(data, indent=2))
        return EXIT_OK
    print(f"In force: {policy.origin}.")
    who = facts.user + (" (uid 0)" if facts.euid == 0 and facts.user != "root" else "")
    print(f"  lanes as the reconciler's own user ({who}): {'allowed' if own else 'refused'}")
    users = (
        ", ".join(spec.users)
        if spec.users is not None
        else f"regular users (uid {facts.uid_min} and up), never root"
    )
    print(f"  local lane users:       {users}")
    hosts = (
        ", ".join(spec.ssh_hosts) if spec.ssh_hosts is not None else "any host, any user but root"
    )
    print(f"  ssh hosts:              {hosts}")
    print(f"  ssh keys:               {', '.join(spec.ssh_keys)}")
    print(f"  ssh known hosts files:  {', '.join(spec.known_hosts)}")
    print(f"  GitHub API URLs:        {', '.join(spec.github_api_urls)}")
    print(f"  notification URLs:      {', '.join(spec.notify_urls or []) or 'any'}")
    return EXIT_OK


def cmd_schema(engine: Engine, args: argparse.Namespace) -> int:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    for name, text in {**schema_documents(), **report_schemas(), **notification_schemas()}.items():
        safefile.write_atomic(out / name, text.encode("utf-8"), 0o644)
        print(f"wrote {out / name}")
    return EXIT_OK
