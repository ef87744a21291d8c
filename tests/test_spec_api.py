"""Every class, option and method of the API reference exists, in snake_case.

The names below are the spec's (docs/reference/spec_mapping.rst has the table);
a rename or a missing option fails here, not in a user's code.
"""

from __future__ import annotations

import inspect
import re
import typing

import pytest

import trio_wsmgr
from trio_wsmgr import Broadcaster, WebSocketManager, WebSocketPool

SPEC = {
    WebSocketManager: {
        "options": [
            "maxConnections",
            "connectionTimeout",
            "heartbeatInterval",
            "heartbeatTimeout",
            "authentication",
            "compression",
            "protocols",
        ],
        "methods": ["accept", "getActiveConnections", "getUserSockets", "broadcast", "close"],
    },
    WebSocketPool: {
        "options": [
            "maxConnections",
            "minConnections",
            "acquireTimeout",
            "idleTimeout",
            "validateOnCheckout",
        ],
        "methods": ["acquire", "release", "getActiveCount", "getIdleCount", "getHealthStatus"],
    },
    Broadcaster: {
        "options": [],
        "methods": ["createChannel", "subscribe", "unsubscribe", "broadcast"],
    },
}

ASYNC = {"close", "broadcast", "subscribe", "unsubscribe", "release"}


def snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


@pytest.mark.parametrize("cls", list(SPEC), ids=lambda c: c.__name__)
def test_every_spec_option_is_a_keyword_of_the_constructor(cls: type) -> None:
    parameters = inspect.signature(cls).parameters
    for option in SPEC[cls]["options"]:
        name = snake(option)
        assert name in parameters, f"{cls.__name__} has no option {name} (spec: {option})"
        assert parameters[name].kind is inspect.Parameter.KEYWORD_ONLY


@pytest.mark.parametrize("cls", list(SPEC), ids=lambda c: c.__name__)
def test_every_spec_method_exists_with_its_snake_case_name(cls: type) -> None:
    for method in SPEC[cls]["methods"]:
        name = snake(method)
        function = getattr(cls, name, None)
        assert callable(function), f"{cls.__name__}.{name} is missing (spec: {method})"
        if name in ASYNC:
            assert inspect.iscoroutinefunction(function), f"{cls.__name__}.{name} must be async"


#: the spec's positional parameters of each method, in order, by their snake_case names
#: (``None``: the parameter has no default; else its default)
PARAMETERS: dict[tuple[type, str], list[tuple[str, object]]] = {
    (WebSocketManager, "accept"): [("request", None)],
    (WebSocketManager, "get_active_connections"): [],
    (WebSocketManager, "get_user_sockets"): [("user_id", None)],
    (WebSocketManager, "broadcast"): [("message", None), ("filter", "default None")],
    (WebSocketManager, "close"): [("code", 1001), ("reason", "")],
    (WebSocketPool, "acquire"): [],
    (WebSocketPool, "release"): [("conn", None)],
    (WebSocketPool, "get_active_count"): [],
    (WebSocketPool, "get_idle_count"): [],
    (WebSocketPool, "get_health_status"): [],
    (Broadcaster, "create_channel"): [("name", None)],
    (Broadcaster, "subscribe"): [("sock", None), ("channel", None)],
    (Broadcaster, "unsubscribe"): [("sock", None), ("channel", None)],
    (Broadcaster, "broadcast"): [("channel", None), ("message", None)],
}


@pytest.mark.parametrize(
    ("cls", "method"), list(PARAMETERS), ids=lambda v: getattr(v, "__name__", str(v))
)
def test_every_spec_method_takes_the_spec_parameters_in_order(cls: type, method: str) -> None:
    signature = inspect.signature(getattr(cls, method))
    positional = [
        p
        for p in list(signature.parameters.values())[1:]  # without self
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    expected = PARAMETERS[cls, method]
    assert [p.name for p in positional] == [name for name, _ in expected]
    for parameter, (name, default) in zip(positional, expected, strict=True):
        if default is None:
            assert parameter.default is inspect.Parameter.empty, f"{name} must be required"
        elif default == "default None":
            assert parameter.default is None, f"{name} must be optional"
        else:
            assert parameter.default == default, f"{name} defaults to {default!r}"
    extra = [
        p.name
        for p in signature.parameters.values()
        if p.kind is p.KEYWORD_ONLY and p.default is inspect.Parameter.empty
    ]
    assert extra == [], f"required keyword-only parameters the spec does not have: {extra}"


#: the type of a default-only sentinel (``UNSET``): users never write it
SENTINELS = {"_Unset"}


def _public(annotation: object) -> list[str]:
    """Names of trio_wsmgr classes in ``annotation`` that the package does not export."""
    found: list[str] = []
    if isinstance(annotation, type):
        module = annotation.__module__
        exported = annotation.__name__ in trio_wsmgr.__all__ or annotation.__name__ in SENTINELS
        if module.startswith("trio_wsmgr") and not exported:
            found.append(f"{module}.{annotation.__name__}")
    for argument in typing.get_args(annotation):
        found += _public(argument)
    return found


@pytest.mark.parametrize("cls", [*SPEC, trio_wsmgr.ManagedSocket], ids=lambda c: c.__name__)
def test_public_methods_are_annotated_with_exported_types_only(cls: type) -> None:
    for name, function in inspect.getmembers(cls, inspect.isfunction):
        if name.startswith("_"):
            continue
        hints = typing.get_type_hints(function)
        assert "return" in hints, f"{cls.__name__}.{name} has no return annotation"
        for parameter in list(inspect.signature(function).parameters)[1:]:
            assert parameter in hints, f"{cls.__name__}.{name}({parameter}) is not annotated"
        private = [n for hint in hints.values() for n in _public(hint)]
        assert private == [], f"{cls.__name__}.{name} exposes unexported types {private}"


async def test_the_spec_methods_answer_as_the_spec_says_on_an_idle_manager() -> None:
    manager = WebSocketManager()
    assert manager.get_active_connections() == 0
    assert manager.get_user_sockets("nobody") == []
    assert await manager.broadcast("hi") == 0
    assert await manager.broadcast("hi", lambda sock: True) == 0
    await manager.close()
    assert manager.closing
    pool = WebSocketPool("ws://127.0.0.1:9/", min_connections=0)
    assert (pool.get_active_count(), pool.get_idle_count()) == (0, 0)
    assert isinstance(pool.get_health_status(), trio_wsmgr.HealthStatus)
    assert isinstance(pool.acquire(), trio_wsmgr.Acquisition)
    broadcaster = Broadcaster()
    channel = broadcaster.create_channel("news")
    assert isinstance(channel, trio_wsmgr.Channel)
    assert channel.subscriber_count == 0


def test_the_package_exports_what_its_all_says() -> None:
    for name in trio_wsmgr.__all__:
        assert hasattr(trio_wsmgr, name), name
    for cls in SPEC:
        assert cls.__name__ in trio_wsmgr.__all__
