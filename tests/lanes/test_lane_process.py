"""Node sessions: one node process serves a lane's batches, and a lane's node cannot flood or
hang the reconciler.

Real processes: the real ``reconciler node`` as this user, and small stand-ins (``yes``,
``sleep``, a node that dies mid-batch); the limits are set small so the tests are quick.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from reconciler.lanes import process
from reconciler.lanes.process import (
    AnswerTooLarge,
    BadAnswer,
    BatchRefused,
    Session,
    SessionLost,
    Sessions,
)
from reconciler.protocol import SESSION_OPEN, SESSION_READY, Batch, BatchResult
from tests.support.waiting import exited, wait_for

NODE = [sys.executable, "-m", "reconciler", "node"]
EMPTY = Batch(requests=[]).model_dump_json().encode()
# A node that reads one whole batch, says why it gives up, and exits without an answer.
DIES_MID_BATCH = [
    sys.executable,
    "-c",
    "import sys\n"
    "sys.stdin.buffer.readline(); n = int(sys.stdin.buffer.readline())\n"
    "sys.stdin.buffer.read(n); print('out of memory', file=sys.stderr); sys.exit(3)\n",
]


def children(name: str) -> list[str]:
    """Pids of this process's children named ``name`` (pgrep -P)."""
    found = subprocess.run(
        ["pgrep", "-x", name, "-P", str(os.getpid())], capture_output=True, text=True, check=False
    )
    return found.stdout.split()


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture
def sessions() -> Iterator[Sessions]:
    made = Sessions(Session)
    yield made
    made.close()


def served(sessions: Sessions, argv: list[str] = NODE, data: bytes = EMPTY) -> BatchResult:
    return BatchResult.model_validate_json(sessions.exchange(argv, data, timeout=60))


def test_two_batches_are_served_by_one_node_process(sessions: Sessions) -> None:
    assert served(sessions).responses == []
    (pid,) = sessions.idle(NODE)
    assert served(sessions).responses == []
    assert sessions.idle(NODE) == [pid]


def test_sessions_idle_too_long_are_closed_their_own_line_at_once_the_others_by_sweeps(
    sessions: Sessions,
) -> None:
    other = ["env", *NODE]  # another command line: another lane
    served(sessions)
    served(sessions, other)
    (mine,), (theirs,) = sessions.idle(NODE), sessions.idle(other)

    def age(argv: list[str]) -> None:
        for session in sessions._idle[tuple(argv)]:
            session.idle_since -= process.IDLE_SECONDS + 1

    age(NODE)
    served(sessions)  # the line's own stale session is closed when taken, and replaced
    (fresh,) = sessions.idle(NODE)
    assert fresh != mine
    wait_for(lambda: gone(mine), "the stale session's node to exit")
    age(other)
    served(sessions)  # the other line is looked over only by a sweep: not yet
    assert sessions.idle(other) == [theirs]
    sessions._swept_at -= process.SWEEP_SECONDS
    served(sessions)
    assert sessions.idle(other) == [] and sessions.idle(NODE) == [fresh]
    wait_for(lambda: gone(theirs), "the other line's stale session's node to exit")


def test_a_batch_the_node_cannot_read_fails_alone_and_the_session_goes_on(
    sessions: Sessions,
) -> None:
    served(sessions)
    (pid,) = sessions.idle(NODE)
    with pytest.raises(BatchRefused, match="not valid JSON"):
        sessions.exchange(NODE, b"not json", timeout=60)
    with pytest.raises(BatchRefused, match="protocol version 99"):
        sessions.exchange(NODE, b'{"version": 99, "requests": []}', timeout=60)
    assert served(sessions).responses == []
    assert sessions.idle(NODE) == [pid]


def test_a_session_killed_while_idle_is_replaced_and_the_batch_served(sessions: Sessions) -> None:
    served(sessions)
    (pid,) = sessions.idle(NODE)
    os.kill(pid, 9)
    wait_for(lambda: exited(pid), "the node to die")
    assert served(sessions).responses == []
    (fresh,) = sessions.idle(NODE)
    assert fresh != pid


def test_a_batch_delivered_to_a_session_that_dies_fails_with_what_it_said(
    sessions: Sessions,
) -> None:
    with pytest.raises(SessionLost) as lost:
        sessions.exchange(DIES_MID_BATCH, EMPTY, timeout=60)
    assert lost.value.delivered
    assert lost.value.returncode == 3
    assert lost.value.stderr.strip().endswith(b"out of memory")
    assert sessions.idle(DIES_MID_BATCH) == []


def test_closing_ends_the_node(sessions: Sessions) -> None:
    served(sessions)
    (pid,) = sessions.idle(NODE)
    sessions.close()
    assert sessions.idle(NODE) == []
    assert gone(pid)


def test_a_node_of_another_session_protocol_says_so() -> None:
    wrong = SESSION_OPEN.replace(b"session ", b"session 9")
    node = subprocess.run(NODE, input=wrong, capture_output=True, timeout=60, check=False)
    assert node.returncode == 2
    assert b"install the same reconciler version" in node.stdout


def test_the_single_batch_mode_still_answers() -> None:
    node = subprocess.run(NODE, input=EMPTY, capture_output=True, timeout=60, check=False)
    assert node.returncode == 0
    assert BatchResult.model_validate_json(node.stdout).responses == []


def test_a_large_batch_goes_in_while_the_answer_comes_out(sessions: Sessions) -> None:
    echo = [sys.executable, "-c", ECHO]
    data = b"x" * (3 << 20)  # more than any pipe buffer: written while reading
    assert sessions.exchange(echo, data, timeout=60) == data


# A stand-in node that answers each batch with the batch itself.
ECHO = (
    "import sys\n"
    "i, o = sys.stdin.buffer, sys.stdout.buffer\n"
    "i.readline()\n"
    f"o.write({SESSION_READY!r}); o.flush()\n"
    "while h := i.readline():\n"
    "    d = i.read(int(h)); o.write(b'ok %d\\n' % len(d) + d); o.flush()\n"
)


def test_an_endless_answer_is_cut_and_the_node_killed(sessions: Sessions) -> None:
    with pytest.raises(BadAnswer, match="greeting of another protocol version"):
        sessions.exchange(["yes"], EMPTY, timeout=30)
    assert not children("yes")
    greets_then_yes = ["sh", "-c", f"printf '{SESSION_READY.decode().strip()}\\n'; exec yes"]
    with pytest.raises(BadAnswer, match="not a node's answer"):
        sessions.exchange(greets_then_yes, EMPTY, timeout=30)
    assert not children("yes")
    big = [
        sys.executable,
        "-c",
        f"print({SESSION_READY.decode().strip()!r}); print('ok 5000000'); print('x' * 5000000)",
    ]
    with pytest.raises(AnswerTooLarge, match="more than 1 MiB"):
        sessions.exchange(big, EMPTY, timeout=30, limit=1 << 20)


def test_a_node_that_never_answers_times_out_and_is_killed(sessions: Sessions) -> None:
    greets_then_sleeps = ["sh", "-c", f"printf '{SESSION_READY.decode().strip()}\\n'; sleep 300"]
    with pytest.raises(subprocess.TimeoutExpired):
        sessions.exchange(greets_then_sleeps, EMPTY, timeout=0.5)
    assert not children("sleep")  # killed and reaped, not left behind
    assert sessions.idle(greets_then_sleeps) == []


def test_a_node_that_serves_one_batch_per_process_is_named_an_older_version(
    sessions: Sessions,
) -> None:
    """An older node reads its stdin to the end as one batch: it never greets. Closed, it says
    what it made of the stream, and the batch fails at once, naming the fix."""
    older = [
        "sh",
        "-c",
        "cat > /dev/null; echo 'reconciler node: the batch is not valid JSON' >&2; exit 2",
    ]
    with pytest.raises(BatchRefused) as refused:
        sessions.exchange(older, EMPTY, timeout=1)
    assert "install the same reconciler version on both sides" in str(refused.value)
    assert "(it said: reconciler node: the batch is not valid JSON)" in str(refused.value)
    assert not children("cat") and sessions.idle(older) == []


def test_what_a_failing_node_says_is_kept_as_its_tail(sessions: Sessions) -> None:
    noisy = [
        "sh",
        "-c",
        "i=0; while [ $i -lt 20000 ]; do echo line $i >&2; i=$((i+1)); done; exit 3",
    ]
    with pytest.raises(SessionLost) as lost:
        sessions.exchange(noisy, EMPTY, timeout=30)
    assert lost.value.returncode == 3
    assert lost.value.stderr.endswith(b"line 19999\n") and len(lost.value.stderr) <= 64 << 10


def test_a_missing_program_says_so(sessions: Sessions) -> None:
    with pytest.raises(FileNotFoundError):
        sessions.exchange(["no-such-program-here"], EMPTY, timeout=5)


def test_a_reconciler_killed_outright_leaves_no_node() -> None:
    """SIGKILL gives the client no chance to close anything: its node sees EOF and exits."""
    client = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from reconciler.lanes.process import SESSIONS\n"
            f"SESSIONS.exchange({NODE!r}, {EMPTY!r}, timeout=60)\n"
            f"print(*SESSIONS.idle({NODE!r}), flush=True)\n"
            "time.sleep(300)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert client.stdout is not None
    node = int(client.stdout.readline())
    client.kill()
    client.wait()
    client.stdout.close()
    wait_for(lambda: not os.path.exists(f"/proc/{node}/fd/0"), "the orphaned node to exit")
