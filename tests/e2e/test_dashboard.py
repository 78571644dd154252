"""The dashboard in a real browser (the system's chromium through Playwright), against the
shared live daemon over its TCP listener: reached through a one-time link, refused without
it, drawn with the daemon's own figures, and nothing fetched from another host.

The same page on a daemon that has slept two nights (the night report, the R matrix) is
checked in tests/e2e/test_sleep_cycle.py, on the daemon that slept them."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..conftest import NPLLM, REPO, LiveDaemon, ask_ok, cli_env
from .conftest import screenshot, visit


@pytest.fixture
def tcp(daemon: LiveDaemon) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://127.0.0.1:{daemon.tcp_port}", timeout=120) as client:
        yield client


def _link(daemon: LiveDaemon) -> str:
    with daemon.http() as http:
        reply = http.post("/v1/auth/login", json={"path": "/dashboard"})
    assert reply.status_code == 200, reply.text
    url: str = reply.json()["url"]
    assert url.startswith(f"http://127.0.0.1:{daemon.tcp_port}/dashboard?token=")
    return url


def test_the_login_link_opens_the_dashboard_drawn_from_this_daemon_alone(
    daemon: LiveDaemon, browser: Any, tmp_path: Path
) -> None:
    with daemon.http() as http:
        for rating in (1.0, -1.0):
            answer = ask_ok(http, "What does a dashboard show?", max_tokens=8)
            iid = answer["npllm"]["interaction_id"]
            assert http.post("/v1/feedback", json={"interaction_id": iid, "rating": rating})
        figures = http.get("/v1/dashboard").json()
    assert figures["satisfaction"]["overall"], figures["satisfaction"]
    seen = visit(browser, _link(daemon))
    page = seen.page
    assert page.url == f"http://127.0.0.1:{daemon.tcp_port}/dashboard"  # the token is gone
    policy = seen.response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy
    page.wait_for_selector("#satisfaction circle.point")
    assert page.locator("#satisfaction circle.point").count() >= 1
    assert page.locator("#replay rect.bar").count() >= 1
    assert page.locator("#routing rect.bar").count() >= 1
    assert page.locator("#state").inner_text() in ("awake", "asleep", "waking")
    screenshot(page, tmp_path / "dashboard.png")
    page.wait_for_load_state("networkidle")
    assert f"http://127.0.0.1:{daemon.tcp_port}/v1/dashboard" in seen.requests
    assert seen.foreign(daemon.tcp_port) == []
    assert seen.errors == []
    page.context.close()


def test_without_the_link_or_its_cookie_the_dashboard_is_refused(
    daemon: LiveDaemon, browser: Any, tcp: httpx.Client
) -> None:
    for path in ("/dashboard", "/dashboard/dashboard.js", "/v1/dashboard"):
        refused = tcp.get(path)
        assert refused.status_code == 401, path
        assert "npllm key" in refused.json()["error"]["message"]
    seen = visit(browser, f"http://127.0.0.1:{daemon.tcp_port}/dashboard")
    assert seen.response.status == 401
    assert seen.page.locator("#satisfaction").count() == 0
    seen.page.context.close()
    # A link works once.
    url = _link(daemon)
    assert tcp.get(url, follow_redirects=False).status_code == 303
    tcp.cookies.clear()
    assert tcp.get(url, follow_redirects=False).status_code == 401


@pytest.mark.parametrize(
    "path",
    ["//evil.example/", "https://evil.example/", "dashboard", "/dash board", "/\\evil", 5, ""],
)
def test_a_login_link_opens_only_a_page_of_this_server(daemon: LiveDaemon, path: Any) -> None:
    with daemon.http() as http:
        refused = http.post("/v1/auth/login", json={"path": path})
    assert refused.status_code == 400, refused.text
    message = refused.json()["error"]["message"]
    assert "path" in message, message


def test_the_figures_refuse_a_period_they_cannot_show(daemon: LiveDaemon) -> None:
    with daemon.http() as http:
        for days in ("0", "367", "week"):
            refused = http.get("/v1/dashboard", params={"days": days})
            assert refused.status_code == 400, days
            assert "days" in refused.json()["error"]["message"]
        assert http.get("/v1/dashboard", params={"days": 1}).status_code == 200
        # The page's files and nothing else.
        assert http.get("/dashboard/dashboard.css").status_code == 200
        assert http.get("/dashboard/index.html").status_code == 404


def test_npllm_dashboard_prints_a_link_that_opens_the_dashboard_once(
    daemon: LiveDaemon, tcp: httpx.Client
) -> None:
    done = subprocess.run(
        [*NPLLM, "dashboard"], env=cli_env(daemon.data_dir), cwd=REPO, capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    url = done.stdout.strip()
    assert url.startswith(f"http://127.0.0.1:{daemon.tcp_port}/dashboard?token=")
    assert "works once" in done.stderr
    opened = tcp.get(url, follow_redirects=False)
    assert opened.status_code == 303 and opened.headers["location"] == "/dashboard"
    page = tcp.get("/dashboard")
    assert page.status_code == 200 and 'src="/dashboard/dashboard.js"' in page.text
