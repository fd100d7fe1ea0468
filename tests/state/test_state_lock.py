"""StateLock: real contention between two processes, holder records, timeouts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from reconciler.state import LockHeld, LockHolder, StateLock, argv_summary, read_holder

ROOT = Path(__file__).resolve().parents[2]

# Takes the lock, says so, then holds it for argv[2] seconds (or until stdin closes if < 0).
HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from reconciler.state import StateLock
    lock = StateLock(Path(sys.argv[1]), argv=["reconciler", "run"]).acquire()
    print("locked", flush=True)
    hold = float(sys.argv[2])
    if hold < 0:
        sys.stdin.read()
    else:
        time.sleep(hold)
    """
)

Spawn = Callable[[Path, float], subprocess.Popen[str]]


@pytest.fixture
def spawn_holder() -> Iterator[Spawn]:
    procs: list[subprocess.Popen[str]] = []

    def spawn(state_dir: Path, hold: float) -> subprocess.Popen[str]:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(state_dir), str(hold)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        procs.append(proc)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "locked"
        return proc

    yield spawn
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def test_second_process_gets_lock_held_naming_the_holder(
    tmp_path: Path, spawn_holder: Spawn
) -> None:
    holder = spawn_holder(tmp_path, -1)
    lock = StateLock(tmp_path)
    with pytest.raises(LockHeld) as info:
        lock.acquire()
    exc = info.value
    message = str(exc)
    assert message.startswith(f'another reconciler (pid {holder.pid}, "reconciler run", since ')
    assert " UTC) holds the state lock " in message
    assert str(tmp_path / "lock") in message
    assert message.endswith("wait for it, stop it, or pass --lock-timeout 60s")
    assert exc.exit_code == 75
    assert LockHeld.exit_code == 75
    assert exc.holder is not None
    assert exc.holder.pid == holder.pid
    assert exc.waited is None
    assert not lock.held
    # the context manager fails the same way, and timeout 0 means "do not wait"
    with pytest.raises(LockHeld), StateLock(tmp_path):
        pass
    with pytest.raises(LockHeld):
        StateLock(tmp_path).acquire(timeout=0)


def test_timeout_waits_then_succeeds_after_the_holder_exits(
    tmp_path: Path, spawn_holder: Spawn
) -> None:
    holder = spawn_holder(tmp_path, 0.4)
    start = time.monotonic()
    with StateLock(tmp_path, argv=["reconciler", "apply"]).acquire(timeout=20) as lock:
        assert lock.held
        assert holder.wait(timeout=10) == 0
        assert time.monotonic() - start >= 0.1
        record = read_holder(tmp_path / "lock")
        assert record is not None
        assert (record.pid, record.argv) == (os.getpid(), "reconciler apply")
        assert abs(record.started_at - time.time()) < 60
    assert not lock.held
    assert read_holder(tmp_path / "lock") is None  # release clears the record


def test_timeout_expiring_raises(tmp_path: Path, spawn_holder: Spawn) -> None:
    holder = spawn_holder(tmp_path, -1)
    start = time.monotonic()
    with pytest.raises(LockHeld) as info:
        StateLock(tmp_path).acquire(timeout=0.3)
    assert time.monotonic() - start >= 0.3
    assert f"pid {holder.pid}" in str(info.value)
    assert "still held after waiting" in str(info.value)
    assert "a longer --lock-timeout" in str(info.value)
    assert info.value.waited == 0.3


def test_killed_holder_releases_the_lock(tmp_path: Path, spawn_holder: Spawn) -> None:
    holder = spawn_holder(tmp_path, -1)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=10)
    # its record is stale but the flock died with it
    with StateLock(tmp_path) as lock:
        assert lock.held


def test_same_process_second_instance_conflicts_and_release_is_idempotent(
    tmp_path: Path,
) -> None:
    first = StateLock(tmp_path / "state").acquire()
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "state" / "lock").stat().st_mode & 0o777 == 0o600
    with pytest.raises(RuntimeError):
        first.acquire()
    with pytest.raises(LockHeld, match=f"pid {os.getpid()}"):
        StateLock(tmp_path / "state").acquire()
    first.release()
    first.release()
    second = StateLock(tmp_path / "state").acquire()
    second.release()
    first.acquire()  # an instance can be reused after release
    first.release()


@pytest.mark.parametrize("content", ["", "{", '{"pid": 12', "null", '{"pid": "x"}', "[]"])
def test_partial_or_garbage_holder_record_is_tolerated(tmp_path: Path, content: str) -> None:
    (tmp_path / "lock").write_text(content)
    assert read_holder(tmp_path / "lock") is None
    assert read_holder(tmp_path / "missing") is None


def test_message_without_holder_record() -> None:
    exc = LockHeld(Path("/s/lock"), None, None)
    assert str(exc) == (
        "another reconciler holds the state lock /s/lock; "
        "wait for it, stop it, or pass --lock-timeout 60s"
    )


def test_holder_record_is_json(tmp_path: Path) -> None:
    with StateLock(tmp_path, argv=["/usr/bin/reconciler", "run", "--once"]):
        data = json.loads((tmp_path / "lock").read_text())
    assert data["pid"] == os.getpid()
    assert data["argv"] == "reconciler run --once"


def test_holder_describe_adds_the_date_when_not_today() -> None:
    holder = LockHolder(pid=7, argv="reconciler run", started_at=1_700_000_000.0)
    assert holder.describe(now=1_700_000_100.0) == 'pid 7, "reconciler run", since 22:13:20 UTC'
    assert holder.describe(now=1_800_000_000.0) == (
        'pid 7, "reconciler run", since 2023-11-14 22:13:20 UTC'
    )


def test_argv_summary() -> None:
    assert argv_summary(["/venv/lib/reconciler/__main__.py", "plan"]) == "reconciler plan"
    assert argv_summary([]) == "?"
    long = argv_summary(["reconciler", "run", "--state", "x" * 200])
    assert len(long) == 80
    assert long.endswith("…")
