"""The TCP listener's key file, its settings and the guard's parsing (no daemon)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from npllm.config import ServerConfig, is_loopback
from npllm.errors import ConfigError
from services.api.guard import LoginTokens, TcpGuard, host_name
from services.auth import KeyFile, key_path, load_or_create, matches, read_key, rotate

from ..conftest import make_settings


def test_the_key_is_made_once_0600_and_rotates(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    key = load_or_create(settings)
    assert key.startswith("npllm-") and len(key) > 40
    assert load_or_create(settings) == key
    assert key_path(settings).stat().st_mode & 0o777 == 0o600
    watched = KeyFile(settings)
    new = rotate(settings)
    assert new != key and watched.current() == new
    assert matches(new, new) and not matches(key, new)


def test_a_key_file_others_can_read_is_refused(tmp_path: Path) -> None:
    path = key_path(make_settings(tmp_path))
    load_or_create(make_settings(tmp_path))
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by other users.*chmod 600"):
        read_key(path)


def test_a_file_without_a_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "api-key"
    path.write_text("short\n")
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="does not hold a key.*npllm key --rotate"):
        read_key(path)


def test_a_deleted_key_file_lets_nothing_pass(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    watched = KeyFile(settings)
    key_path(settings).unlink()
    assert watched.current() is None


def test_tcp_host_must_be_loopback_unless_remote_is_allowed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="reachable from other machines.*allow_remote"):
        make_settings(tmp_path, NPLLM_SERVER__TCP_HOST="0.0.0.0")
    with pytest.raises(ConfigError, match="must be an IP address"):
        make_settings(tmp_path, NPLLM_SERVER__TCP_HOST="my laptop")
    remote = make_settings(
        tmp_path, NPLLM_SERVER__TCP_HOST="0.0.0.0", NPLLM_SERVER__ALLOW_REMOTE="true"
    )
    assert remote.server.tcp_host == "0.0.0.0"
    assert make_settings(tmp_path, NPLLM_SERVER__TCP_HOST="[::1]").server.tcp_host == "::1"
    with pytest.raises(ValidationError, match="not a host name"):
        ServerConfig(allowed_hosts=["http://box:8080"])
    assert ServerConfig(allowed_hosts=["devbox.lan"]).allowed_hosts == ["devbox.lan"]


def test_host_headers_and_loopback() -> None:
    assert host_name("127.0.0.1:8080") == "127.0.0.1"
    assert host_name("[::1]:8080") == "::1"
    assert host_name("Localhost.") == "localhost"
    assert host_name("evil.example:80") == "evil.example"
    assert is_loopback("127.0.0.2") and is_loopback("[::1]") and not is_loopback("evil.example")


def test_a_login_token_works_once_and_a_session_only_under_its_key() -> None:
    logins = LoginTokens()
    token, ttl = logins.issue()
    assert ttl > 0
    assert logins.redeem(token) and not logins.redeem(token)
    assert not logins.redeem("made-up")
    session = logins.open_session("npllm-key-one-0123456789")
    assert logins.session_valid(session, "npllm-key-one-0123456789")
    assert not logins.session_valid(session, "npllm-key-two-0123456789")  # rotated
    assert not logins.session_valid("npllm-key-one-0123456789", "npllm-key-one-0123456789")


def test_a_key_file_made_readable_is_noticed_by_the_running_daemon(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    watched = KeyFile(settings)
    assert watched.current() is not None
    key_path(settings).chmod(0o644)  # mtime and inode unchanged
    assert watched.current() is None


def test_a_key_file_that_is_a_link_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "elsewhere"
    real.write_text("npllm-" + "x" * 40)
    real.chmod(0o600)
    link = tmp_path / "api-key"
    link.symlink_to(real)
    with pytest.raises(ConfigError, match="must be a plain file"):
        read_key(link)


def _call(guard: Any, scope: dict[str, Any]) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(guard(scope, receive, send))
    return sent


def test_the_guard_covers_websockets_and_spares_the_unix_socket(tmp_path: Path) -> None:
    reached: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        reached.append(scope["type"])

    guard = TcpGuard(app, KeyFile(make_settings(tmp_path)), (), LoginTokens())
    tcp = {"server": ("127.0.0.1", 11435), "headers": [(b"host", b"127.0.0.1:11435")]}
    closed = _call(guard, {"type": "websocket", "path": "/ws", **tcp})
    assert closed == [{"type": "websocket.close", "code": 1008}] and not reached
    refused = _call(guard, {"type": "http", "method": "GET", "path": "/v1/status", **tcp})
    assert refused[0]["status"] == 401 and not reached
    unix = {"type": "http", "method": "GET", "path": "/v1/status", "headers": []}
    assert _call(guard, {**unix, "server": ("/run/npllm.sock", None)}) == []
    assert reached == ["http"]
    # Fails closed: a request without the Unix socket's server address is guarded.
    assert _call(guard, {**unix, "server": None})[0]["status"] == 400  # no Host


def test_allowed_hosts_extend_the_loopback_names(tmp_path: Path) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    settings = make_settings(tmp_path)
    key = load_or_create(settings)
    guard = TcpGuard(app, KeyFile(settings), ("devbox.lan",), LoginTokens())

    def status(host: bytes, origin: bytes | None = None) -> int:
        headers = [(b"host", host), (b"authorization", f"Bearer {key}".encode())]
        if origin is not None:
            headers.append((b"origin", origin))
        scope = {
            "type": "http",
            "method": "POST",
            "path": "/v1/memories",
            "server": ("0.0.0.0", 11435),
            "headers": headers,
        }
        return int(_call(guard, scope)[0]["status"])

    assert status(b"devbox.lan:11435") == 204
    assert status(b"devbox.lan:11435", b"http://devbox.lan:3000") == 204  # a proxy's port
    assert status(b"otherbox.lan:11435") == 403
    assert status(b"devbox.lan:11435", b"https://evil.example") == 403
    # A loopback page must come from this listener's own port: another port is another site.
    assert status(b"127.0.0.1:11435", b"http://127.0.0.1:11435") == 204
    assert status(b"127.0.0.1:11435", b"http://localhost:8000") == 403
    assert status(b"127.0.0.1:11435", b"file://") == 403
