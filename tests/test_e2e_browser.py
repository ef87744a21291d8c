"""The demo page in a real browser: headless Chromium (Debian's), driven by Playwright.

Playwright comes from PyPI; the browser is the system's ``/usr/bin/chromium``
(``apt install chromium``), never one Playwright downloads. Without it these
tests skip with a loud reason (and fail under CI, which installs it).

``TRIO_WSMGR_SCREENSHOT=docs/_static/demo.png pytest -m browser`` also saves the
screenshot used in the README and the docs.
"""

from __future__ import annotations

import base64
import hashlib
import os
import queue
import shutil
import ssl
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme

from conftest import require
from test_demo import DemoProcess, demo_process
from trio_wsmgr import CloseCode
from trio_wsmgr._demo import run_demo

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
def browser(profile: Path, extra_args: Sequence[str] = ()) -> Iterator[Any]:
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
            args=[*ARGS, *extra_args],
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
    with page_at(context, demo.url, name) as page:
        yield page


@contextmanager
def page_at(context: Any, url: str, name: str) -> Iterator[Any]:
    """The demo page at ``url`` as ``name``; console errors and uncaught exceptions fail."""
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda msg: msg.type == "error" and problems.append(msg.text))
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.goto(f"{url}?name={name}")
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


@contextmanager
def tls_demo(context: ssl.SSLContext) -> Iterator[str]:
    """The demo in-process (its own trio loop, in a thread) over HTTPS; yields its URL."""
    ready: queue.Queue[tuple[str, trio.lowlevel.TrioToken, trio.Event]] = queue.Queue()

    async def main() -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        async with trio.open_nursery() as nursery:
            demo = await nursery.start(partial(run_demo, listeners, ssl_context=context))
            stop = trio.Event()
            url = f"https://127.0.0.1:{demo.server.port}/"
            ready.put((url, trio.lowlevel.current_trio_token(), stop))
            await stop.wait()
            await demo.close()

    thread = threading.Thread(target=trio.run, args=(main,))
    thread.start()
    url, token, stop = ready.get(timeout=10)
    try:
        yield url
    finally:
        trio.from_thread.run_sync(stop.set, trio_token=token)
        thread.join(timeout=10)


def spki_hash(pem: bytes) -> str:
    """What Chromium's --ignore-certificate-errors-spki-list takes: base64(SHA-256(SPKI))."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    key = x509.load_pem_x509_certificate(pem).public_key()
    spki = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def test_chromium_chats_over_wss_trusting_the_test_certificate(tmp_path: Path) -> None:
    from playwright.sync_api import expect

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    trusted = f"--ignore-certificate-errors-spki-list={spki_hash(cert.cert_chain_pems[0].bytes())}"
    with (
        tls_demo(context) as url,
        browser(tmp_path / "profile", extra_args=[trusted]) as chromium,
    ):
        sockets: list[str] = []
        page = chromium.new_page()
        page.on("websocket", lambda ws: sockets.append(ws.url))
        page.goto(url + "?name=secure")
        expect(page.locator("body")).to_have_attribute("data-state", "open")
        join_room(page, "tls")
        page.fill("#message-input", "over TLS")
        page.press("#message-input", "Enter")
        expect(page.locator("#messages .message").last).to_contain_text("over TLS")
        assert [u.split("?")[0] for u in sockets] == [url.replace("https", "wss") + "ws"]
        assert page.evaluate("location.protocol") == "https:"


def test_chromium_refuses_the_test_certificate_without_the_trust_flag(tmp_path: Path) -> None:
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    with tls_demo(context) as url, browser(tmp_path / "profile") as chromium:
        page = chromium.new_page()
        with pytest.raises(Exception, match="ERR_CERT_AUTHORITY_INVALID"):
            page.goto(url)


@contextmanager
def demo_in_thread() -> Iterator[tuple[str, Callable[[str], None], Callable[[], None]]]:
    """The demo served by a thread of this process: its URL, ``cut(user)``, ``lose()``.

    ``cut`` drops every WebSocket of ``user`` on the server side (close 1012 and
    TCP gone at once), as a restarting proxy would; ``lose`` drops every room's
    history, as a Redis restarted without persistence would.
    """
    ready: queue.Queue[Any] = queue.Queue()

    async def serve() -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        async with trio.open_nursery() as nursery:
            demo = await nursery.start(partial(run_demo, listeners))
            stop = trio.Event()
            ready.put((demo, trio.lowlevel.current_trio_token(), stop))
            await stop.wait()
            await demo.close()

    def main() -> None:
        try:
            trio.run(serve)
        except BaseException as exc:  # reported to the test instead of a thread traceback
            ready.put(exc)

    thread = threading.Thread(target=main, name="demo", daemon=True)
    thread.start()
    started = ready.get(timeout=TIMEOUT_MS / 1000)
    if isinstance(started, BaseException):
        raise started
    demo, token, stop = started

    def cut(user: str) -> None:
        async def abort() -> int:
            sockets = demo.manager.get_user_sockets(user)
            for sock in sockets:
                await sock.abort(CloseCode.SERVICE_RESTART, "cut by the test")
            return len(sockets)

        assert trio.from_thread.run(abort, trio_token=token) == 1

    def lose() -> None:
        trio.from_thread.run_sync(demo.broadcaster.backend.hub.forget_history, trio_token=token)

    try:
        yield demo.url, cut, lose
    finally:
        trio.from_thread.run_sync(stop.set, trio_token=token)
        thread.join(TIMEOUT_MS / 1000)


def test_a_page_cut_off_comes_back_and_shows_what_it_missed_exactly_once(tmp_path: Path) -> None:
    from playwright.sync_api import expect

    with (
        demo_in_thread() as (url, cut, _),
        browser(tmp_path / "profile") as context,
        page_at(context, url, "alice") as alice,
        page_at(context, url, "bob") as bob,
    ):
        for page in (alice, bob):
            join_room(page, "resume")
        expect(alice.locator("#users li[data-user='bob']")).to_be_visible()
        alice.fill("#message-input", "before the cut")
        alice.press("#message-input", "Enter")
        texts = bob.locator("#messages .message .text")
        expect(texts).to_have_text(["before the cut"])

        bob.evaluate("window.__wsmgrHoldReconnect = true")  # bob stays away until released
        cut("bob")
        expect(bob.locator("body")).to_have_attribute("data-state", "closed")
        missed = [f"missed {n}" for n in range(1, 6)]
        for text in missed:
            alice.fill("#message-input", text)
            alice.press("#message-input", "Enter")
            expect(alice.locator("#messages .message .text").last).to_have_text(text)
        assert bob.locator("body").get_attribute("data-state") == "closed"  # truly away

        bob.evaluate("window.__wsmgrReleaseReconnect()")
        expect(bob.locator("body")).to_have_attribute("data-state", "open")
        expect(texts).to_have_text(["before the cut", *missed])  # in order, each once
        expect(bob.locator("#messages .gap")).to_have_count(0)
        alice.fill("#message-input", "after")
        alice.press("#message-input", "Enter")
        expect(texts).to_have_text(["before the cut", *missed, "after"])


def test_a_page_whose_missed_messages_are_lost_shows_the_gap(tmp_path: Path) -> None:
    from playwright.sync_api import expect

    with (
        demo_in_thread() as (url, cut, lose),
        browser(tmp_path / "profile") as context,
        page_at(context, url, "alice") as alice,
        page_at(context, url, "bob") as bob,
    ):
        for page in (alice, bob):
            join_room(page, "lossy")
        expect(alice.locator("#users li[data-user='bob']")).to_be_visible()
        alice.fill("#message-input", "before the cut")
        alice.press("#message-input", "Enter")
        texts = bob.locator("#messages .message .text")
        expect(texts).to_have_text(["before the cut"])
        bob.evaluate("window.__wsmgrHoldReconnect = true")  # bob stays away until released
        cut("bob")
        expect(bob.locator("body")).to_have_attribute("data-state", "closed")
        lose()  # the history bob would resume from is gone
        alice.fill("#message-input", "lost for bob")
        alice.press("#message-input", "Enter")
        expect(alice.locator("#messages .message .text").last).to_have_text("lost for bob")
        assert bob.locator("body").get_attribute("data-state") == "closed"  # truly away
        bob.evaluate("window.__wsmgrReleaseReconnect()")
        expect(bob.locator("body")).to_have_attribute("data-state", "open")
        expect(bob.locator("#messages .gap")).to_have_count(1)  # said, not hidden
        alice.fill("#message-input", "later")
        alice.press("#message-input", "Enter")
        expect(texts).to_have_text(["before the cut", "later"])
