"""Talking to the running daemon over its Unix socket (used by the CLI)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from npllm.errors import ClientError, DaemonNotRunning


class Client:
    """A small HTTP client for npllm's socket API.

    Raises DaemonNotRunning when nothing answers on the socket (callers that can work on
    the database directly catch it), ClientError with the daemon's message when it refuses."""

    def __init__(self, socket_path: Path, timeout: float = 600.0) -> None:
        self.socket_path = socket_path
        self._http = httpx.Client(
            transport=httpx.HTTPTransport(uds=str(socket_path)),
            base_url="http://npllm",
            timeout=timeout,
        )

    def _not_running(self) -> DaemonNotRunning:
        return DaemonNotRunning(
            f"npllm is not running (nothing answers on {self.socket_path}); start it with "
            "`npllm serve` or `make run`"
        )

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except (httpx.ConnectError, FileNotFoundError) as exc:
            raise self._not_running() from exc
        return _checked(response).json()

    def request_text(self, method: str, path: str, **kwargs: Any) -> str:
        """Like request, for endpoints that answer with text (JSONL exports)."""
        try:
            response = self._http.request(method, path, **kwargs)
        except (httpx.ConnectError, FileNotFoundError) as exc:
            raise self._not_running() from exc
        return _checked(response).text

    def cancel(self, completion_id: str) -> bool:
        """Ask the daemon to stop answer `completion_id` at its next token (its stream then
        ends with finish_reason "cancelled"); False when it had already finished."""
        try:
            response = self._http.post(f"/v1/chat/completions/{completion_id}/cancel")
        except (httpx.ConnectError, FileNotFoundError) as exc:
            raise self._not_running() from exc
        if response.status_code == 404:
            return False
        _checked(response)
        return True

    def stream_chat(self, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Yield the parsed server-sent events of a streaming chat completion."""
        try:
            with self._http.stream("POST", "/v1/chat/completions", json=body) as response:
                if response.status_code >= 400:
                    response.read()
                    _checked(response)
                for line in response.iter_lines():
                    if not line.startswith("data: "):
                        continue
                    data = line.removeprefix("data: ")
                    if data == "[DONE]":
                        return
                    event = json.loads(data)
                    if "error" in event:
                        message = event["error"]["message"]
                        raise ClientError(f"the daemon failed mid-answer: {message}")
                    yield event
        except (httpx.ConnectError, FileNotFoundError) as exc:
            raise self._not_running() from exc


def _checked(response: httpx.Response) -> httpx.Response:
    if response.status_code < 400:
        return response
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text[:200]
    raise ClientError(f"the daemon refused ({response.status_code}): {message}")
