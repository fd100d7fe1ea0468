"""A real ``reconciler serve`` or ``run --listen`` on 127.0.0.1 (an ephemeral port), and a small
HTTP client over the standard library: the tests speak to the real server through real sockets."""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.integration.world import World
from tests.support.daemon_log import RunLog
from tests.support.waiting import wait_for

TOKEN = "t0ken-for-the-tests-" + "x" * 24


def token_file(world: World, mode: int = 0o600) -> Path:
    path = world.root / "api-token"
    path.write_text(TOKEN + "\n", encoding="utf-8")
    path.chmod(mode)
    return path


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Client:
    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        assert parts.hostname is not None and parts.port is not None
        self.host, self.port = parts.hostname, parts.port

    def request(
        self,
        method: str,
        path: str,
        token: str | None = None,
        body: bytes | None = None,
        **headers: str,
    ) -> Answer:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        try:
            sent = {k.replace("_", "-"): v for k, v in headers.items()}
            if token is not None:
                sent["Authorization"] = f"Bearer {token}"
            conn.request(method, path, body=body, headers=sent)
            response = conn.getresponse()
            return Answer(
                response.status,
                {k.lower(): v for k, v in response.getheaders()},
                response.read(),
            )
        finally:
            conn.close()

    def get(self, path: str, token: str | None = None, **headers: str) -> Answer:
        return self.request("GET", path, token, None, **headers)

    def json(self, path: str, token: str | None = None) -> Any:
        answer = self.get(path, token)
        assert answer.status == 200, (path, answer.status, answer.body[:500])
        return answer.json()


class Serving:
    """``reconciler serve`` in a subprocess; its URL read from what it prints."""

    def __init__(self, world: World, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "reconciler", "serve", *args],
            env=world.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        found = wait_for(self._url, "serve to print its URL", timeout=60, details=self._why)
        self.url = found
        self.client = Client(found)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def _url(self) -> str | None:
        assert self.proc.poll() is None, self._why()
        for line in self.lines:
            match = re.search(r"serving (http\S+)", line)
            if match:
                return match.group(1)
        return None

    def _why(self) -> str:
        if self.proc.poll() is None:
            return "".join(self.lines)
        assert self.proc.stderr is not None
        return self.proc.stderr.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(timeout=30)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def run_listening(world: World, *args: str) -> tuple[RunLog, Client]:
    """``reconciler run --listen 127.0.0.1:0`` and a client of the URL its log names."""
    daemon = RunLog(
        [sys.executable, "-m", "reconciler", "run", "--log-format", "json", *args],
        {**world.env(), "PYTHONUNBUFFERED": "1"},
    )
    url = daemon.wait_for(
        lambda: next((r["url"] for r in daemon.records if r.get("event") == "listen"), None),
        "the listener's URL in the log",
        timeout=60,
    )
    return daemon, Client(url)


def refused(world: World, *args: str) -> subprocess.CompletedProcess[str]:
    """``serve`` with options it must refuse at start: it exits, serving nothing."""
    proc = world.cli("serve", *args)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "serving" not in proc.stdout
    return proc
