"""The CLI's one output chokepoint (``reconciler.cli.terminal``): redaction everywhere, control
characters shown rather than obeyed on a terminal, the CLI's own colours kept, and crash reports
kept private. In-process, through ``reconciler.cli.main`` where a command is involved."""

from __future__ import annotations

import io
import os
import stat
import sys
from pathlib import Path

import pytest

from reconciler import cli
from reconciler.cli.render import Painter, table
from reconciler.cli.terminal import GuardedStream, guarded, shown, visible

GHP = "ghp_" + "M1n2B3v4C5x6Z7l8K9j0" * 2
ATTACK = "\x1b]0;owned\x07\x1b[2J\x1b]52;c;ZWNobyBvd25lZA==\x07"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def through(text: str, *, terminal: bool, writes: int = 1) -> str:
    """``text`` written (in ``writes`` pieces) and flushed through a guarded stream."""
    inner = Terminal() if terminal else io.StringIO()
    stream = GuardedStream(inner, set())
    step = max(1, len(text) // writes)
    for start in range(0, len(text), step):
        stream.write(text[start : start + step])
    stream.flush()
    return inner.getvalue()


@pytest.mark.parametrize(
    ("raw", "rendered"),
    [
        ("\x1b", "\\x1b"),
        ("\x07", "\\x07"),
        ("\r", "\\x0d"),
        ("\x00", "\\x00"),
        ("\x08", "\\x08"),
        ("\x7f", "\\x7f"),
        ("\x9b", "\\x9b"),
        ("\x85", "\\x85"),
        ("\u202e", "\\u202e"),
        ("\u2066", "\\u2066"),
        ("\u2069", "\\u2069"),
        ("\n", "\n"),
        ("\t", "\t"),
        ("\r\n", "\n"),
        ("é ✓ 漢字", "é ✓ 漢字"),
    ],
)
def test_on_a_terminal_control_characters_are_shown_not_obeyed(raw: str, rendered: str) -> None:
    assert shown(f"a{raw}b") == f"a{rendered}b"
    assert through(f"a{raw}b\n", terminal=True) == f"a{rendered}b\n"


def test_every_control_character_is_neutralised() -> None:
    dangerous = [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0), *range(0x202A, 0x202F)]
    dangerous += range(0x2066, 0x206A)
    for code in dangerous:
        if chr(code) in "\n\t":
            continue
        out = through(f"x{chr(code)}y\n", terminal=True)
        assert chr(code) not in out, hex(code)


def test_the_attack_reaches_a_terminal_as_text_and_a_pipe_as_written() -> None:
    on_terminal = through(f"agent said {ATTACK} done\n", terminal=True, writes=7)
    assert "\x1b" not in on_terminal and "\x07" not in on_terminal
    assert "\\x1b]0;owned\\x07\\x1b[2J\\x1b]52;c;ZWNobyBvd25lZA==\\x07" in on_terminal
    assert through(f"agent said {ATTACK} done\n", terminal=False) == f"agent said {ATTACK} done\n"


def test_the_clis_own_colours_work_and_cannot_be_forged() -> None:
    paint = Painter(True)
    text = paint("FAIL", "red", "bold") + " " + paint("ok", "green") + "\n"
    assert through(text, terminal=True) == "\x1b[31;1mFAIL\x1b[0m \x1b[32mok\x1b[0m\n"
    assert through(text, terminal=False) == "FAIL ok\n"
    # an agent that prints what it guesses a marker is: no escape comes of it
    forged = "\ue000" + "0" * 8 + "[8m hidden"
    assert "\x1b" not in through(forged + "\n", terminal=True)
    # a table's widths ignore the markers
    assert visible(table([[paint("ok", "green"), "x"]], ["A", "B"])) == "A   B\nok  x\n"


def test_watch_clears_the_screen_and_nothing_else_can() -> None:
    from reconciler.cli.render import clear_screen
    from reconciler.cli.terminal import csi

    assert through(clear_screen() + "table\n", terminal=True) == "\x1b[H\x1b[2Jtable\n"
    assert through(clear_screen() + "table\n", terminal=False) == "table\n"
    # an agent's own erase sequence is shown, not obeyed
    assert through("\x1b[2Jgone?\n", terminal=True) == "\\x1b[2Jgone?\n"
    with pytest.raises(ValueError, match="not a cursor-home or erase sequence"):
        csi("31m")


def test_redaction_in_both_modes_also_across_writes() -> None:
    for terminal in (True, False):
        out = through(f"token {GHP} and https://bot:pw-123456@h/x\n", terminal=terminal, writes=9)
        assert out == "token *** and https://***@h/x\n"
    # flushed before its line ended: what is there is redacted
    assert through(f"partial {GHP}", terminal=False) == "partial ***"


def test_an_endless_line_is_written_in_pieces_without_cutting_a_token() -> None:
    inner = io.StringIO()
    stream = GuardedStream(inner, set())
    words = [f"word{i} {GHP}" for i in range(6000)]
    for word in words:
        stream.write(word + " ")
    assert inner.getvalue(), "a line longer than the hold limit is written before it ends"
    stream.flush()
    assert GHP not in inner.getvalue()
    assert inner.getvalue().count("***") == len(words)


def test_guarded_restores_the_streams_and_masks_what_the_command_learns() -> None:
    out, err = sys.stdout, sys.stderr
    with guarded() as secrets:
        assert isinstance(sys.stdout, GuardedStream) and isinstance(sys.stderr, GuardedStream)
        secrets.add("plain-password-1")
    assert (sys.stdout, sys.stderr) == (out, err)


def test_main_masks_the_control_urls_password_wherever_it_appears(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def chatty(engine: object, args: object) -> int:
        print("git said: password plain-Passw0rd rejected")
        print(f"and {ATTACK}", file=sys.stderr)
        return 0

    monkeypatch.setitem(cli.COMMANDS, "status", chatty)
    url = "https://bot:plain-Passw0rd@127.0.0.1:9/x.git"
    assert cli.main(["--control", url, "--state", str(tmp_path / "s"), "status"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "git said: password *** rejected\n"
    assert captured.err == f"and {ATTACK}\n"  # not a terminal: as written


def test_a_crash_report_is_private_redacted_and_only_in_the_state_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "tmp"
    shared.mkdir(mode=0o1777)
    monkeypatch.setenv("TMPDIR", str(shared))
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (shared / "last-error.txt").symlink_to(victim)

    def crash(engine: object, args: object) -> int:
        raise RuntimeError(f"a bug that quoted {GHP}")

    monkeypatch.setitem(cli.COMMANDS, "status", crash)
    state = tmp_path / "state"
    assert cli.main(["--control", str(tmp_path), "--state", str(state), "status"]) == 1
    message = capsys.readouterr().err
    report = state / "last-error.txt"
    assert f"the traceback is in {report}" in message
    assert GHP not in message
    assert stat.S_IMODE(report.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    text = report.read_text()
    assert "RuntimeError: a bug that quoted ***" in text and GHP not in text
    assert victim.read_text() == "precious\n"
    assert sorted(os.listdir(shared)) == ["last-error.txt"]

    blocked = tmp_path / "a-file"
    blocked.write_text("")
    assert cli.main(["--control", str(tmp_path), "--state", str(blocked / "s"), "status"]) == 1
    message = capsys.readouterr().err
    assert f"its traceback was not saved: the state directory {blocked / 's'} cannot" in message
    assert "written nowhere else" in message
    assert victim.read_text() == "precious\n"
    assert sorted(os.listdir(shared)) == ["last-error.txt"]


def test_the_daemons_log_writes_through_the_stream_of_the_moment(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from reconciler.daemon import Log

    with guarded():
        log = Log("text")
        log("pass", f"lane web: {ATTACK} {GHP}")
    out = capsys.readouterr().out
    assert out.endswith(f"lane web: {ATTACK} ***\n")  # piped: redacted, otherwise as written


def test_the_summary_line_counts_every_kind_of_action() -> None:
    """Each kind of action has its words in the plan's summary: a kind left out would make a
    plan of only that kind read `Plan: .`."""
    from reconciler.cli.render import summary_line
    from reconciler.plan import Action, ActionKind, Plan

    def one(kind: ActionKind) -> Action:
        every = {"attempt": 1, "iteration": 1, "generation": "g", "pr": 1}
        return Action.from_json(
            {"action": kind.value, "task": "t", "lane": "web", "reason": "why", **every}
        )

    for kind in ActionKind:
        line = summary_line(Plan("r", 0, 0.0, actions=(one(kind), one(kind))))
        assert line.startswith("Plan: 2 ") and line.endswith("."), (kind, line)
    rebases = summary_line(Plan("r", 0, 0.0, actions=(one(ActionKind.REBASE),)))
    assert rebases == "Plan: 1 to rebase."
