"""Process identity: fingerprints survive pid reuse checks, zombies are dead, groups die."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from reconciler.node import procs
from reconciler.protocol import Fingerprint
from tests.support.waiting import wait_for


def test_fingerprint_of_a_live_process_is_alive() -> None:
    fp = procs.fingerprint(os.getpid())
    assert fp is not None
    assert fp.boot_id == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert procs.is_alive(fp)


def test_mismatched_start_time_or_boot_id_is_not_alive() -> None:
    fp = procs.fingerprint(os.getpid())
    assert fp is not None
    assert not procs.is_alive(fp.model_copy(update={"start_time": fp.start_time + 1}))
    assert not procs.is_alive(fp.model_copy(update={"boot_id": "another-boot"}))


def test_missing_process_has_no_fingerprint() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert procs.fingerprint(proc.pid) is None
    gone = Fingerprint(boot_id=procs.boot_id(), pid=proc.pid, start_time=1)
    assert not procs.is_alive(gone)


def test_start_time_parses_names_with_parentheses_and_spaces() -> None:
    # The comm field is what the process calls itself; a hostile name must not shift fields.
    code = (
        "import ctypes, sys, time\n"
        "ctypes.CDLL(None).prctl(15, b'a) b (c', 0, 0, 0)\n"
        "print('named', flush=True)\n"
        "time.sleep(30)\n"
    )
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline() == b"named\n"
            assert ") b (c" in Path(f"/proc/{proc.pid}/stat").read_text()
            fp = procs.fingerprint(proc.pid)
            assert fp is not None
            assert procs.is_alive(fp)
            me = procs.fingerprint(os.getpid())
            assert me is not None
            assert fp.start_time >= me.start_time
        finally:
            proc.kill()


def test_zombie_is_not_alive() -> None:
    with subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    ) as proc:
        fp = procs.fingerprint(proc.pid)
        assert fp is not None
        assert procs.is_alive(fp)
        assert proc.stdin is not None
        proc.stdin.close()
        # Not reaped yet: the process is a zombie until wait(), and must already count as dead.
        wait_for(lambda: not procs.is_alive(fp), "the child to become a zombie")
        assert procs.start_time(proc.pid) == fp.start_time


def test_kill_group_terminates_every_member() -> None:
    code = (
        "import subprocess, sys, time\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "time.sleep(60)\n"
    )
    leader = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    wait_for(lambda: len(procs.group_members(leader.pid)) == 2, "two members")
    assert procs.kill_group(leader.pid, grace=2.0)
    leader.wait()
    wait_for(lambda: not procs.group_members(leader.pid), "the group to be empty")
    assert not procs.kill_group(leader.pid, grace=0.1)
