"""CI and developer sessions. Each runs in the environment nox is started from (the project's venv,
installed by `pip install -e '.[dev]'`): one torch install serves every session instead of one each."""

from pathlib import Path

import nox

nox.options.default_venv_backend = "none"
nox.options.sessions = ["lint", "tests", "smoke"]


@nox.session
def tests(session: nox.Session) -> None:
    """The unit and end-to-end tests, on the CPU."""
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.run("ruff", "check", "bench", "tests", "benchmarks", "noxfile.py")


@nox.session
def smoke(session: nox.Session) -> None:
    """Every shipped suite, every cell, on tiny stand-in data: does each one run end to end?"""
    results = Path(session.create_tmp()) / "smoke-results"
    for suite in sorted(Path("suites").glob("*.toml")):
        session.run("bench", "run", str(suite), "--smoke", "--results", str(results))
        session.run("bench", "report", str(results / f"{suite.stem}-smoke"))


@nox.session
def bench(session: nox.Session) -> None:
    """Speed benchmarks (pytest-benchmark); each asserts a ratio against a baseline run in the same process."""
    session.run("pytest", "benchmarks", "--benchmark-only", "-p", "no:cacheprovider", *session.posargs)
