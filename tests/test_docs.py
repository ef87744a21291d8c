"""Every Python code block in docs/ runs, so the docs cannot show code that does not work.

Each ``.. code-block:: python`` of a page runs in order in one namespace per page (a
later block may use what an earlier one defined), then every ``async def test_*`` the
page defined runs under trio (with a virtual clock when it asks for ``autojump_clock``),
as the page's reader would run it with pytest-trio. Each page starts with ``trio`` and
the public names of ``trio_wsmgr`` imported (as pages say once, in prose or a first
block); a private name or a missing attribute still fails.

A block that cannot run on its own (a fragment that needs a live socket, a server
that runs forever, a placeholder such as ``check_token``) says so explicitly with
``:class: sketch``; it is still parsed, so it is at least valid Python.
"""

from __future__ import annotations

import ast
import inspect
import re
import sys
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing

import trio_wsmgr

DOCS = Path(__file__).parent.parent / "docs"
EXAMPLES = Path(__file__).parent.parent / "examples"
_START = re.compile(r"^(\s*)\.\. code-block:: python\s*$")


@attrs.frozen
class Block:
    line: int
    code: str
    sketch: bool


def blocks(path: Path) -> list[Block]:
    """The Python code blocks of an rst page, with their options."""
    lines = path.read_text().splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        match = _START.match(lines[i])
        if match is None:
            i += 1
            continue
        indent = len(match.group(1))
        j = i + 1
        options: list[str] = []
        while j < len(lines) and lines[j].strip().startswith(":"):
            options.append(lines[j].strip())
            j += 1
        body: list[str] = []
        while j < len(lines) and (
            not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) > indent
        ):
            body.append(lines[j])
            j += 1
        width = min((len(b) - len(b.lstrip()) for b in body if b.strip()), default=0)
        code = "\n".join(b[width:] for b in body)
        sketch = any(re.fullmatch(r":class:.*\bsketch\b.*", o) for o in options)
        found.append(Block(i + 1, code, sketch))
        i = j
    return found


PAGES = sorted(p for p in DOCS.rglob("*.rst") if "_build" not in p.parts and blocks(p))


def test_the_collector_finds_the_blocks() -> None:
    assert len(PAGES) >= 10
    assert sum(len(blocks(p)) for p in PAGES) >= 30


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_every_python_block_of_the_page_runs(page: Path, monkeypatch: Any) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLES))
    namespace: dict[str, Any] = {"__name__": f"docs.{page.stem}", "trio": trio}
    namespace.update({name: getattr(trio_wsmgr, name) for name in trio_wsmgr.__all__})
    ran = 0
    for block in blocks(page):
        where = f"{page.relative_to(DOCS.parent)}:{block.line}"
        flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
        code = compile(block.code, where, "exec", flags=flags)  # every block must parse
        if block.sketch:
            continue
        assert not code.co_flags & inspect.CO_COROUTINE, (
            f"{where}: top-level await cannot run; wrap it in a test or mark it a sketch"
        )
        before = set(namespace)
        exec(code, namespace)
        ran += 1
        for name in sorted(set(namespace) - before):
            function = namespace[name]
            if name.startswith("test_") and inspect.iscoroutinefunction(function):
                run_test(function, where)
    assert ran, f"{page}: every block is a sketch; a page with code shows at least one that runs"
    for module in [m for m in sys.modules if m in {"chat_server"}]:
        del sys.modules[module]


def run_test(function: Any, where: str) -> None:
    parameters = inspect.signature(function).parameters
    if "autojump_clock" in parameters:
        clock = trio.testing.MockClock(autojump_threshold=0)
        trio.run(function, clock, clock=clock)
    else:
        assert not parameters, f"{where}: {function.__name__} needs fixtures the docs lack"
        trio.run(function)
