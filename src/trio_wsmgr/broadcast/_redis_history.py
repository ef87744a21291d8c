"""Channel history on Redis: a Stream per channel, appended and published in one script.

For the channel published on Redis channel ``C`` (``prefix + topic``) two keys
hold the history, both with the hash tag ``{C}`` so that on a Redis Cluster
they live on the shard that owns ``C``'s slot (where SPUBLISH sends it):

``{C}:m``   a hash: ``e`` the epoch, ``t`` the newest offset, ``w`` the writer
``{C}:s``   a Stream of at most ``size`` entries, entry id ``<offset>-1``, field ``d``

One Lua script (EVALSHA) increments ``t``, XADDs with ``MAXLEN size`` (exact)
and PUBLISHes (SPUBLISH on a cluster) the positioned message. Redis runs a
script atomically, so offsets are gap-free and every node receives the
publications in offset order. The epoch lives only in Redis: a server that
restarted without persistence, or keys that expired (``ttl`` after the last
publication), have no ``{C}:m``; the next script creates it with a fresh random
epoch (and drops any stale stream), so a lost history can never be mistaken
for the old one.

A history can also come back *shorter*: a Redis Cluster replica promoted
before it got its master's last writes, a server restarted from an append-only
file or snapshot without the last ones. Its offsets would then be given again,
in the same epoch, to new publications, which a client that saw the lost ones
would skip as seen. So every write records its *writer* ``w``: the server
process (``run_id``, learned on the connection when it opened: it cannot change
while the connection lives) and that process' replication story
(``master_replid``, read by the script itself: a master that was made a replica
and back meanwhile has another one). Either changes on any restart, failover,
failback or slot migration; a script that finds another writer than itself
starts a new epoch, keeping the entries and the offsets (the new epoch's
history is what this server holds). Conservative: after a failover that lost
nothing, or a migration, clients resuming from the old epoch are not
recovered; but no offset is ever given twice within an epoch.
"""

from __future__ import annotations

import hashlib
import math
import re
from typing import Any, Final

from ._history import HistoryPage, StreamPosition, new_epoch

#: Who writes: the server process (its ``run_id``, passed in as the last argument,
#: learned on the connection when it opened) and its replication story (its
#: ``master_replid``, read here at each call: a process that was a replica meanwhile,
#: and got its data back from another node, has another one).
_WRITER: Final = """
local info = redis.call('INFO', 'replication')
local writer = ARGV[#ARGV] .. ':' .. (string.match(info, 'master_replid:(%x+)') or '')
"""

PUBLISH_SCRIPT: Final = (
    _WRITER
    + """
local meta = redis.call('HMGET', KEYS[1], 'e', 'w')
local epoch = meta[1]
if not epoch then
  epoch = ARGV[2]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', epoch, 't', 0, 'w', writer)
elseif meta[2] ~= writer then
  epoch = ARGV[2]
  redis.call('HSET', KEYS[1], 'e', epoch, 'w', writer)
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
)

READ_SCRIPT: Final = (
    _WRITER
    + """
local meta = redis.call('HMGET', KEYS[1], 'e', 't', 'w')
local epoch = meta[1]
local top = tonumber(meta[2]) or 0
if not epoch then
  epoch = ARGV[1]
  top = 0
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', epoch, 't', 0, 'w', writer)
  local ttl = tonumber(ARGV[4])
  if ttl > 0 then
    redis.call('PEXPIRE', KEYS[1], ttl)
  end
elseif meta[3] ~= writer then
  epoch = ARGV[1]
  redis.call('HSET', KEYS[1], 'e', epoch, 'w', writer)
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
)


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
    """The publish script's arguments, but its last: the server's ``run_id``."""
    return [channel, new_epoch(), size, _ms(ttl), inner, "1" if sharded else "0"]


def parse_position(reply: Any) -> StreamPosition:
    epoch, top = reply
    return StreamPosition(_text(epoch), int(top))


def read_args(after: int | None, limit: int, ttl: float) -> list[str | int]:
    """The read script's arguments, but its last: the server's ``run_id``."""
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


_RUN_ID = re.compile(rb"run_id:([0-9a-fA-F]+)")


def parse_run_id(info: Any) -> bytes:
    """The ``run_id`` in an ``INFO server`` reply (it names one server process).

    Empty when the reply has none (an ACL that refuses INFO): the writer is then
    the replication story alone, which changes on every failover and (up to Redis
    7 at least) on every restart too.
    """
    data = info if isinstance(info, bytes) else str(info).encode()
    found = _RUN_ID.search(data)
    return found.group(1) if found else b""


async def learn_run_id(connection: Any) -> bytes:
    """``INFO server`` on a coredis connection: its server process' ``run_id``."""
    from coredis.exceptions import ResponseError

    try:
        return parse_run_id(await connection.create_request(b"INFO", b"server"))
    except ResponseError:
        return b""


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
