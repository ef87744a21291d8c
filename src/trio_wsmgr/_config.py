"""Shared constants: close codes and defaults."""

from __future__ import annotations

import enum


class CloseCode(enum.IntEnum):
    """The close codes trio_wsmgr sends, and what each means here."""

    NORMAL = 1000  #: the handler finished, or ``sock.close()``
    GOING_AWAY = 1001  #: ``manager.close()`` / server shutdown (the default)
    PROTOCOL_ERROR = 1002  #: the peer broke the WebSocket protocol
    UNSUPPORTED_DATA = 1003
    ABNORMAL = 1006  #: reported locally when the TCP connection died without a close frame
    INVALID_DATA = 1007  #: invalid UTF-8 in a text message
    POLICY_VIOLATION = 1008  #: slow consumer, rate limit, auth revoked
    MESSAGE_TOO_BIG = 1009  #: an incoming message above ``max_message_size``
    INTERNAL_ERROR = 1011  #: handler crashed, or heartbeat timeout
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
