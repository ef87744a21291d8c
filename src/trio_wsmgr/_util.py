"""Small helpers shared by the context managers that hide a nursery."""

from __future__ import annotations

from types import TracebackType
from typing import Literal


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            found.extend(_leaves(exc))
        else:
            found.append(exc)
    return found


def single_error(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one error in ``group`` (nested groups flattened), or None if there are several."""
    leaves = _leaves(group)
    return leaves[0] if len(leaves) == 1 else None


class unwrap_single_group:
    """Raise the one real error of a nursery, not an ExceptionGroup around it.

    trio wraps whatever a nursery's body or children raise in (possibly nested)
    ExceptionGroups. When there is exactly one error in all, users of our
    context managers get that error itself: its traceback, ``__cause__`` and
    ``__context__`` as they were when it was first raised (its context is
    restored after raising it again, so the group does not become its
    context). Several errors still come out as the group. The one helper of
    the package for this; nothing else unwraps groups. A small class rather
    than a generator: one lives as long as each connection.
    """

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        if not isinstance(exc, BaseExceptionGroup):
            return False
        inner = single_error(exc)
        if inner is None:
            return False
        context = inner.__context__
        try:
            raise inner
        finally:
            inner.__context__ = context  # raising it here made the group its context
            del inner
