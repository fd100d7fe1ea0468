"""The local-user transport: a lane whose Linux user is not the reconciler's, on this machine.

The lane's node runs as the lane user through ``setpriv`` with a reset environment (HOME, USER,
LOGNAME, SHELL and PATH from the password database, nothing of the reconciler's own
environment) and the user's supplementary groups, as a session (``process``): one node process
serves the lane's batches one after the other, started on the first and ended when the lanes are
closed, the reconciler exits or the session idles.
A bare ``runuser -u`` is not used: it keeps root's environment. Only root can switch users; a
reconciler running as anyone else reports the lane unavailable with the fix.
"""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
import sys

from pydantic import ValidationError

from reconciler.lanes import LaneUnavailable, process
from reconciler.protocol import Batch, BatchResult

SETPRIV = "setpriv"
PYTHON = sys.executable  # the lane user must be able to run it: install where every user can read
BATCH_TIMEOUT = 900.0  # a batch may create worktrees of a large repository


class LocalUserTransport:
    def __init__(self, lane: str, user: str) -> None:
        self.lane = lane
        self.user = user

    def argv(self) -> list[str]:
        try:
            pw = pwd.getpwnam(self.user)
        except KeyError:
            raise LaneUnavailable(
                f"lane {self.lane}: user {self.user} does not exist on this machine; create it "
                f"(useradd -m {self.user}) or fix the lane's spec.user",
                check="user",
            ) from None
        if os.geteuid() != 0:
            me = pwd.getpwuid(os.geteuid()).pw_name
            raise LaneUnavailable(
                f"lane {self.lane} runs as user {self.user}, but the reconciler runs as {me} and "
                "only root can switch to a lane's user; run the reconciler as root (it drops to "
                f"each lane's user for everything that touches the lane), or set spec.user: {me}",
                check="user",
            )
        blocked = _unreachable(pw)
        if blocked is not None:
            raise LaneUnavailable(
                f"lane {self.lane}: user {self.user} cannot reach {blocked}, which the "
                f"reconciler needs to run as that user; install the reconciler where every "
                "lane user can read it (e.g. python3 -m venv /opt/reconciler), not under a "
                "private home such as /root",
                check="install",
            )
        return [
            SETPRIV,
            f"--reuid={pw.pw_uid}",
            f"--regid={pw.pw_gid}",
            "--init-groups",
            "--reset-env",
            "--",
            PYTHON,
            "-m",
            "reconciler",
            "node",
        ]

    def exchange(self, batch: Batch) -> BatchResult:
        argv = self.argv()
        try:
            answer = process.SESSIONS.exchange(
                argv, batch.model_dump_json().encode(), timeout=BATCH_TIMEOUT
            )
        except process.BadAnswer as exc:
            raise LaneUnavailable(
                f"lane {self.lane}: the node as {self.user} answered {exc}; it was stopped and "
                "nothing of its answer was used"
            ) from None
        except FileNotFoundError:
            raise LaneUnavailable(
                f"lane {self.lane}: {SETPRIV} is not installed; install util-linux"
            ) from None
        except subprocess.TimeoutExpired:
            raise LaneUnavailable(
                f"lane {self.lane}: the node as {self.user} did not answer in {BATCH_TIMEOUT:.0f} s"
            ) from None
        except process.BatchRefused as exc:
            raise LaneUnavailable(
                f"lane {self.lane}: the node as {self.user} said: {exc}"
            ) from None
        except process.SessionLost as lost:
            said = lost.stderr.decode("utf-8", "replace").strip().splitlines()
            raise LaneUnavailable(
                f"lane {self.lane}: `reconciler node` as {self.user} exited {lost.returncode}"
                + (f": {said[-1][:500]}" if said else "")
                + (
                    "; the lane user must be able to read the reconciler's installation "
                    f"({sys.prefix})"
                    if lost.returncode in (1, 126, 127)
                    else ""
                )
            ) from None
        try:
            return BatchResult.model_validate_json(answer)
        except ValidationError as exc:
            raise LaneUnavailable(
                f"lane {self.lane}: the node as {self.user} answered something that is not a "
                f"batch result ({exc.error_count()} problems)"
            ) from None

    def close(self) -> None:
        """End this lane's idle node sessions."""
        try:
            argv = self.argv()
        except LaneUnavailable:
            return
        process.SESSIONS.close(argv)


def _unreachable(pw: pwd.struct_passwd) -> str | None:
    """The first path of the interpreter, its standard library or this package that the user
    cannot reach (judged from permission bits, as the kernel would), or None."""
    groups = set(os.getgrouplist(pw.pw_name, pw.pw_gid))
    paths = [os.path.realpath(PYTHON)]
    if sys.executable == PYTHON:  # what this interpreter loads, the lane user's will load too
        paths += [os.path.dirname(os.__file__), os.path.dirname(os.path.dirname(__file__))]
    for path in paths:
        parts = path.split(os.sep)
        for depth in range(2, len(parts) + 1):
            here = os.sep.join(parts[:depth])
            try:
                st = os.stat(here)
            except OSError:
                return here
            if stat.S_ISDIR(st.st_mode) or here == path:
                need = stat.S_IXOTH if stat.S_ISDIR(st.st_mode) else stat.S_IROTH | stat.S_IXOTH
                if st.st_uid == pw.pw_uid:
                    need <<= 6
                elif st.st_gid in groups:
                    need <<= 3
                if st.st_mode & need != need:
                    return here
    return None
