"""The suite's guard and policy: every test's HOME is inside its temporary directory, and the
suite runs under a permissive admin policy.

The suite runs as root (in CI too) and most of its worlds use lanes without ``user:``, which the
safe default policy refuses for a root reconciler. Every test process and the CLI subprocesses
it starts (``RECONCILER_POLICY`` is inherited, or copied by the worlds' environments) use
``PERMISSIVE`` instead; the security suite sets the policy of each attack explicitly.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

PERMISSIVE = """\
apiVersion: reconciler/v1
kind: Policy
spec:
  reconcilerUser: true
  users: ["*"]
  sshHosts: ["*"]
  sshKeys: ["/*"]
  knownHosts: ["/*"]
  githubApiUrls: ["https://api.github.com", "https://ghe.example.com/api/v3"]
"""


def _permissive_policy() -> str:
    directory = tempfile.mkdtemp(prefix="reconciler-test-policy-")
    atexit.register(shutil.rmtree, directory, True)
    path = os.path.join(directory, "policy.yaml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(PERMISSIVE)
    os.chmod(path, 0o644)
    return path


if "RECONCILER_POLICY" not in os.environ:
    os.environ["RECONCILER_POLICY"] = _permissive_policy()
