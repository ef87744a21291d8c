"""Every class, option and method of the API reference exists, in snake_case.

The names below are the spec's (docs/reference/spec_mapping.rst has the table);
a rename or a missing option fails here, not in a user's code.
"""

from __future__ import annotations

import inspect
import re

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


def test_the_package_exports_what_its_all_says() -> None:
    for name in trio_wsmgr.__all__:
        assert hasattr(trio_wsmgr, name), name
    for cls in SPEC:
        assert cls.__name__ in trio_wsmgr.__all__
