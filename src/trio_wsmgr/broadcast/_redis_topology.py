"""A Redis Cluster's layout: which master owns which hash slot, and every node we know of.

Plain synchronous data, no I/O: :class:`._redis_cluster.ClusterPubSub` reads the
layout (``CLUSTER SLOTS``) into a :class:`Topology`, and :func:`plan` says what
one shard's connection must (un)subscribe so it holds exactly the channels of
its master's slots.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs

from ._redis_resp import slot_ranges

Address = tuple[str, int]
SLOTS = 16384


def address_name(address: Address) -> str:
    """``host:port``, for messages and statistics."""
    return f"{address[0]}:{address[1]}"


@attrs.define(eq=False)
class Topology:
    """Who owns which slot, and every node we know of (seeds first)."""

    seeds: list[Address]
    owners: list[Address | None] = attrs.field(factory=lambda: [None] * SLOTS)
    known: dict[Address, None] = attrs.field(factory=dict)
    loaded: bool = False

    def __attrs_post_init__(self) -> None:
        self.known.update(dict.fromkeys(self.seeds))

    @property
    def masters(self) -> set[Address]:
        return {owner for owner in self.owners if owner is not None}

    def candidates(self, healthy: Iterable[Address]) -> list[Address]:
        """Whom to ask for the layout: connected masters first, then everyone we know."""
        return list(dict.fromkeys([*healthy, *self.known]))

    def load(self, reply: object) -> bool:
        """Apply a ``CLUSTER SLOTS`` reply; ``False`` if it covers no slot."""
        ranges = slot_ranges(reply)
        if not ranges:
            return False
        owners: list[Address | None] = [None] * SLOTS
        known = dict.fromkeys(self.seeds)
        for first, last, master, nodes in ranges:
            owners[first : last + 1] = [master] * (last + 1 - first)
            known.update(dict.fromkeys(nodes))
        self.owners, self.known = owners, known
        self.loaded = True
        return True

    def moved(self, slot: int, address: Address) -> None:
        """A ``MOVED`` reply: ``slot`` is ``address``'s now (until the next full read)."""
        self.owners[slot] = address
        self.known.setdefault(address, None)

    def slots_of(self, address: Address) -> int:
        return sum(1 for owner in self.owners if owner == address)


def plan(
    wanted: dict[bytes, int], topology: Topology, address: Address, subscribed: set[bytes]
) -> tuple[list[bytes], list[bytes]]:
    """What a shard's connection must (un)subscribe so it holds exactly its channels."""
    owners = topology.owners
    desired = {channel for channel, slot in wanted.items() if owners[slot] == address}
    return sorted(desired - subscribed), sorted(subscribed - desired)
