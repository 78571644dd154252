"""Fixtures of the live-daemon tests: the system's chromium, driven by Playwright."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless chromium from the system (Debian's `chromium`), never a downloaded build;
    skipped, saying why, where it is not installed."""
    path = shutil.which("chromium")
    if path is None:
        pytest.skip(
            "no chromium on this machine: `make setup` installs Debian's chromium when run "
            "as root with apt-get; the dashboard's browser test needs it"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed: pip install -e '.[dev]' (`make setup`)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=path, headless=True)
        yield chromium
        chromium.close()


@dataclass
class Visit:
    """A page opened in a fresh browser context: every request it made, its console errors."""

    page: Any
    response: Any = None  # the first navigation's
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def foreign(self, port: int) -> list[str]:
        """Requests to anything but this daemon's listener (127.0.0.1:port)."""
        return [u for u in self.requests if urlsplit(u).netloc != f"127.0.0.1:{port}"]


def visit(browser: Any, url: str) -> Visit:
    """Open `url` in a new context (no cookie) and record what the page does."""
    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    seen = Visit(page)
    page.on("request", lambda r: seen.requests.append(r.url))
    page.on("console", lambda m: seen.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: seen.errors.append(str(e)))
    seen.response = page.goto(url)
    return seen


def screenshot(page: Any, path: Path) -> Path:
    """The whole page as a PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    return path
