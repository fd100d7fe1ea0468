"""The bench counts the processes it starts from audit events, in any thread, while counting."""

from __future__ import annotations

import subprocess
import threading

from bench.spawns import SpawnCounter


def git_version() -> None:
    subprocess.run(["git", "--version"], check=True, capture_output=True)


def test_counts_the_named_program_started_in_any_thread_while_counting() -> None:
    git = SpawnCounter("git")
    git_version()  # before: not counted
    with git.counting():
        git_version()
        subprocess.run(["true"], check=True)  # another program
        side = threading.Thread(target=git_version)
        side.start()
        side.join()
    git_version()  # after: not counted
    assert git.count == 2


def test_counters_count_side_by_side() -> None:
    outer, inner = SpawnCounter("git"), SpawnCounter("git")
    with outer.counting():
        git_version()
        with inner.counting():
            git_version()
    assert (outer.count, inner.count) == (2, 1)
