"""The kept worker pools of a pass's fan-outs."""

from __future__ import annotations

import threading

import pytest

from reconciler import workers


def test_a_pool_is_kept_from_one_fan_out_to_the_next() -> None:
    seen: set[threading.Thread] = set()  # the threads themselves, kept alive: never reused
    for _ in range(5):
        with workers.fanout("test-kept", 2) as pool:
            for future in [pool.submit(threading.current_thread) for _ in range(4)]:
                seen.add(future.result())
    assert len(seen) <= 2  # the same two threads served every block


def test_leaving_a_block_by_an_error_still_waits_for_its_work() -> None:
    release = threading.Event()
    finished: list[int] = []

    def slow(n: int) -> None:
        release.wait(timeout=60)
        finished.append(n)

    def fail_while_working() -> None:
        with workers.fanout("test-wait", 2) as pool:
            for n in range(3):
                pool.submit(slow, n)
            threading.Timer(0.05, release.set).start()
            raise RuntimeError("the caller failed while its work ran")

    with pytest.raises(RuntimeError):
        fail_while_working()
    assert sorted(finished) == [0, 1, 2]
