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


def single_error(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one error in ``group`` (nested groups flattened), or None if there are several."""
    leaves = _leaves(group)
    return leaves[0] if len(leaves) == 1 else None


@contextmanager
def unwrap_single_group() -> Iterator[None]:
    """Raise the one real error of a nursery, not an ExceptionGroup around it.

    trio wraps whatever a nursery's body or children raise in (possibly nested)
    ExceptionGroups. When there is exactly one error in all, users of our
    context managers get that error itself: its traceback, ``__cause__`` and
    ``__context__`` as they were when it was first raised (it is raised again
    outside the ``except`` block, and its context restored, so the group does
    not become its context). Several errors still come out as the group.
    The one helper of the package for this; nothing else unwraps groups.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        inner = single_error(group)
        if inner is None:
            raise
    else:
        return
    context = inner.__context__
    try:
        raise inner
    finally:
        inner.__context__ = context  # raising it here made the group its context
        del inner
