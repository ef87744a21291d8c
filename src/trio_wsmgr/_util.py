"""Small helpers shared by the context managers that hide a nursery."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            found.extend(_leaves(exc))
        else:
            found.append(exc)
    return found


@contextmanager
def unwrap_single_group() -> Iterator[None]:
    """Raise the one real error of a nursery, not an ExceptionGroup around it.

    trio wraps whatever a nursery's body or children raise in (possibly nested)
    ExceptionGroups. When there is exactly one error in all, users of our
    context managers get that error itself, traceback intact; several errors
    still come out as the group.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        if len(leaves) == 1:
            inner = leaves[0]
            raise inner from inner.__cause__
        raise
