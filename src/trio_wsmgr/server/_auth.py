"""Authentication: what a handshake looks like to an authenticator, and TokenAuth.

An *authenticator* is any callable ``auth(request) -> user_id | None`` (sync or
async) taking a :class:`HandshakeRequest`. ``None`` refuses the handshake with
HTTP 401; raising :class:`~trio_wsmgr.RequestRejected` refuses it with that status
(use 403 for "known but not allowed"). Whatever else it returns becomes
``sock.user_id`` (as a string). An authenticator that crashes gets HTTP 500, is
logged (without the request's credentials) and takes nothing else down.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import Any, TypeAlias
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import attrs

#: the prefix of the subprotocol that carries a token from a browser
BEARER_SUBPROTOCOL_PREFIX = "bearer."


def _freeze_query(value: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(value))


@attrs.frozen(kw_only=True)
class HandshakeRequest:
    """The parts of an opening handshake an authenticator (or ``accept``) may need.

    ``headers`` has lower-case names, every header the client sent (``Host``
    included). ``path`` is the request target with the query string.
    """

    path: str
    headers: tuple[tuple[str, str], ...]
    subprotocols: tuple[str, ...]
    remote: tuple[str, int] | None
    query: Mapping[str, str] = attrs.field(converter=_freeze_query, factory=dict)

    def header(self, name: str, default: str | None = None) -> str | None:
        """The first value of header ``name`` (case-insensitive), else ``default``."""
        wanted = name.lower()
        for key, value in self.headers:
            if key == wanted:
                return value
        return default

    def __repr__(self) -> str:
        # Never show header values or the query: they may carry credentials.
        return (
            f"HandshakeRequest(path={urlsplit(self.path).path!r}, remote={self.remote!r}, "
            f"subprotocols={len(self.subprotocols)})"
        )


def parse_query(path: str) -> dict[str, str]:
    """The query parameters of ``path`` (first value of each name wins)."""
    result: dict[str, str] = {}
    for key, value in parse_qsl(urlsplit(path).query, keep_blank_values=True):
        result.setdefault(key, value)
    return result


def redact_path(path: str, parameter: str = "token") -> str:
    """``path`` without the query parameter ``parameter`` (so it is safe to log)."""
    parts = urlsplit(path)
    if not parts.query:
        return path
    kept = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != parameter]
    return urlunsplit(parts._replace(query=urlencode(kept)))


#: what an authenticator returns: the user id, or None to refuse with 401
#: (or an awaitable of either, for ``async def`` authenticators)
AuthResult: TypeAlias = "str | Awaitable[str | None] | None"
#: ``auth(request) -> user_id | None`` (sync or async); see the module documentation
Authenticator: TypeAlias = Callable[[HandshakeRequest], AuthResult]
TokenVerifier: TypeAlias = Callable[[str], "str | Awaitable[str | None] | None"]


async def maybe_await(value: Any) -> Any:
    """``await value`` if it is awaitable, else return it (sync or async callables)."""
    if inspect.isawaitable(value):
        return await value
    return value


def extract_token(request: HandshakeRequest) -> str | None:
    """Find a bearer token: ``Authorization`` header, ``token`` query, ``bearer.*`` subprotocol.

    Browsers cannot set headers on a WebSocket, so they pass the token as a
    subprotocol (``new WebSocket(url, ["chat.v1", "bearer." + token])``) or in the
    query string. The subprotocol form keeps it out of server and proxy logs.
    """
    authorization = request.header("authorization")
    if authorization is not None:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    token = request.query.get("token")
    if token:
        return token
    for proto in request.subprotocols:
        if proto.startswith(BEARER_SUBPROTOCOL_PREFIX) and len(proto) > len(
            BEARER_SUBPROTOCOL_PREFIX
        ):
            return proto[len(BEARER_SUBPROTOCOL_PREFIX) :]
    return None


@attrs.frozen
class TokenAuth:
    """Bearer-token authentication: ``verify(token) -> user_id | None`` (sync or async).

    The token is taken from ``Authorization: Bearer <token>``, else the ``token``
    query parameter, else a ``bearer.<token>`` subprotocol. No token, or
    ``verify`` returning ``None``, refuses the handshake with 401. The token
    never appears in a log line, a ``repr`` or ``sock.path``. Compare secrets in
    ``verify`` with :func:`hmac.compare_digest` (see :func:`static_tokens`).
    """

    verify: TokenVerifier = attrs.field(validator=attrs.validators.is_callable())

    async def __call__(self, request: HandshakeRequest) -> str | None:
        token = extract_token(request)
        if token is None:
            return None
        result = await maybe_await(self.verify(token))
        return None if result is None else str(result)

    def __repr__(self) -> str:
        return f"TokenAuth({getattr(self.verify, '__qualname__', type(self.verify).__name__)})"


def static_tokens(tokens: Mapping[str, str]) -> TokenVerifier:
    """A verifier for a fixed ``{token: user_id}`` table, compared in constant time.

    Every known token is compared (with :func:`hmac.compare_digest`), so the time
    taken does not tell an attacker how much of a guess was right.
    """
    import hmac

    table = [(token.encode(), user) for token, user in tokens.items()]

    def verify(token: str) -> str | None:
        candidate = token.encode()
        found: str | None = None
        for known, user in table:
            if hmac.compare_digest(known, candidate) and found is None:
                found = user
        return found

    return verify
