"""`reconciler keys`: the SSH keys of SSH lanes."""

from __future__ import annotations

import argparse
import sys

from reconciler.cli.common import (
    EXIT_ERROR,
    EXIT_OK,
    plural,
)
from reconciler.engine import Engine, UserError
from reconciler.lanes.policy import violations
from reconciler.manifests.models import LaneSpec, SshTarget


def _ssh_lane(engine: Engine, name: str) -> LaneSpec:
    desired = engine.load()
    spec = desired.lanes.get(name)
    if spec is None:
        known = ", ".join(sorted(desired.lanes)) or "none"
        raise UserError(f"no lane named {name} in the manifests (lanes: {known})")
    if spec.ssh_target is None:
        raise UserError(
            f"lane {name} runs on this machine (host: local); keys are for lanes with "
            "host: ssh://USER@HOST[:PORT]"
        )
    return spec


def cmd_keys(engine: Engine, args: argparse.Namespace) -> int:
    """The two halves of trusting an ssh lane: the host trusts our key, we trust its key."""
    from reconciler.lanes import ssh

    spec = _ssh_lane(engine, args.lane)
    target = spec.ssh_target
    assert target is not None
    options = spec.ssh_options
    # The key, the known hosts file and the host are the manifest's words: only what the admin
    # policy allows is created, read or written (never root's own key, never /etc/passwd).
    refused = violations(engine.policy(), args.lane, spec)
    if refused:
        raise UserError(f"{refused[0].message}; {refused[0].hint}; nothing was read or written")
    try:
        if args.keys_command == "authorize":
            key = ssh.ensure_key(options.identity_file)
            made = "created now" if key.created else "existing"
            err_line = (
                f"The reconciler's key for lane {args.lane} is {key.path} ({made}; keep it "
                f"mode 0600). Append this line to ~{target.user}/.ssh/authorized_keys on "
                f"{target.host}:"
            )
            print(err_line, file=sys.stderr)
            print(ssh.authorized_keys_line(args.lane, spec, key.public))
            return EXIT_OK
        return _keys_scan(args, target, options.known_hosts, options.connect_timeout)
    except ssh.KeyProblem as exc:
        raise UserError(f"lane {args.lane}: {exc}") from None


def _keys_scan(
    args: argparse.Namespace, target: SshTarget, known_hosts: str, timeout: float
) -> int:
    from reconciler.lanes import ssh

    name = target.known_hosts_name
    scanned = ssh.scan_host(target, timeout)
    trusted = ssh.known_keys(known_hosts, target)
    print(f"Host keys of {name} (lane {args.lane}), as the host sent them:")
    for key in scanned:
        print(f"  {key.kind:<22} {key.fingerprint}")
    if set(trusted) == set(scanned):
        print(f"They are already the trusted keys of {name} in {known_hosts}; nothing changed.")
        return EXIT_OK
    if trusted and not args.replace:
        print(f"Already trusted for {name} in {known_hosts}:")
        for key in trusted:
            print(f"  {key.kind:<22} {key.fingerprint}")
        raise UserError(
            f"the host keys of {name} differ from the ones already trusted: the host was "
            "reinstalled, or something is in between. Verify the new fingerprints with the "
            "host's administrator, then run again with --replace"
        )
    print(
        "Compare these fingerprints with the host's own before you trust them (on the host: "
        "ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub); the reconciler will trust exactly "
        "these keys for this host, and verifying them is your job."
    )
    if not args.yes:
        if not sys.stdin.isatty():
            raise UserError(
                "keys scan needs --yes when not run from a terminal; compare the fingerprints "
                "above with the host's first"
            )
        answer = input(f"Trust these keys for {name}? Only 'yes' will be accepted: ")
        if answer.strip() != "yes":
            print("Nothing was trusted.")
            return EXIT_ERROR
    path = ssh.trust_host(known_hosts, target, scanned)
    print(f"Trusted {plural(len(scanned), 'key')} for {name} in {path}.")
    return EXIT_OK
