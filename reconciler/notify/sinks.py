"""Delivering one document to one sink, once: a POST, or a command with the document on stdin.

A try either succeeds, fails for a while (``Retry``: the network, a 5xx, 408 or 429, a command
exiting non-zero or running past its timeout) or fails for good (``Refused``: a 4xx, a redirect,
a URL file that cannot be trusted, a command the admin policy does not allow). Retrying is the
notifier's.

Secrets: a sink's URL may be one (a Slack webhook's is), so no message here quotes it, and every
message goes through ``reconciler.redact`` with the URL as a known secret. Commands get the
document on stdin, never through a shell, with a small fixed environment (none of the
reconciler's own variables: they may hold its tokens).
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import re
import signal
import stat
import subprocess
import urllib.error
import urllib.request

from reconciler import __version__
from reconciler.manifests.models import Notification
from reconciler.manifests.policy import Policy
from reconciler.redact import redact

MAX_URL_FILE = 4096
_URL = re.compile(r"^https?://[^\s@]+$")
_KEPT_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ")
_TEMPORARY_HTTP = frozenset({408, 425, 429})
TAIL = 300  # characters of a failing command's stderr kept in its event


class Retry(Exception):
    """This try failed; another may succeed. The message names no URL."""


class Refused(Exception):
    """Fails every time until someone fixes it; the message says what to fix."""


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *_args: object, **_kwargs: object) -> None:
        return None  # a 3xx surfaces as an HTTPError: a webhook that moves is a configuration


_OPENER = urllib.request.build_opener(_NoRedirects())


def read_url_file(path: str) -> str:
    """The URL in ``urlFile``: a regular file of the reconciler's user (or root), mode 0600 or
    stricter, holding one http(s) URL. What a file that is not one holds is never quoted."""
    where = os.path.expanduser(path)
    try:
        fd = os.open(where, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise Refused(
            f"urlFile {path} cannot be read ({exc.strerror}); create it holding the URL "
            f"(chmod 600), or fix the path"
        ) from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        mode = stat.S_IMODE(info.st_mode)
        if not stat.S_ISREG(info.st_mode):
            raise Refused(f"urlFile {path} is not a regular file")
        if info.st_uid not in (0, os.geteuid()):
            raise Refused(f"urlFile {path} belongs to uid {info.st_uid}; chown it to this user")
        if mode & 0o077:
            raise Refused(
                f"urlFile {path} can be read by others (mode {mode:o}); restrict it with "
                f"chmod 600 {path}"
            )
        data = handle.read(MAX_URL_FILE + 1)
    url = data.decode("utf-8", errors="replace").strip()
    if len(data) > MAX_URL_FILE or not _URL.match(url):
        raise Refused(f"urlFile {path} does not hold one http(s) URL alone (without user@)")
    return url


def post(url: str, body: bytes, timeout: float) -> None:
    """POST ``body`` as JSON; a 2xx answer is delivered."""
    request = urllib.request.Request(  # noqa: S310 (the URL is checked to be http(s))
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": f"reconciler/{__version__}"},
    )
    try:
        with _OPENER.open(request, timeout=timeout) as answer:
            answer.read(1024)  # the answer says nothing more; a receiver may want it read
    except urllib.error.HTTPError as exc:
        code = exc.code
        exc.close()
        if code >= 500 or code in _TEMPORARY_HTTP:
            raise Retry(f"HTTP {code}") from None
        if 300 <= code < 400:
            raise Refused(f"HTTP {code}: the webhook redirects; give the URL it moved to") from None
        raise Refused(f"HTTP {code}: the receiver refuses the request; check the URL") from None
    except TimeoutError:
        raise Retry(f"no answer within {timeout:g}s") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        text = reason.strerror if isinstance(reason, OSError) and reason.strerror else reason
        raise Retry(redact(f"cannot connect ({text})", [url])) from None
    except OSError as exc:  # a reset connection, a closed socket
        raise Retry(redact(f"connection failed ({exc.strerror or exc})", [url])) from None


def run_command(argv: list[str], body: bytes, timeout: float, env: dict[str, str]) -> None:
    """Run the sink's command with ``body`` on stdin; exit 0 is delivered. A command past
    ``timeout`` is killed with its process group."""
    args = [os.path.expanduser(argv[0]), *argv[1:]]
    try:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            cwd=env.get("HOME") or "/",
            start_new_session=True,
        )
    except OSError as exc:
        raise Refused(f"command {argv[0]} cannot run ({exc.strerror}); fix command") from None
    try:
        _out, err = proc.communicate(body, timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise Retry(f"command still running after {timeout:g}s (killed)") from None
    if proc.returncode != 0:
        tail = err.decode("utf-8", errors="replace").strip()[-TAIL:]
        said = f": {redact(tail)}" if tail else ""
        raise Retry(f"command exited with status {proc.returncode}{said}")


def command_env(sink: str, transition: str) -> dict[str, str]:
    """What a command sink's process gets: a few of the reconciler's variables and the sink's."""
    env = {k: os.environ[k] for k in _KEPT_ENV if k in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.update({"RECONCILER_SINK": sink, "RECONCILER_TRANSITION": transition})
    return env


def command_refusal(policy: Policy, euid: int, user: str) -> str | None:
    """Why command sinks may not run here (None: they may). A command sink is code from the
    manifests run as the reconciler's own user, so it may run exactly where the admin policy
    lets a lane run as that user (``reconcilerUser``; by default, never as root)."""
    allowed = policy.spec.reconciler_user
    if allowed if allowed is not None else euid != 0:
        return None
    who = f"{user} (root)" if euid == 0 else user
    return (
        f"a command sink would run as the reconciler's own user {who}, which {policy.origin} "
        "does not allow; use a webhook sink, or let the admin allow it (reconcilerUser: true)"
    )


def url_refusal(policy: Policy, url: str) -> str | None:
    """Why a webhook or Slack sink may not post to ``url`` here (None: it may). The admin
    policy's ``notifyUrls``, when given, names the only URLs (shell wildcards) a manifest may
    send notifications to; the URL itself is never quoted (a Slack URL is a secret)."""
    patterns = policy.spec.notify_urls
    if patterns is None or any(fnmatch.fnmatchcase(url, p) for p in patterns):
        return None
    return (
        f"{policy.origin} does not allow notifications to this sink's URL (notifyUrls: "
        f"{', '.join(patterns)}); point the sink at an allowed URL, or let the admin add it"
    )


def deliver(
    sink: Notification,
    body: bytes,
    text: bytes,
    transition: str,
    refusal: str | None,
    *,
    policy: Policy | None = None,
) -> None:
    """One try of one document to one sink (``Retry``, ``Refused``). ``refusal``: why a command
    sink may not run; ``policy``: the admin policy the URL of another sink must pass."""
    if sink.type == "command":
        if refusal is not None:
            raise Refused(refusal)
        assert sink.command is not None
        run_command(sink.command, body, sink.timeout, command_env(sink.name, transition))
        return
    url = sink.url if sink.url is not None else read_url_file(str(sink.url_file))
    refused = url_refusal(policy, url) if policy is not None else None
    if refused is not None:
        raise Refused(f"{sink.name}: {refused}")
    try:
        post(url, text if sink.type == "slack" else body, sink.timeout)
    except (Retry, Refused) as exc:
        raise type(exc)(redact(str(exc), [url])) from None


__all__ = ["Refused", "Retry", "command_refusal", "deliver", "read_url_file", "url_refusal"]
