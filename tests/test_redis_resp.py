"""The RESP3 codec and the cluster bookkeeping under the Redis Cluster backend.

Plain synchronous code, no event loop; the slot hashing is checked against a real
cluster's ``CLUSTER KEYSLOT``.
"""

from __future__ import annotations

import pytest

from redis_cluster import RedisCluster
from trio_wsmgr.broadcast._redis_resp import (
    Credentials,
    Parser,
    Push,
    ServerError,
    encode,
    key_slot,
)
from trio_wsmgr.broadcast._redis_topology import Topology, plan


def parse_all(data: bytes, *, chunk: int) -> list[object]:
    parser, values = Parser(), []
    for start in range(0, len(data), chunk):
        parser.feed(data[start : start + chunk])
        while True:
            complete, value = parser.next()
            if not complete:
                break
            values.append(value)
    return values


STREAM = (
    b"+OK\r\n"
    b"-MOVED 3999 127.0.0.1:6381\r\n"
    b":42\r\n"
    b"_\r\n"
    b"$5\r\nhe\r\no\r\n"
    b">3\r\n$8\r\nsmessage\r\n$4\r\nroom\r\n$3\r\n\x00\x01\x02\r\n"
    b"%1\r\n+proto\r\n:3\r\n"
    b"*2\r\n#t\r\n,1.5\r\n"
    b"|1\r\n+ttl\r\n:1\r\n:7\r\n"
)


@pytest.mark.parametrize("chunk", [1, 3, 1000])
def test_the_parser_yields_whole_values_however_the_bytes_arrive(chunk: int) -> None:
    values = parse_all(STREAM, chunk=chunk)
    assert values[0] == b"OK"
    assert isinstance(values[1], ServerError)
    assert values[1].code == "MOVED"
    assert values[1].redirect() == ("127.0.0.1", 6381, 3999)
    assert values[2:5] == [42, None, b"he\r\no"]
    assert values[5] == Push(b"smessage", (b"room", b"\x00\x01\x02"))
    assert values[6:] == [{b"proto": 3}, [True, 1.5], 7]


def test_encode_is_a_resp_array_of_bulk_strings() -> None:
    assert encode(b"SPUBLISH", "ch", 3) == b"*3\r\n$8\r\nSPUBLISH\r\n$2\r\nch\r\n$1\r\n3\r\n"


def test_only_moved_and_ask_errors_redirect() -> None:
    assert ServerError("ASK 12 10.0.0.1:7000").redirect() == ("10.0.0.1", 7000, 12)
    assert ServerError("CLUSTERDOWN The cluster is down").redirect() is None


def test_plan_subscribes_a_shard_to_exactly_the_channels_of_its_slots() -> None:
    a, b = ("127.0.0.1", 7000), ("127.0.0.1", 7001)
    topology = Topology([a])
    topology.load([[0, 8191, [b"127.0.0.1", 7000, b"id"]], [8192, 16383, [b"127.0.0.1", 7001]]])
    wanted = {b"x": 100, b"y": 9000, b"z": 200}
    assert plan(wanted, topology, a, set()) == ([b"x", b"z"], [])
    assert plan(wanted, topology, b, {b"x", b"y"}) == ([], [b"x"])
    topology.moved(9000, a)  # a MOVED reply: slot 9000 is a's now
    assert plan(wanted, topology, a, {b"x", b"z"}) == ([b"y"], [])
    assert topology.masters == {a, b}


@pytest.mark.redis_cluster
def test_key_slot_agrees_with_redis(redis_cluster: RedisCluster) -> None:
    node = redis_cluster.live()
    assert node is not None
    for key in ["trio_wsmgr:lobby", "room:1", "{user1000}.following", "a{}b", "{}x", "é"]:
        assert key_slot(key.encode()) == node.command("CLUSTER", "KEYSLOT", key), key


def test_credentials_never_show_the_password_in_their_repr() -> None:
    shown = repr(Credentials(username="app", password="s3cret"))
    assert "s3cret" not in shown
    assert "app" in shown
