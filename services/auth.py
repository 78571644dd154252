"""The TCP listener's key: one random secret in a 0600 file in the data dir.

The Unix socket needs no key (its 0600 permissions inside a 0700 directory are the guard);
every request over TCP must carry this key (services/api/guard.py). The file is made on
first use (`npllm serve` with server.tcp_port set, or `npllm key`); `npllm key --rotate`
replaces it and a running daemon takes the new key at its next request (it watches the
file), so the old one stops working at once.
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

from npllm.artifacts import write_file_atomically
from npllm.config import Settings
from npllm.errors import ConfigError

KEY_FILE = "api-key"
PREFIX = "npllm-"


def tcp_address(settings: Settings) -> str:
    """host:port of the TCP listener as a URL has it ([::1]:8080)."""
    host, port = settings.server.tcp_host, settings.server.tcp_port
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def key_path(settings: Settings) -> Path:
    return settings.data_path / KEY_FILE


def _new_key() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def _write(path: Path, key: str) -> None:
    """Write `key` to `path` as a 0600 file that is never readable by others, not even
    for a moment: made 0600 (O_EXCL | O_NOFOLLOW: never through a file or link someone
    placed there) under a temporary name, then renamed over the old one."""
    write_file_atomically(path, key + "\n", mode=0o600)


def read_key(path: Path) -> str:
    """The key in `path`; ConfigError when the file is readable by others or malformed."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise ConfigError(
            f"cannot read the API key file {path}: {exc.strerror}; it must be a plain file "
            "(not a link); `npllm key --rotate` writes a new one"
        ) from exc
    try:
        st = os.fstat(fd)
        data = os.read(fd, 4096)
    finally:
        os.close(fd)
    mode = st.st_mode & 0o777
    if mode & 0o077:
        raise ConfigError(
            f"{path} is readable by other users (mode {mode:o}); run `chmod 600 {path}` or "
            "`npllm key --rotate` (the key may have been seen: rotating is safer)"
        )
    if st.st_uid != os.geteuid():
        raise ConfigError(
            f"{path} belongs to another user (uid {st.st_uid}); remove it and run "
            "`npllm key --rotate`"
        )
    key = data.decode("utf-8", errors="replace").strip()
    if len(key) < 16 or any(c.isspace() for c in key):
        raise ConfigError(
            f"{path} does not hold a key (16+ characters, no spaces); "
            "`npllm key --rotate` writes a new one"
        )
    return key


def load_or_create(settings: Settings) -> str:
    """The key, made on first use."""
    path = key_path(settings)
    if not path.exists():
        _write(path, _new_key())
    return read_key(path)


def rotate(settings: Settings) -> str:
    """Replace the key with a new one; the old one stops working at once."""
    key = _new_key()
    _write(key_path(settings), key)
    return key


def matches(given: str, key: str) -> bool:
    """Constant-time comparison (no timing leak of how much of the key was right)."""
    return hmac.compare_digest(given.encode(), key.encode())


class KeyFile:
    """The key a running daemon checks, re-read when the file changes (`npllm key --rotate`)."""

    def __init__(self, settings: Settings) -> None:
        self.path = key_path(settings)
        self.key = load_or_create(settings)
        self._stamp = self._stat()

    def _stat(self) -> tuple[int, ...] | None:
        """What changes when the file is replaced, edited or chmod-ed (mode, ctime)."""
        try:
            st = self.path.lstat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_mode, st.st_uid)

    def current(self) -> str | None:
        """The key now; None when the file is gone or unreadable (then nothing passes)."""
        stamp = self._stat()
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                self.key = read_key(self.path)
            except (OSError, ConfigError):
                self.key = ""
        return self.key or None
