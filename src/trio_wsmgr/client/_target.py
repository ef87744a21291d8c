"""Where and how a pool connects: its URL and handshake options, checked and parsed once (sync)."""

from __future__ import annotations

import ssl
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

import attrs


def url_option(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"url must be a str like 'ws://host:port/path', not {value!r}")
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"url must be a ws:// or wss:// URL with a host, not {value!r}")


def headers_option(
    value: Mapping[str | bytes, str | bytes] | Sequence[tuple[str | bytes, str | bytes]],
) -> tuple[tuple[bytes, bytes], ...]:
    items = value.items() if isinstance(value, Mapping) else value
    if isinstance(items, str | bytes):
        raise TypeError(f"extra_headers must be a mapping or (name, value) pairs, not {value!r}")

    def raw(text: str | bytes) -> bytes:
        if isinstance(text, str):
            return text.encode("latin-1")
        if isinstance(text, bytes):
            return text
        raise TypeError(f"extra_headers names and values must be str or bytes, not {text!r}")

    return tuple((raw(name), raw(val)) for name, val in items)


def protocols_option(value: Sequence[str]) -> tuple[str, ...]:
    if isinstance(value, str) or not all(isinstance(p, str) for p in value):
        raise TypeError(f"subprotocols must be a list of strings, not {value!r}")
    return tuple(value)


@attrs.frozen
class Target:
    """Where the pool connects, parsed once from its URL."""

    host: str
    port: int
    #: the ``Host`` header: the URL's authority, brackets and explicit port included
    host_header: str
    #: path and query
    resource: str
    ssl_context: ssl.SSLContext | None

    @classmethod
    def parse(cls, url: str, ssl_context: ssl.SSLContext | None) -> Target:
        parts = urllib.parse.urlsplit(url)
        secure = parts.scheme == "wss"
        if secure and ssl_context is None:
            ssl_context = ssl.create_default_context()
        resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        assert parts.hostname is not None  # checked by the url validator
        return cls(
            host=parts.hostname,
            port=parts.port or (443 if secure else 80),
            host_header=parts.netloc.rpartition("@")[2],
            resource=resource,
            ssl_context=ssl_context,
        )
