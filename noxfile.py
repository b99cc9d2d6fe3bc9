"""CI and developer sessions. Each runs in the environment nox is started from (the project's venv,
installed by `pip install -e '.[dev]'`): one torch install serves every session instead of one each."""

from pathlib import Path

import nox

nox.options.default_venv_backend = "none"
nox.options.sessions = ["lint", "tests", "smoke"]


@nox.session
def tests(session: nox.Session) -> None:
    """The unit and end-to-end tests, on the CPU, one worker per core (pyproject's addopts): all but the slow."""
    session.run("pytest", *session.posargs)


@nox.session
def slow(session: nox.Session) -> None:
    """The tests marked slow, which the default run leaves out (CI runs them after `nox -s tests`)."""
    session.run("pytest", "-m", "slow", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.run("ruff", "check", "bench", "tests", "benchmarks", "docs", "noxfile.py")


@nox.session
def smoke(session: nox.Session) -> None:
    """Every shipped suite, every cell, on tiny stand-in data: does each one run end to end?"""
    results = Path(session.create_tmp()) / "smoke-results"
    for suite in sorted(Path("suites").glob("*.toml")):
        session.run("bench", "run", str(suite), "--smoke", "--results", str(results))
        session.run("bench", "report", str(results / f"{suite.stem}-smoke"))


@nox.session
def gpu(session: nox.Session) -> None:
    """The checks that need a CUDA device (skipped without one): cells on the GPU, their synchronised timings
    and allocator figures, deterministic cells repeating bit for bit, augmentation replayed on the GPU; then the
    loader's and the device augmentation's benchmarks."""
    found = session.run("python", "-c", "import torch; print(torch.cuda.is_available())", silent=True)
    if "True" not in str(found):
        session.skip("no CUDA device here")
    session.run("pytest", "-m", "gpu", "-n", "0", "-p", "no:cacheprovider", *session.posargs)
    session.run("pytest", "benchmarks/test_loader.py", "benchmarks/test_device_augment.py", "--benchmark-only",
                "-n", "0", "-p", "no:cacheprovider")


@nox.session
def docs(session: nox.Session) -> None:
    """The documentation site, strictly: a broken link or anchor fails it (the reference pages from the code)."""
    session.run("mkdocs", "build", "--strict", "--site-dir", str(Path(session.create_tmp()) / "site"),
                *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Speed benchmarks (pytest-benchmark); each asserts a ratio against a baseline run in the same process."""
    # in one process (-n 0): pytest-benchmark turns itself off under xdist's workers
    session.run("pytest", "benchmarks", "--benchmark-only", "-n", "0", "-p", "no:cacheprovider", *session.posargs)
