"""Reconnect back-off (exponential, capped, jittered).

Plain synchronous arithmetic; the random source is passed in, so tests are deterministic.
"""

from __future__ import annotations

import math
import random
from typing import Any

import attrs

from ._validators import seconds


def _factor(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{attribute.name} must be a number, not {value!r}")
    if not 1 <= value < math.inf:
        raise ValueError(f"{attribute.name} must be >= 1 and finite, not {value!r}")


def _fraction(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{attribute.name} must be a number from 0 to 1, not {value!r}")
    if not 0 <= value <= 1:
        raise ValueError(f"{attribute.name} must be from 0 to 1, not {value!r}")


@attrs.frozen(kw_only=True)
class Backoff:
    """How long the pool waits before its next connect attempt after a failure.

    After the *n*-th consecutive failure the ceiling is ``min(maximum, initial * multiplier **
    (n - 1))`` seconds, and the wait is drawn uniformly from ``[ceiling * (1 - jitter), ceiling]``.
    ``jitter=0`` waits exactly the ceiling; ``jitter=1`` is "full jitter" (anything from 0).
    The default, ``0.5``, keeps at least half the ceiling between attempts while spreading a
    fleet of pools that lost the same backend at the same moment.
    """

    initial: float = attrs.field(default=0.1, validator=seconds)
    maximum: float = attrs.field(default=30.0, validator=seconds)
    multiplier: float = attrs.field(default=2.0, validator=_factor)
    jitter: float = attrs.field(default=0.5, validator=_fraction)

    def __attrs_post_init__(self) -> None:
        if self.maximum < self.initial:
            raise ValueError(
                f"maximum must be >= initial, not maximum={self.maximum!r} < {self.initial!r}"
            )

    def ceiling(self, failures: int) -> float:
        """The longest wait after ``failures`` consecutive failures (``failures >= 1``)."""
        if failures < 1:
            return 0.0
        # Compare logarithms first: the power itself could overflow a float.
        log_ceiling = math.log(self.initial) + (failures - 1) * math.log(self.multiplier)
        if log_ceiling >= math.log(self.maximum) or log_ceiling > 700.0:
            return self.maximum
        return min(self.maximum, self.initial * self.multiplier ** (failures - 1))

    def delay(self, failures: int, rng: random.Random) -> float:
        """A jittered wait after ``failures`` consecutive failures, drawn from ``rng``."""
        ceiling = self.ceiling(failures)
        return ceiling * (1.0 - self.jitter * rng.random())
