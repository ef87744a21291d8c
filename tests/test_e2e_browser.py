"""The demo page in a real browser: headless Chromium (Debian's), driven by Playwright.

Playwright comes from PyPI; the browser is the system's ``/usr/bin/chromium``
(``apt install chromium``), never one Playwright downloads. Without it these
tests skip with a loud reason (and fail under CI, which installs it).

``TRIO_WSMGR_SCREENSHOT=docs/_static/demo.png pytest -m browser`` also saves the
screenshot used in the README and the docs.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from conftest import require
from test_demo import DemoProcess, demo_process

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 10_000


@contextmanager
def browser(profile: Path) -> Iterator[Any]:
    """A fresh Chromium profile (``--user-data-dir``) under Playwright's sync API."""
    require(os.path.exists(CHROMIUM), "no Chromium at /usr/bin/chromium: apt install chromium")
    try:
        from playwright import sync_api
    except ImportError:
        sync_api = None
    require(sync_api is not None, "playwright is not installed (it is in the tests group)")
    assert sync_api is not None
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            headless=True,
            args=ARGS,
            viewport={"width": 1180, "height": 720},
            color_scheme="light",
        )
        context.set_default_timeout(TIMEOUT_MS)
        try:
            yield context
        finally:
            context.close()


@contextmanager
def page_of(context: Any, demo: DemoProcess, name: str) -> Iterator[Any]:
    """A page whose console errors and uncaught exceptions fail the test."""
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda msg: msg.type == "error" and problems.append(msg.text))
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.goto(f"{demo.url}?name={name}")
    yield page
    assert problems == [], f"{name}'s page logged errors: {problems}"


def join_room(page: Any, room: str) -> None:
    """Join ``room`` the way a user does: type it in the room box, press Join."""
    from playwright.sync_api import expect

    expect(page.locator("body")).to_have_attribute("data-state", "open")
    page.fill("#room-input", room)
    page.click("#room-form button")
    expect(page.locator("#room-heading")).to_have_text(f"#{room}")


def test_two_pages_chat_in_a_room_and_the_roster_follows(tmp_path: Path) -> None:
    from playwright.sync_api import expect

    with (
        demo_process() as demo,
        browser(tmp_path / "profile") as context,
        page_of(context, demo, "alice") as alice,
        page_of(context, demo, "bob") as bob,
    ):
        for page in (alice, bob):
            join_room(page, "e2e")
        for page in (alice, bob):
            for name in ("alice", "bob"):
                expect(page.locator(f"#users li[data-user='{name}']")).to_be_visible()

        alice.fill("#message-input", "hello from alice")
        alice.press("#message-input", "Enter")
        said = bob.locator("#messages .message").last
        expect(said.locator(".text")).to_have_text("hello from alice")
        expect(said.locator("strong")).to_have_text("alice")
        bob.fill("#message-input", "hi alice, bob here")
        bob.click("#send")
        expect(alice.locator("#messages .message").last).to_contain_text("hi alice, bob here")
        expect(bob.locator("#stat-room")).to_have_text("2")
        expect(bob.locator("#stat-rtt")).to_contain_text(" ms")  # a heartbeat went round
        screenshot = os.environ.get("TRIO_WSMGR_SCREENSHOT")
        bob.screenshot(path=screenshot or str(tmp_path / "demo.png"))

        alice.close()
        expect(bob.locator("#users li[data-user='alice']")).to_have_count(0)
        expect(bob.locator("#users li[data-user='bob']")).to_be_visible()
        expect(bob.locator("#stat-room")).to_have_text("1")
        status, stderr = demo.interrupt()
    assert status == 0
    assert "Traceback" not in stderr


def test_chromium_negotiates_permessage_deflate_with_the_demo(tmp_path: Path) -> None:
    from playwright.sync_api import expect

    with demo_process() as demo, browser(tmp_path / "profile") as context:
        page = context.new_page()
        handshakes: list[dict[str, Any]] = []
        cdp = context.new_cdp_session(page)
        cdp.send("Network.enable")
        cdp.on("Network.webSocketHandshakeResponseReceived", lambda event: handshakes.append(event))
        page.goto(demo.url + "?name=zip")
        expect(page.locator("#stat-compression")).to_have_text("on")  # the server's view
        (handshake,) = handshakes  # the browser's view: the 101 response it got
        response = handshake["response"]
        headers = {key.lower(): value for key, value in response["headers"].items()}
        assert response["status"] == 101
        assert headers["sec-websocket-extensions"].startswith("permessage-deflate")


def test_the_page_sees_1001_going_away_when_the_demo_is_stopped(tmp_path: Path) -> None:
    from playwright.sync_api import expect

    with browser(tmp_path / "profile") as context, demo_process() as demo:
        page = context.new_page()
        page.goto(demo.url + "?name=phoenix")
        expect(page.locator("body")).to_have_attribute("data-state", "open")
        status, _ = demo.interrupt()
        expect(page.locator("body")).to_have_attribute("data-state", "closed")
        expect(page.locator("#status")).to_contain_text("server going away")  # code 1001
    assert status == 0
