"""``make demo``: build a sandbox under ``.demo/`` and reconcile the example manifests in it.

The sandbox has its own HOME (so ``~`` in the manifests points inside it), a bare "origin" and a
clone for each sample repository, a control repo holding ``manifests/``, and the scripted
demo-agent. The reconciler is driven exactly as a user would drive it: ``plan``, ``apply --yes``
until converged, ``status``, ``pr merge``, ``describe``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / ".demo"
HOME = DEMO / "home"
CONTROL = DEMO / "control"
STATE = DEMO / "state"
AGENT = Path(__file__).with_name("agent.py")
MANIFESTS = ROOT / "manifests"

SAMPLES: dict[str, dict[str, str]] = {
    "webapp": {
        "README.md": "# webapp\n\nA tiny sample application.\n",
        "calc.py": "def add(a, b):\n    return a - b\n",
        "test_calc.py": (
            "import unittest\n\nfrom calc import add\n\n\n"
            "class AddTest(unittest.TestCase):\n"
            "    def test_add(self):\n"
            "        self.assertEqual(add(2, 3), 5)\n\n\n"
            'if __name__ == "__main__":\n    unittest.main()\n'
        ),
        ".gitignore": "__pycache__/\n",
    },
    "handbook": {
        "README.md": "# Handbook\n\nHow we work.\n",
    },
}

GIT_ID = ["-c", "user.name=demo", "-c", "user.email=demo@example.invalid"]


def banner(text: str) -> None:
    line = "─" * max(20, len(text) + 4)
    print(f"\n\033[1m{line}\n  {text}\n{line}\033[0m" if sys.stdout.isatty() else f"\n== {text} ==")


def git(*args: str, cwd: Path | None = None) -> None:
    subprocess.run(["git", *GIT_ID, *args], cwd=cwd, check=True, capture_output=True, env=ENV)


def setup() -> None:
    shutil.rmtree(DEMO, ignore_errors=True)
    (HOME / "src").mkdir(parents=True)
    (DEMO / "remotes").mkdir()
    for name, files in SAMPLES.items():
        seed = DEMO / "seed" / name
        seed.mkdir(parents=True)
        for path, text in files.items():
            (seed / path).write_text(text, encoding="utf-8")
        git("init", "-q", "-b", "main", cwd=seed)
        git("add", "-A", cwd=seed)
        git("commit", "-q", "-m", "Initial commit", cwd=seed)
        bare = DEMO / "remotes" / f"{name}.git"
        git("clone", "-q", "--bare", str(seed), str(bare))
        git("clone", "-q", str(bare), str(HOME / "src" / name))
        # the lane user's identity, as its ~/.gitconfig would give it (doctor checks it)
        git("config", "user.name", "demo", cwd=HOME / "src" / name)
        git("config", "user.email", "demo@example.invalid", cwd=HOME / "src" / name)
    shutil.rmtree(DEMO / "seed")
    bin_dir = HOME / ".local" / "bin"
    bin_dir.mkdir(parents=True)
    shutil.copy(AGENT, bin_dir / "demo-agent")
    (bin_dir / "demo-agent").chmod(0o755)
    # What `claude` leaves after a login, so pre-flight's agent-auth check passes; the demo
    # agent needs no credentials.
    login = HOME / ".claude" / ".credentials.json"
    login.parent.mkdir(mode=0o700)
    login.write_text('{"demo": "stand-in for a claude login"}\n')
    login.chmod(0o600)
    POLICY.write_text(POLICY_TEXT, encoding="utf-8")
    POLICY.chmod(0o644)
    CONTROL.mkdir()
    shutil.copytree(MANIFESTS, CONTROL / "manifests")
    git("init", "-q", "-b", "main", cwd=CONTROL)
    git("add", "-A", cwd=CONTROL)
    git("commit", "-q", "-m", "Desired tasks", cwd=CONTROL)


POLICY = DEMO / "policy.yaml"
# The sandbox's lanes name no user: they run as whoever runs the demo. For root, the safe default
# policy refuses that (a lane's agents would run as root), so the sandbox carries its own policy
# allowing it, as an admin would write one; on a real host, give each lane its own user.
POLICY_TEXT = """\
apiVersion: reconciler/v1
kind: Policy
spec:
  reconcilerUser: true   # the demo's lanes run as the user running `make demo`
"""

ENV = {
    **{k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "TERM", "NO_COLOR")},
    "HOME": str(HOME),
    "RECONCILER_CONTROL": str(CONTROL),
    "RECONCILER_STATE": str(STATE),
    "RECONCILER_POLICY": str(POLICY),
    "GIT_CONFIG_NOSYSTEM": "1",
}


def reconciler(*args: str, show: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "reconciler", *args]
    if show:
        print(f"\n$ reconciler {' '.join(args)}", flush=True)
    proc = subprocess.run(cmd, env=ENV, text=True, capture_output=True, cwd=DEMO, check=False)
    if show:
        sys.stdout.write(proc.stdout)
        sys.stdout.write(proc.stderr)
        sys.stdout.flush()
    return proc


def converge(deadline: float) -> None:
    """``apply --yes`` until a pass plans nothing and no task is still in motion."""
    import json

    moving = {"pending", "queued", "running", "backoff", "closing"}
    while time.time() < deadline:
        applied = reconciler("apply", "--yes", show=False)
        if "No changes." not in applied.stdout:
            print(
                f"\n$ reconciler apply --yes\n{applied.stdout}{applied.stderr}", end="", flush=True
            )
        status = json.loads(reconciler("status", "--json", show=False).stdout)
        phases = {t["phase"] for t in status["tasks"]}
        if "No changes." in applied.stdout and not phases & moving:
            return
        time.sleep(0.5)
    raise SystemExit("the demo did not converge in time; see `reconciler status` in .demo/")


def main() -> int:
    started = time.time()
    banner("Setting up the sandbox in .demo/")
    setup()
    print(f"control repo: {CONTROL}\nlane checkouts: {HOME / 'src'}\nstate: {STATE}")
    banner("What the control repo asks for")
    reconciler("validate")
    reconciler("plan")
    banner("Converging (apply --yes until nothing is left to do)")
    converge(started + 110)
    banner("Every successful task has exactly one PR in the local forge")
    reconciler("status")
    banner("An operator merges a PR: that task is done and its dependent starts")
    reconciler("pr", "merge", "write-style-guide")
    converge(started + 110)
    reconciler("status")
    banner("The task that needed feedback: two iterations, one PR")
    reconciler("describe", "fix-add")
    banner("The task whose agent died on its first attempt")
    reconciler("describe", "write-style-guide")
    print(f"\nDemo finished in {time.time() - started:.0f} s. Explore the sandbox yourself:")
    print(f"  env HOME={HOME} RECONCILER_CONTROL={CONTROL} RECONCILER_STATE={STATE} \\")
    print(f"    RECONCILER_POLICY={POLICY} \\")
    print("    .venv/bin/reconciler status")
    print("The same with `serve --listen 127.0.0.1:8080` instead of `status` serves the")
    print("dashboard at http://127.0.0.1:8080/ (docs/dashboard.md).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
