"""The one exception-group unwrapper every nursery-hiding context manager uses."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from trio_wsmgr._util import unwrap_single_group


async def _fail_while_handling_another() -> None:
    try:
        raise KeyError("the original problem")
    except KeyError:
        raise ValueError("what the task raised") from None


async def _fail_in_context() -> None:
    try:
        raise KeyError("the original problem")
    except KeyError:
        raise ValueError("what the task raised")  # noqa: B904 -- the implicit context is the point


async def test_the_one_error_comes_out_with_its_original_context() -> None:
    with pytest.raises(ValueError, match="what the task raised") as info:
        with unwrap_single_group():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_fail_in_context)
    assert isinstance(info.value.__context__, KeyError)  # not the ExceptionGroup


async def test_suppressed_context_and_cause_stay_as_raised() -> None:
    with pytest.raises(ValueError) as info:
        with unwrap_single_group():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_fail_while_handling_another)
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


async def test_an_error_with_no_context_gets_none_not_the_group() -> None:
    async def fail() -> None:
        raise RuntimeError("alone")

    with pytest.raises(RuntimeError) as info:
        with unwrap_single_group():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(fail)
    assert info.value.__context__ is None


async def test_nested_groups_of_one_error_are_unwrapped_but_two_errors_stay_a_group() -> None:
    async def fail() -> None:
        raise RuntimeError("inner")

    with pytest.raises(RuntimeError, match="inner"):
        with unwrap_single_group():
            async with trio.open_nursery() as outer:
                outer.start_soon(_run_nested, fail)
    with pytest.raises(BaseExceptionGroup):
        with unwrap_single_group():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(fail)
                nursery.start_soon(fail)


async def _run_nested(fn: object) -> None:
    async with trio.open_nursery() as inner:
        inner.start_soon(fn)  # type: ignore[arg-type]


def test_no_other_module_unwraps_groups_by_hand() -> None:
    import trio_wsmgr

    root = Path(trio_wsmgr.__file__).parent
    offenders = [
        str(path.relative_to(root))
        for path in root.rglob("*.py")
        if path.name != "_util.py" and "except BaseExceptionGroup" in path.read_text()
    ]
    assert offenders == []
