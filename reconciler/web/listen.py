"""Where and how the HTTP listener listens, checked before anything is served.

Secure by default: an address on loopback unless ``--listen`` names another; a listener anyone
else can reach needs TLS (``--tls-cert``/``--tls-key``) or an explicit ``--insecure-listen``; the
bearer token comes from a file only its owner can read (``--token-file``, mode 0600), and is
required for the API on a non-loopback listener and for every request that changes something,
always. Imports nothing of the web stack: ``serve`` and ``run --listen`` refuse a bad listener
before they import it.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

from reconciler.engine import UserError

DEFAULT_LISTEN = "127.0.0.1:8080"
MIN_TOKEN = 16  # characters: a token shorter than this is a password someone could guess


@dataclass(frozen=True)
class Address:
    host: str  # an IP address, as written (without brackets)
    port: int

    @property
    def loopback(self) -> bool:
        return ipaddress.ip_address(self.host).is_loopback

    def url(self, port: int, tls: bool) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if tls else 'http'}://{host}:{port}"


@dataclass(frozen=True)
class Listen:
    """A checked listener: where, with what TLS files, and the token (None: none configured)."""

    address: Address
    token: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    webhook_secret: str | None = None  # the webhook secret: POST /hooks/github and /hooks/git

    @property
    def loopback(self) -> bool:
        return self.address.loopback

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    def bind(self) -> socket.socket:
        """The listening socket (port 0: one the kernel picks); a sentence when it cannot be."""
        family = socket.AF_INET6 if ":" in self.address.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.address.host, self.address.port))
            sock.listen(128)
        except OSError as exc:
            sock.close()
            raise UserError(
                f"cannot listen on {self.address.url(self.address.port, self.tls)} "
                f"({exc.strerror or exc}); choose another --listen ADDR:PORT"
            ) from None
        sock.set_inheritable(False)
        return sock


def parse_address(text: str) -> Address:
    """``127.0.0.1:8080``, ``[::1]:8080``, ``localhost:8080`` or ``0.0.0.0:8080``."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise UserError(f"--listen {text}: write it as ADDR:PORT, e.g. {DEFAULT_LISTEN}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host == "localhost":
        host = "127.0.0.1"  # what it means here, whatever the resolver says
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise UserError(
            f"--listen {text}: {host!r} is not an IP address; name the address to listen on "
            f"(127.0.0.1 for this machine only, 0.0.0.0 for every interface)"
        ) from None
    return Address(host, int(port_text))


def check_listen(
    listen: str,
    *,
    token_file: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    insecure: bool,
    webhook_secret_file: str | None = None,
) -> Listen:
    """The listener the options describe, or a ``UserError`` saying what to fix."""
    address = parse_address(listen)
    if (tls_cert is None) != (tls_key is None):
        raise UserError("--tls-cert and --tls-key go together: give both, or neither")
    cert = Path(tls_cert).expanduser() if tls_cert else None
    key = Path(tls_key).expanduser() if tls_key else None
    for option, path in (("--tls-cert", cert), ("--tls-key", key)):
        if path is not None and not path.is_file():
            raise UserError(f"{option} {path}: no such file")
    if key is not None:
        _private(key, "the TLS key")
    token = read_token(Path(token_file).expanduser()) if token_file else None
    if not address.loopback:
        if cert is None and not insecure:
            raise UserError(
                f"--listen {listen} can be reached from other machines, and without TLS its "
                "token and answers travel in clear: give --tls-cert and --tls-key, or "
                "--insecure-listen when a proxy in front of it does TLS"
            )
        if token is None:
            raise UserError(
                f"--listen {listen} can be reached from other machines: give --token-file "
                "FILE (a random token, chmod 600) so that only its holders read the API"
            )
    secret = (
        read_token(Path(webhook_secret_file).expanduser(), "the webhook secret file")
        if webhook_secret_file
        else None
    )
    return Listen(address, token, cert, key, secret)


def read_token(path: Path, what: str = "the token file") -> str:
    """The bearer token (or a webhook secret) in ``path``: a regular file only its owner can
    read, one line."""
    _private(path, what)
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise UserError(f"cannot read {what} {path} ({reason})") from None
    if any(c.isspace() for c in token) or not (token.isascii() and token.isprintable()):
        raise UserError(f"{what} {path} must hold the token alone, on one line")
    if len(token) < MIN_TOKEN:
        raise UserError(
            f"the token in {path} is shorter than {MIN_TOKEN} characters; write a random one "
            f"(e.g. `openssl rand -hex 32 > {path}`)"
        )
    return token


def _private(path: Path, what: str) -> None:
    """Refuse a file others could read or change (the mode check of every secret here)."""
    try:
        info = os.stat(path)
    except OSError as exc:
        raise UserError(f"cannot read {what} {path} ({exc.strerror}); fix its path") from None
    if not stat.S_ISREG(info.st_mode):
        raise UserError(f"{what} {path} is not a regular file")
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise UserError(
            f"{what} {path} can be read by others (mode {mode:o}); restrict it with "
            f"chmod 600 {path}"
        )
    if info.st_uid not in (0, os.geteuid()):
        raise UserError(f"{what} {path} belongs to uid {info.st_uid}; chown it to this user")
