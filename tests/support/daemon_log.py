"""A running ``reconciler run`` in a subprocess, its JSON log lines collected by a thread.

Shared by the daemon tests and the security suite: tests wait on what the log (or the world)
shows, never on a clock.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from tests.support.waiting import wait_for

T = TypeVar("T")


class RunLog:
    def __init__(self, argv: Sequence[str], env: Mapping[str, str]) -> None:
        self.proc = subprocess.Popen(
            list(argv),
            env=dict(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        self.records: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.records.append(json.loads(line))
            except ValueError:
                self.records.append({"event": "text", "msg": line})

    def passes(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("event") == "pass" and "number" in r]

    def wait_for(self, probe: Callable[[], T | None], what: str, *, timeout: float) -> T:
        """Poll ``probe`` until it returns something true, while the daemon runs; a failure
        names ``what`` and shows the log's tail."""

        def running_probe() -> T | None:
            found = probe()
            assert found or self.proc.poll() is None, f"the daemon exited: {self.stderr()}"
            return found

        return wait_for(
            running_probe, what, timeout=timeout, every=0.05, details=lambda: self.records[-8:]
        )

    def poke(self) -> int:
        """A pass now (SIGHUP), waited for; the number of passes logged."""
        self.wait_for(
            self.passes, "the first pass", timeout=60
        )  # one under way ends before the poke's
        before = len(self.passes())
        self.proc.send_signal(signal.SIGHUP)
        self.wait_for(lambda: len(self.passes()) > before, "the poked pass", timeout=60)
        return len(self.passes())

    def stderr(self) -> str:
        if self.proc.poll() is None:
            return ""
        assert self.proc.stderr is not None
        return self.proc.stderr.read()

    def stop(self) -> int:
        """SIGTERM, as systemd would; the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        finally:
            self._close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._close()

    def _close(self) -> None:
        self._reader.join(timeout=5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
