"""Sessions: tests (default), lint, typecheck, docs, e2e, bench, border_latest."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests"]
nox.options.default_venv_backend = "venv"
nox.options.error_on_missing_interpreters = True

PYPROJECT = nox.project.load_toml("pyproject.toml")


def _group(name: str) -> list[str]:
    return list(nox.project.dependency_groups(PYPROJECT, name))


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite (browser and redis tests included; they skip loudly when absent)."""
    session.install("-e", ".[redis,metrics]", *_group("tests"))
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check (with the ASYNC rules) and ruff format --check."""
    session.install(*_group("lint"))
    session.run("ruff", "check", "src", "tests", "examples", "bench", "noxfile.py")
    session.run("ruff", "format", "--check", "src", "tests", "examples", "bench", "noxfile.py")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package."""
    session.install("-e", ".[redis,metrics]", *_group("typing"))
    session.run("mypy", "--strict", "src/trio_wsmgr")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the Sphinx docs with warnings as errors."""
    session.install("-e", ".[redis,metrics]", *_group("docs"))
    session.run("sphinx-build", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html")


@nox.session
def e2e(session: nox.Session) -> None:
    """Only the browser tests (headless Chromium)."""
    session.install("-e", ".[redis,metrics]", *_group("tests"))
    session.run("pytest", "-m", "browser", *session.posargs)


@nox.session(default=False)
def border_latest(session: nox.Session) -> None:
    """The border tests against the newest trio-websocket and wsproto (before widening the pins).

    ``serve`` uses neither's internals; ``manager.accept`` and the client pool go
    through ``_border.py``, which these tests pin attribute by attribute.
    """
    session.install("-e", ".[redis]", *_group("tests"))
    session.install("--upgrade", "trio-websocket", "wsproto")
    session.run("python", "-m", "pip", "show", "trio-websocket", "wsproto")
    session.run("pytest", "tests/test_border.py", "tests/test_transport.py", *session.posargs)


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """Benchmarks against the peers; writes bench/results/.

    ``nox -s bench -- bench/stack_fanout.py ...`` runs that bench script instead of run.py.
    """
    session.install("-e", ".[redis]", *_group("bench"))
    if session.posargs and session.posargs[0].endswith(".py"):
        session.run("python", *session.posargs)
    else:
        session.run("python", "bench/run.py", *session.posargs)
