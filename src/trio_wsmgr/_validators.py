"""attrs validators shared by every option class; each error names the option.

``math.inf`` is accepted where an option means "never" or "no limit".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, TypeAlias

import attrs

Validator: TypeAlias = Callable[[object, "attrs.Attribute[Any]", object], None]


def seconds(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """A duration in seconds: a number > 0, ``math.inf`` for never."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{attribute.name} must be a number of seconds, not {value!r}")
    if math.isnan(value) or value <= 0:
        raise ValueError(f"{attribute.name} must be > 0 (math.inf means never), not {value!r}")


def limit(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """A count limit: an int >= 1, or ``math.inf`` for no limit."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{attribute.name} must be an int (or math.inf), not {value!r}")
    if value < 1 or (isinstance(value, float) and not math.isinf(value)):
        raise ValueError(f"{attribute.name} must be an int >= 1 or math.inf, not {value!r}")


def rate(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """A rate per second: a number > 0, ``math.inf`` for no limit."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{attribute.name} must be a number (or math.inf), not {value!r}")
    if math.isnan(value) or value <= 0:
        raise ValueError(f"{attribute.name} must be > 0 (math.inf means no limit), not {value!r}")


def str_tuple(name: str) -> Callable[[object], tuple[str, ...] | None]:
    """A converter for a list of non-empty strings (or None), whose errors name ``name``."""

    def convert(value: object) -> tuple[str, ...] | None:
        if value is None:
            return None
        if isinstance(value, str | bytes) or not isinstance(value, Iterable):
            raise TypeError(f"{name} must be a list of strings, not {value!r}")
        items = tuple(value)
        for item in items:
            if not isinstance(item, str) or not item:
                raise TypeError(f"{name} must hold non-empty strings, not {item!r}")
        return items

    return convert


def count(minimum: int) -> Validator:
    """An int >= ``minimum`` (no infinity)."""

    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{attribute.name} must be an int, not {value!r}")
        if value < minimum:
            raise ValueError(f"{attribute.name} must be >= {minimum}, not {value!r}")

    return check


def instance_of(kind: type | tuple[type, ...], text: str) -> Validator:
    """An instance of ``kind``, described to the user as ``text``."""

    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if not isinstance(value, kind):
            raise TypeError(f"{attribute.name} must be {text}, not {value!r}")

    return check


def optional_callable(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """A callable or None."""
    if value is not None and not callable(value):
        raise TypeError(f"{attribute.name} must be callable or None, not {value!r}")
