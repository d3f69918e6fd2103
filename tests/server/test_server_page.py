"""The chat page at `/` in a real headless Chromium: one message, streamed into the page, and a
screenshot of it (slow: it starts a browser). Needs playwright and a Chromium binary (Debian's
`chromium` package, or playwright's own); skipped without them."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def test_page_streams_one_chat(start_server: Callable[..., Any], tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    executable = chromium()
    server = start_server()
    server.wait_ready(60)
    shot = Path(os.environ.get("EDGE_SCREENSHOT", tmp_path / "chat.png"))
    with sync_api.sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        except Exception as exc:  # no browser binary here
            pytest.skip(f"no Chromium to run: {exc!s:.200}")
        page = browser.new_page(viewport={"width": 800, "height": 600})
        page.goto(server.url + "/")
        page.wait_for_function("document.querySelector('#model').options.length > 0")
        page.fill("#input", "Hello, world! How are you today?")
        page.press("#input", "Enter")
        page.wait_for_function(
            "document.querySelector('#stats').textContent.includes('generated')", timeout=30_000
        )
        reply = page.inner_text(".msg.assistant")
        stats = page.inner_text("#stats")
        page.screenshot(path=str(shot))
        browser.close()
    assert reply.strip(), "the reply did not stream into the page"
    assert "prompt tokens" in stats
    assert shot.stat().st_size > 1000
