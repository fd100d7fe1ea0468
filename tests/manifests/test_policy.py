"""The admin policy as a pure function: (policy, facts of the machine, lane) → what is refused.

Tables, no I/O: the facts (who the reconciler is, which uid a user has, how paths resolve) are
given, so every rule is shown on both sides of its line. Reading the file is tested in
``tests/security/test_trusted_files.py``; the attacks in ``tests/security/test_manifest_author.py``.
"""

from __future__ import annotations

from typing import Any

import pytest

from reconciler.manifests.errors import ManifestErrors
from reconciler.manifests.loader import parse_policy
from reconciler.manifests.models import LaneSpec
from reconciler.manifests.policy import Facts, Policy, PolicySpec, lane_violations

UIDS = {"root": 0, "toor": 0, "daemon": 1, "nobody": 65534, "agent-web": 1001, "alice": 1002}
LINKS = {"/home/r/.config/reconciler/ssh/evil": "/root/.ssh/id_ed25519"}


def facts(euid: int = 0, user: str = "root") -> Facts:
    return Facts(
        euid=euid,
        user=user,
        home="/home/r",
        uid_min=1000,
        uid_of=UIDS.get,
        realpath=lambda p: LINKS.get(p, p),
    )


def lane(**spec: Any) -> LaneSpec:
    return LaneSpec.model_validate({"repos": [{"name": "app", "checkout": "~/src/app"}], **spec})


def refused(policy: Policy, spec: LaneSpec, who: Facts | None = None) -> list[str]:
    return [".".join(map(str, v.loc)) for v in lane_violations(policy, who or facts(), "web", spec)]


DEFAULT = Policy()


def custom(**spec: Any) -> Policy:
    return Policy(PolicySpec.model_validate(spec), "/etc/reconciler/policy.yaml")


@pytest.mark.parametrize(
    ("policy", "spec", "who", "fields"),
    [
        # the reconciler's own user: refused for root, allowed for anyone else, unless said
        (DEFAULT, lane(), facts(), ["spec"]),
        (DEFAULT, lane(user="root"), facts(), ["spec.user"]),
        (DEFAULT, lane(), facts(1000, "dev"), []),
        (custom(reconcilerUser=True), lane(), facts(), []),
        (custom(reconcilerUser=False), lane(), facts(1000, "dev"), ["spec"]),
        # other local users: regular ones by default, never root or system accounts
        (DEFAULT, lane(user="agent-web"), facts(), []),
        (DEFAULT, lane(user="toor"), facts(), ["spec.user"]),
        (DEFAULT, lane(user="daemon"), facts(), ["spec.user"]),
        (DEFAULT, lane(user="nobody"), facts(), ["spec.user"]),
        (DEFAULT, lane(user="ghost"), facts(), []),  # the transport says it does not exist
        (custom(users=["agent-*"]), lane(user="agent-web"), facts(), []),
        (custom(users=["agent-*"]), lane(user="alice"), facts(), ["spec.user"]),
        (custom(users=["*"]), lane(user="toor"), facts(), ["spec.user"]),  # no wildcard root
        (custom(users=["toor"]), lane(user="toor"), facts(), []),  # a literal one is the admin's
        (custom(users=["*"]), lane(user="daemon"), facts(), []),  # the admin's wildcard
    ],
)
def test_who_a_local_lane_may_run_as(
    policy: Policy, spec: LaneSpec, who: Facts, fields: list[str]
) -> None:
    assert refused(policy, spec, who) == fields


def ssh(host: str = "ssh://agent@build-2:2222", **options: Any) -> LaneSpec:
    return lane(host=host, ssh=options or None)


@pytest.mark.parametrize(
    ("policy", "spec", "fields"),
    [
        (DEFAULT, ssh(), []),
        (DEFAULT, ssh("ssh://root@build-2"), ["spec.host"]),
        (custom(sshHosts=["build-*"]), ssh(), []),
        (custom(sshHosts=["build-*:22"]), ssh(), ["spec.host"]),
        (custom(sshHosts=["build-*:2222"]), ssh(), []),
        (custom(sshHosts=["agent@build-2"]), ssh(), []),
        (custom(sshHosts=["deploy@build-2"]), ssh(), ["spec.host"]),
        (custom(sshHosts=["*"]), ssh("ssh://root@build-2"), ["spec.host"]),
        (custom(sshHosts=["root@build-2"]), ssh("ssh://root@build-2"), []),
        (custom(sshHosts=["other"]), ssh(), ["spec.host"]),
        # keys and known hosts: the reconciler's key directory, as written and as resolved
        (DEFAULT, ssh(identityFile="/root/.ssh/id_ed25519"), ["spec.ssh.identityFile"]),
        (DEFAULT, ssh(identityFile="~/.config/reconciler/ssh/lane-key"), []),
        (DEFAULT, ssh(identityFile="~/.config/reconciler/ssh/evil"), ["spec.ssh.identityFile"]),
        (
            DEFAULT,
            ssh(identityFile="~/.config/reconciler/ssh/../../../.ssh/id"),
            ["spec.ssh.identityFile"],
        ),
        (DEFAULT, ssh(knownHosts="/etc/passwd"), ["spec.ssh.knownHosts"]),
        (
            custom(knownHosts=["/etc/reconciler/ssh/*"]),
            ssh(knownHosts="/etc/passwd"),
            ["spec.ssh.knownHosts"],
        ),
        (
            custom(sshKeys=["/etc/reconciler/ssh/*"], knownHosts=["/etc/reconciler/ssh/*"]),
            ssh(
                identityFile="/etc/reconciler/ssh/id_ed25519",
                knownHosts="/etc/reconciler/ssh/known_hosts",
            ),
            [],
        ),
    ],
)
def test_where_an_ssh_lane_may_log_in_and_with_which_files(
    policy: Policy, spec: LaneSpec, fields: list[str]
) -> None:
    assert refused(policy, spec) == fields


def github(url: str | None) -> LaneSpec:
    forge: dict[str, Any] = {"kind": "github", "repo": "acme/app"}
    if url:
        forge["apiUrl"] = url
    return lane(user="agent-web", repos=[{"name": "app", "checkout": "~/src/app", "forge": forge}])


@pytest.mark.parametrize(
    ("policy", "url", "fields"),
    [
        (DEFAULT, None, []),
        (DEFAULT, "https://api.github.com/", []),
        (DEFAULT, "https://evil.example.com/api/v3", ["spec.repos.0.forge.apiUrl"]),
        (custom(githubApiUrls=["https://ghe.acme.com/api/v3"]), "https://ghe.acme.com/api/v3", []),
        (
            custom(githubApiUrls=["https://ghe.acme.com/api/v3"]),
            None,
            ["spec.repos.0.forge.apiUrl"],
        ),
    ],
)
def test_where_a_lane_may_send_its_github_token(
    policy: Policy, url: str | None, fields: list[str]
) -> None:
    assert refused(policy, github(url)) == fields


def test_a_refusal_says_what_who_and_how_to_fix_it() -> None:
    (violation,) = lane_violations(DEFAULT, facts(), "web", lane())
    assert "lane web" in violation.message and "root" in violation.message
    assert "the default policy (no policy file)" in violation.message
    assert "spec.user" in violation.hint and "reconcilerUser: true" in violation.hint


def test_a_policy_file_is_checked_like_a_manifest() -> None:
    text = b"apiVersion: reconciler/v1\nkind: Policy\nspec:\n  users: agent-*\n  sshHostz: []\n"
    with pytest.raises(ManifestErrors) as info:
        parse_policy("/etc/reconciler/policy.yaml", text)
    rendered = str(info.value)
    assert "/etc/reconciler/policy.yaml:4:" in rendered  # users must be a list
    assert "/etc/reconciler/policy.yaml:5:" in rendered and "sshHosts" in rendered  # did you mean
    spec = parse_policy("p.yaml", b"apiVersion: reconciler/v1\nkind: Policy\n")
    assert spec == PolicySpec()
    with pytest.raises(ManifestErrors, match="exactly one Policy"):
        parse_policy("p.yaml", b"apiVersion: reconciler/v1\nkind: Policy\n---\n" * 2)
    with pytest.raises(ManifestErrors, match="unknown kind 'Lane'"):
        parse_policy("p.yaml", b"apiVersion: reconciler/v1\nkind: Lane\n")
