"""The one exception-group unwrapper every nursery-hiding context manager uses."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio

from trio_wsmgr._util import unwrap_single_group

Task = Callable[[], Awaitable[object]]


async def run_unwrapped(*tasks: Task) -> None:
    """Run ``tasks`` in a nursery behind the unwrapper, as our context managers do."""
    with unwrap_single_group():
        async with trio.open_nursery() as nursery:
            for task in tasks:
                nursery.start_soon(task)


async def fail_in_context() -> None:
    try:
        raise KeyError("the original problem")
    except KeyError:
        raise ValueError("what the task raised")  # noqa: B904 -- the implicit context is the point


async def fail_while_handling_another() -> None:
    try:
        raise KeyError("the original problem")
    except KeyError:
        raise ValueError("what the task raised") from None


async def fail_alone() -> None:
    raise RuntimeError("alone")


async def fail_nested() -> None:
    async with trio.open_nursery() as inner:
        inner.start_soon(fail_alone)


async def test_the_one_error_comes_out_with_its_original_context() -> None:
    with pytest.raises(ValueError, match="what the task raised") as info:
        await run_unwrapped(fail_in_context)
    assert isinstance(info.value.__context__, KeyError)  # not the ExceptionGroup


async def test_suppressed_context_and_cause_stay_as_raised() -> None:
    with pytest.raises(ValueError, match="what the task raised") as info:
        await run_unwrapped(fail_while_handling_another)
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


async def test_an_error_with_no_context_gets_none_not_the_group() -> None:
    with pytest.raises(RuntimeError, match="alone") as info:
        await run_unwrapped(fail_alone)
    assert info.value.__context__ is None


async def test_nested_groups_of_one_error_are_unwrapped() -> None:
    with pytest.raises(RuntimeError, match="alone"):
        await run_unwrapped(fail_nested)


async def test_two_errors_stay_a_group() -> None:
    with pytest.raises(BaseExceptionGroup):
        await run_unwrapped(fail_alone, fail_alone)


def test_no_other_module_unwraps_groups_by_hand() -> None:
    import trio_wsmgr

    root = Path(trio_wsmgr.__file__).parent
    offenders = [
        str(path.relative_to(root))
        for path in root.rglob("*.py")
        if path.name != "_util.py" and "except BaseExceptionGroup" in path.read_text()
    ]
    assert offenders == []
