"""A batch through a child process is bounded: a lane's node cannot flood or hang the reconciler.

Real processes (``cat``, ``yes``, ``sleep``); the limits are set small so the tests are quick.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from reconciler.lanes.process import AnswerTooLarge, exchange


def children(name: str) -> list[str]:
    """Pids of this process's children named ``name`` (pgrep -P)."""
    found = subprocess.run(
        ["pgrep", "-x", name, "-P", str(os.getpid())], capture_output=True, text=True, check=False
    )
    return found.stdout.split()


def test_the_request_goes_in_and_the_answer_comes_out_whole() -> None:
    data = b"x" * (3 << 20) + b"\nend\n"  # more than any pipe buffer: written while reading
    answer = exchange(["cat"], data, timeout=30)
    assert answer.returncode == 0 and answer.stdout == data and answer.stderr == b""


def test_what_a_failing_child_says_is_kept_as_its_tail() -> None:
    answer = exchange(
        [
            "sh",
            "-c",
            "cat >/dev/null; i=0; while [ $i -lt 20000 ]; do echo line $i >&2; "
            "i=$((i+1)); done; exit 3",
        ],
        b"{}",
        timeout=30,
    )
    assert answer.returncode == 3
    assert answer.stderr.endswith(b"line 19999\n") and len(answer.stderr) <= 64 << 10


def test_an_endless_answer_is_cut_and_the_child_killed() -> None:
    with pytest.raises(AnswerTooLarge, match="more than 1 MiB"):
        exchange(["yes"], b"", timeout=30, limit=1 << 20)
    assert (
        subprocess.run(
            ["pgrep", "-x", "yes", "-P", str(__import__("os").getpid())], check=False
        ).returncode
        == 1
    )


def test_a_child_that_never_answers_times_out_and_is_killed() -> None:
    with pytest.raises(subprocess.TimeoutExpired):
        exchange(["sleep", "300"], b"", timeout=0.5)
    assert not children("sleep")  # killed and reaped, not left behind


def test_a_missing_program_says_so() -> None:
    with pytest.raises(FileNotFoundError):
        exchange(["no-such-program-here"], b"", timeout=5)
