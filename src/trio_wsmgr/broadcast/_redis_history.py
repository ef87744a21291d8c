"""Channel history on Redis: a Stream per channel, appended and published in one script.

For the channel published on Redis channel ``C`` (``prefix + topic``) two keys
hold the history, both with the hash tag ``{C}`` so that on a Redis Cluster
they live on the shard that owns ``C``'s slot (where SPUBLISH sends it):

``{C}:m``   a hash: ``e`` the epoch, ``t`` the newest offset
``{C}:s``   a Stream of at most ``size`` entries, entry id ``<offset>-1``, field ``d``

One Lua script (EVALSHA) increments ``t``, XADDs with ``MAXLEN size`` (exact)
and PUBLISHes (SPUBLISH on a cluster) the positioned message. Redis runs a
script atomically, so offsets are gap-free and every node receives the
publications in offset order. The epoch lives only in Redis: a server that
restarted without persistence, or keys that expired (``ttl`` after the last
publication), have no ``{C}:m``; the next script creates it with a fresh random
epoch (and drops any stale stream), so a lost history can never be mistaken
for the old one.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any, Final

from ._history import HistoryPage, StreamPosition, new_epoch

PUBLISH_SCRIPT: Final = """
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[2]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', epoch, 't', 0)
end
local top = redis.call('HINCRBY', KEYS[1], 't', 1)
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], top .. '-1', 'd', ARGV[5])
local ttl = tonumber(ARGV[4])
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
end
local message = '\\2' .. epoch .. ' ' .. top .. ' ' .. ARGV[5]
if ARGV[6] == '1' then
  redis.call('SPUBLISH', ARGV[1], message)
else
  redis.call('PUBLISH', ARGV[1], message)
end
return {epoch, top}
"""

READ_SCRIPT: Final = """
local epoch = redis.call('HGET', KEYS[1], 'e')
local top = 0
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', epoch, 't', 0)
  local ttl = tonumber(ARGV[4])
  if ttl > 0 then
    redis.call('PEXPIRE', KEYS[1], ttl)
  end
else
  top = tonumber(redis.call('HGET', KEYS[1], 't'))
end
local first = top + 1
local oldest = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
if oldest[1] then
  first = tonumber(string.match(oldest[1][1], '^(%d+)'))
end
local limit = tonumber(ARGV[3])
local entries = {}
if limit > 0 then
  if ARGV[2] == '' then
    entries = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', limit)
  else
    entries = redis.call('XRANGE', KEYS[2], ARGV[2], '+', 'COUNT', limit)
  end
end
return {epoch, top, first, entries}
"""


def keys(channel: str) -> list[str]:
    """The hash and the stream of the Redis channel ``channel`` (same hash slot)."""
    return [f"{{{channel}}}:m", f"{{{channel}}}:s"]


def _ms(ttl: float) -> int:
    return 0 if math.isinf(ttl) else max(1, round(ttl * 1000))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def publish_args(
    channel: str, inner: bytes, *, size: int, ttl: float, sharded: bool
) -> list[str | bytes | int]:
    return [channel, new_epoch(), size, _ms(ttl), inner, "1" if sharded else "0"]


def parse_position(reply: Any) -> StreamPosition:
    epoch, top = reply
    return StreamPosition(_text(epoch), int(top))


def read_args(after: int | None, limit: int, ttl: float) -> list[str | int]:
    start = "" if after is None else f"{after + 1}-0"
    return [new_epoch(), start, limit, _ms(ttl)]


def parse_page(reply: Any, after: int | None) -> HistoryPage:
    epoch, top, first, raw = reply
    entries = []
    for entry_id, fields in raw:
        offset = int(_text(entry_id).partition("-")[0])
        # RESP3 may map the field list
        data = next(iter(fields.values())) if isinstance(fields, dict) else fields[1]
        entries.append((offset, bytes(data) if not isinstance(data, str) else data.encode()))
    if after is None:
        entries.reverse()  # XREVRANGE: newest first
    return HistoryPage(_text(epoch), int(top), int(first), entries)


_SHAS: dict[str, str] = {}


def _sha(source: str) -> str:
    sha = _SHAS.get(source)
    if sha is None:
        sha = _SHAS[source] = hashlib.sha1(source.encode()).hexdigest()
    return sha


async def run_script(connection: Any, source: str, keys: list[str], args: list[Any]) -> Any:
    """EVALSHA on a coredis connection, EVAL when the server does not know the script yet."""
    from coredis.exceptions import NoScriptError

    try:
        return await connection.create_request(b"EVALSHA", _sha(source), len(keys), *keys, *args)
    except NoScriptError:
        return await connection.create_request(b"EVAL", source, len(keys), *keys, *args)
