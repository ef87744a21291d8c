"""Admission's decisions, synchronously and without an event loop.

What a handshake is refused for (and counted under) before any byte is
answered: the limits, counting handshakes still in progress, the origin, the
per-user limit, the subprotocol choice. The end-to-end refusals over real
sockets are in test_manager.py and test_hostile.py; these pin each decision.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from trio_wsmgr import RequestRejected, WebSocketManager
from trio_wsmgr.server._admission import Admission, Refusal, authenticator_refusal
from trio_wsmgr.server._auth import HandshakeRequest
from trio_wsmgr.server._context import Counters, SocketContext
from trio_wsmgr.server._registry import Registry
from trio_wsmgr.server._socket import ManagedSocket

KEY = ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
VERSION = ("sec-websocket-version", "13")


class _Shutdown:
    """The manager's side of ``shutdown``: None while serving, the close code once closing."""

    def __init__(self) -> None:
        self.code: tuple[int, str] | None = None

    def __call__(self) -> tuple[int, str] | None:
        return self.code


def _admission(
    **options: Any,
) -> tuple[Admission, Registry[ManagedSocket], _Shutdown]:
    registry: Registry[ManagedSocket] = Registry()
    counters = Counters()
    shutdown = _Shutdown()
    settings: dict[str, Any] = {
        "connection_timeout": 10.0,
        "max_connections": math.inf,
        "max_connections_per_user": math.inf,
        "max_connections_per_address": math.inf,
        "allowed_origins": None,
        "protocols": (),
        "authentication": None,
        "compression": None,
        "max_message_size": 1 << 20,
        "receive_buffer_size": 16 * 1024,
    }
    settings.update(options)
    context = SocketContext(
        counters=counters,
        unregister=registry.remove,
        send_buffer_size=1024,
        slow_consumer_timeout=1.0,
        close_timeout=1.0,
        max_messages_per_second=math.inf,
    )
    admission = Admission(
        registry=registry, counters=counters, context=context, shutdown=shutdown, **settings
    )
    return admission, registry, shutdown


def _request(
    *extra: tuple[str, str], remote: tuple[str, int] | None = ("10.0.0.1", 5000)
) -> HandshakeRequest:
    return HandshakeRequest(
        path="/", headers=(KEY, VERSION, *extra), subprotocols=(), remote=remote
    )


def _verdict(refusal: Refusal | None) -> tuple[int, str] | None:
    """The status and the cause a refusal is counted under (None: admitted)."""
    return None if refusal is None else (refusal.status, refusal.cause)


def test_a_plain_handshake_passes_every_check() -> None:
    admission, _, _ = _admission()
    assert admission.check(_request(), "10.0.0.1") is None


def test_max_connections_counts_handshakes_still_in_progress() -> None:
    admission, registry, _ = _admission(max_connections=2)
    registry.reserve("10.0.0.1")
    assert admission.check(_request(), "10.0.0.9") is None
    registry.reserve("10.0.0.2")
    assert admission.check(_request(), "10.0.0.9") == Refusal(503, "full", "too many connections")
    registry.release("10.0.0.2")
    assert admission.check(_request(), "10.0.0.9") is None


def test_the_per_address_limit_refuses_that_address_only_with_429() -> None:
    admission, registry, _ = _admission(max_connections_per_address=1)
    registry.reserve("10.0.0.1")
    assert _verdict(admission.check(_request(), "10.0.0.1")) == (429, "per_address")
    assert admission.check(_request(remote=("10.0.0.2", 5000)), "10.0.0.2") is None
    assert admission.check(_request(remote=None), None) is None  # no address: nothing to count


def test_an_origin_outside_the_allow_list_is_refused_with_403() -> None:
    admission, _, _ = _admission(allowed_origins=("https://chat.example",))
    from_elsewhere = _request(("origin", "https://evil.example"))
    assert _verdict(admission.check(from_elsewhere, "10.0.0.1")) == (403, "origin")
    assert admission.check(_request(("origin", "https://chat.example")), "10.0.0.1") is None
    # Clients that are not browsers send no Origin: the allow-list is about browsers.
    assert admission.check(_request(), "10.0.0.1") is None


@pytest.mark.parametrize("header", [KEY, VERSION])
def test_a_repeated_handshake_header_is_a_bad_request(header: tuple[str, str]) -> None:
    admission, _, _ = _admission()
    refusal = admission.check(_request(header), "10.0.0.1")
    assert refusal == Refusal(400, "bad_request", f"duplicate {header[0]} header")


def test_a_closing_manager_refuses_with_503_before_any_other_check() -> None:
    admission, _, shutdown = _admission(max_connections=1)
    shutdown.code = (1001, "")
    bad_request = _request(KEY)  # its key repeated: refused with 400 otherwise
    assert _verdict(admission.check(bad_request, "10.0.0.1")) == (503, "closing")


def test_the_per_user_limit_counts_that_users_handshakes_in_progress() -> None:
    admission, registry, _ = _admission(max_connections_per_user=2)
    registry.reserve_user("alice")
    assert admission.check_user("alice") is None
    registry.reserve_user("alice")
    assert _verdict(admission.check_user("alice")) == (429, "per_user")
    assert admission.check_user("bob") is None
    registry.release_user("alice")
    assert admission.check_user("alice") is None


def test_the_subprotocol_is_the_servers_first_choice_that_was_offered() -> None:
    admission, _, _ = _admission(protocols=("chat.v2", "chat.v1"))
    assert admission.select_subprotocol(["chat.v1", "chat.v2"]) == "chat.v2"
    assert admission.select_subprotocol(["chat.v1"]) == "chat.v1"
    assert admission.select_subprotocol(["other"]) is None


def test_an_authenticator_raising_403_counts_as_forbidden_any_other_as_unauthenticated() -> None:
    assert authenticator_refusal(RequestRejected(403, "banned")) == Refusal(
        403, "forbidden", "banned"
    )
    assert authenticator_refusal(RequestRejected(401, "bad token")) == Refusal(
        401, "unauthenticated", "bad token"
    )


def test_refusals_are_counted_by_cause_in_a_read_only_snapshot() -> None:
    admission, _, _ = _admission()
    admission.count_rejection("origin")
    admission.count_rejection("origin")
    admission.count_rejection("full")
    snapshot = admission.rejections()
    assert dict(snapshot) == {"origin": 2, "full": 1}
    admission.count_rejection("full")
    assert snapshot["full"] == 1  # a snapshot, not a live view
    with pytest.raises(TypeError):
        snapshot["full"] = 0  # type: ignore[index]


async def test_the_managers_options_and_shutdown_reach_its_admission() -> None:
    manager = WebSocketManager(
        max_connections_per_address=1, allowed_origins=["https://chat.example"], protocols=["p"]
    )
    admission = manager._admission
    assert admission.select_subprotocol(["p"]) == "p"
    from_elsewhere = _request(("origin", "https://evil.example"))
    assert _verdict(admission.check(from_elsewhere, "10.0.0.1")) == (403, "origin")
    manager._registry.reserve("10.0.0.1")
    assert _verdict(admission.check(_request(), "10.0.0.1")) == (429, "per_address")
    manager._registry.release("10.0.0.1")
    await manager.close(1012, "restart")
    assert _verdict(admission.check(_request(), "10.0.0.1")) == (503, "closing")
    admission.count_rejection("closing")
    assert manager.statistics().rejected == {"closing": 1}
