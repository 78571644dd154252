"""services/client.py against no daemon, a stale socket and a tiny Unix-socket server."""

from __future__ import annotations

import json
import socket
import socketserver
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from npllm.errors import ClientError, DaemonNotRunning
from services.client import Client


def _not_running(path: Path) -> str:
    return (
        f"npllm is not running (nothing answers on {path}); start it with `npllm serve` or "
        "`make run`"
    )


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory short enough for a Unix socket path (108 bytes at most)."""
    with tempfile.TemporaryDirectory(dir="/tmp") as name:
        yield Path(name)


def test_no_socket_is_daemon_not_running_with_what_to_do(short_dir: Path) -> None:
    client = Client(short_dir / "npllm.sock")
    for call in (
        lambda: client.request("GET", "/v1/status"),
        lambda: client.request_text("GET", "/v1/replay/examples"),
        lambda: next(client.stream_chat({"messages": []})),
    ):
        with pytest.raises(DaemonNotRunning) as caught:
            call()
        assert str(caught.value) == _not_running(short_dir / "npllm.sock")
        assert isinstance(caught.value, ClientError)


def test_a_stale_socket_file_is_daemon_not_running(short_dir: Path) -> None:
    """A daemon killed with SIGKILL leaves its socket file: nothing listens on it."""
    path = short_dir / "npllm.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()
    assert path.exists()
    with pytest.raises(DaemonNotRunning, match="npllm is not running"):
        Client(path).request("GET", "/v1/status")


class _Refusing(BaseHTTPRequestHandler):
    """Answers like the daemon's error handler: an OpenAI-shaped error body."""

    def do_DELETE(self) -> None:  # noqa: N802 (http.server's naming)
        body = json.dumps({"error": {"message": "memory #9 does not exist", "param": "id"}})
        self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def do_POST(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        first = {"choices": [{"delta": {"content": "Hel"}}]}
        failed = {"error": {"message": "the engine ran out of memory"}}
        for event in (first, failed):
            self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())

    def address_string(self) -> str:  # a Unix socket has no client address
        return "unix"

    def log_message(self, format: str, *args: object) -> None:
        pass


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@pytest.fixture
def refusing(short_dir: Path) -> Iterator[Path]:
    path = short_dir / "npllm.sock"
    server = _UnixHTTPServer(str(path), _Refusing)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield path
    finally:
        server.shutdown()
        server.server_close()


def test_an_error_answer_is_a_client_error_with_the_daemons_message(refusing: Path) -> None:
    with pytest.raises(ClientError) as caught:
        Client(refusing, timeout=10).request("DELETE", "/v1/memories/9")
    assert not isinstance(caught.value, DaemonNotRunning)
    assert str(caught.value) == "the daemon refused (404): memory #9 does not exist"


def test_an_error_mid_stream_is_a_client_error_after_the_first_tokens(refusing: Path) -> None:
    events = Client(refusing, timeout=10).stream_chat({"messages": [], "stream": True})
    assert next(events)["choices"][0]["delta"]["content"] == "Hel"
    with pytest.raises(ClientError, match="^the daemon failed mid-answer: the engine ran out"):
        next(events)
