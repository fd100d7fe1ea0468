"""How long `run` waits after a pass: the plan's requeue, bounded by a floor and the interval.

A fake clock and a plan made by hand: no process, no sleeping.
"""

from __future__ import annotations

import io
import json
import os
import select
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from reconciler.daemon import (
    QUIET,
    QUIET_EXITS,
    REQUEUE_FLOOR,
    Daemon,
    Log,
    SignalRelay,
    Wakeup,
    _trim,
    quiet_needed,
)
from reconciler.engine import Context, Engine, PassResult
from reconciler.plan import Due, Plan, Requeue
from tests.support.waiting import wait_for

NOW = 1_000_000.0
INTERVAL = 30.0


def daemon(out: io.StringIO, fmt: str = "json") -> Daemon:
    engine = Engine(Context(control="/nonexistent", state_dir=Path("/nonexistent")), lambda: NOW)
    return Daemon(engine, INTERVAL, Log(fmt, out))


def passed(requeue: Requeue | None) -> PassResult:
    return PassResult(Plan(revision="r", serial=1, now=NOW - 0.3, requeue=requeue), None)


def lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        (None, (INTERVAL, "interval")),  # the pass failed: no plan to go by
        (passed(None), (INTERVAL, "interval")),  # nothing due by time
        (passed(Requeue(NOW + 90, Due.STALL, "t/1.1")), (INTERVAL, "interval")),  # the cap
        (passed(Requeue(NOW + 2.5, Due.BACKOFF, "t")), (2.5, "requeue")),
        (passed(Requeue(NOW - 4, Due.BACKOFF, "t")), (REQUEUE_FLOOR, "requeue")),  # never spins
    ],
)
def test_run_waits_for_the_plans_requeue_within_the_floor_and_the_interval(
    result: PassResult | None, expected: tuple[float, str]
) -> None:
    out = io.StringIO()
    wait, timer = daemon(out)._next_wait(result)
    assert (round(wait, 6), timer) == expected
    said = lines(out)
    if timer == "interval":
        assert said == []
        return
    assert len(said) == 1
    assert said[0]["level"] == "debug" and said[0]["event"] == "requeue"
    assert said[0]["after"] == round(wait, 3) and said[0]["due"] == "backoff"
    assert said[0]["msg"] == f"next pass in {wait:.2f}s: the backoff of t ends"


def test_debug_lines_are_for_json_logs_only() -> None:
    out = io.StringIO()
    daemon(out, fmt="text")._next_wait(passed(Requeue(NOW + 1, Due.BACKOFF, "t")))
    assert out.getvalue() == ""


def test_a_pass_says_the_slots_in_use_after_it_and_an_idle_one_is_a_debug_line() -> None:
    from collections import Counter

    from reconciler.manifests.models import ConfigSpec, Desired, LaneSpec, TaskSpec, make_task
    from reconciler.plan import Action, ActionKind, LaneView, NewRun, Observed, RunView

    web = LaneSpec.model_validate(
        {"maxConcurrency": 3, "repos": [{"name": "app", "checkout": "~/a"}]}
    )
    spec = TaskSpec.model_validate({"lane": "web", "repo": "app", "agent": "bot", "prompt": "x"})
    desired = Desired(
        revision="r",
        config=ConfigSpec(),
        lanes={"web": web},
        agents={},
        tasks={"a": make_task("a", spec), "b": make_task("b", spec)},
    )
    live = RunView("a", "web", "app", 1, 1, "g", NOW - 5, alive=True)
    observed = Observed("r", 1, {"web": LaneView("web", True)}, runs={"a": (live,)})
    start = Action(ActionKind.START, "b", "web", "new task", NewRun(1, 1, "g"))
    plan = Plan(revision="r", serial=1, now=NOW, actions=(start,))
    out = io.StringIO()
    d = daemon(out)
    d._log_pass(PassResult(plan, None, observed), desired, Counter({"poke": 1}), "poke")
    # the run that was alive, not the start the plan asks for: no report, so it was not applied
    (line,) = lines(out)
    assert line["level"] == "info" and line["slots"] == {"web": "1/3"}
    # an event woke a pass that found nothing to do: for machines only
    idle = Plan(revision="r", serial=1, now=NOW)
    d._log_pass(PassResult(idle, None, observed), desired, Counter({"poke": 1}), "poke")
    assert lines(out)[-1]["level"] == "debug"
    text = io.StringIO()
    daemon(text, fmt="text")._log_pass(
        PassResult(idle, None, observed), desired, Counter({"poke": 1}), "poke"
    )
    assert text.getvalue() == ""


def test_a_signal_that_lands_while_the_wake_up_is_locked_is_carried_out_after() -> None:
    """A handler runs in the main thread between any two bytecodes, also inside a lock the main
    thread holds: it must not take that lock itself (it would wait for ever)."""
    wake = Wakeup()
    before = signal.getsignal(signal.SIGHUP)
    relay = SignalRelay({signal.SIGHUP: lambda: wake.fire("poke")})
    relay.install()
    try:
        with wake._lock:  # the main thread inside the wake-up, as `wait` is
            os.kill(os.getpid(), signal.SIGHUP)  # the handler runs here, before the next line
            assert not wake._event.is_set()  # relayed: it waits for the lock, not the handler
        assert wake.wait(timeout=10) == {"poke": 1}
    finally:
        relay.close()
    assert signal.getsignal(signal.SIGHUP) is before  # the handler as it was


def _in_select(tid: int) -> bool:
    """Whether the thread sleeps in select/poll (its kernel wait channel says so)."""
    try:
        with open(f"/proc/self/task/{tid}/wchan", encoding="ascii") as f:
            wchan = f.read()
    except OSError:
        return False
    return "poll" in wchan or "select" in wchan


@pytest.mark.skipif(
    not os.path.exists(f"/proc/self/task/{os.getpid()}/wchan"),
    reason="needs /proc/<pid>/task/<tid>/wchan to see the main thread asleep",
)
def test_a_signal_another_thread_takes_is_carried_out_while_the_main_thread_sleeps() -> None:
    """The kernel may hand a signal to any thread that does not block it. One taken by a
    worker while the main thread sleeps in a system call is carried out at once, not when the
    main thread next wakes (the loop's wait lasts up to its interval: a poke or a stop would
    wait for it)."""
    done_r, done_w = os.pipe()
    main = threading.get_native_id()
    other = threading.Event()
    before = signal.getsignal(signal.SIGUSR1)
    signal.signal(signal.SIGUSR1, lambda *_: other.set())  # another handler's signal

    def carry() -> None:
        os.write(done_w, b"x")

    relay = SignalRelay({signal.SIGHUP: carry})
    relay.install()
    try:

        def worker() -> None:
            wait_for(lambda: _in_select(main), "the main thread asleep in select")
            signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)
            signal.pthread_kill(threading.get_ident(), signal.SIGHUP)  # to this thread only

        taker = threading.Thread(target=worker, name="taker")
        taker.start()
        readable, _, _ = select.select([done_r], [], [], 20)
        assert readable, "the signal waited for the main thread to wake"
        taker.join()
    finally:
        relay.close()
        signal.signal(signal.SIGUSR1, before)
        os.close(done_r)
        os.close(done_w)
    assert other.is_set()  # its own handler ran too, once the main thread woke


@pytest.mark.skipif(_trim() is None, reason="malloc_trim is glibc's; this C library has none")
def test_an_idle_loop_gives_the_heap_s_free_pages_back() -> None:
    """A pass's high-water mark stays in the C heap when a few objects pin its top; the loop
    hands the free pages back before it idles (glibc's malloc_trim)."""
    script = (
        "from reconciler.daemon import give_back_memory\n"
        "def rss():\n"
        "    return int(open('/proc/self/statm').read().split()[1]) * 4096\n"
        "blocks = [bytes(2000) for _ in range(100_000)]\n"  # 200 MB, above pymalloc's 512 B
        "kept = blocks[::1000]\n"  # pinned here and there: the heap cannot shrink from its top
        "del blocks\n"
        "before = rss()\n"
        "give_back_memory()\n"
        "print(before, rss())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    before, after = (int(x) for x in out.split())
    assert before > 150 << 20 and after < before // 2


def test_a_pass_for_run_exits_alone_waits_less_for_the_rest_of_a_burst() -> None:
    assert quiet_needed(Counter({"run-exit": 3})) == QUIET_EXITS < QUIET
    # a push writes many files, one event each: its burst is waited out in full
    assert quiet_needed(Counter({"run-exit": 1, "control": 4})) == QUIET
    assert quiet_needed(Counter({"poke": 1})) == QUIET
