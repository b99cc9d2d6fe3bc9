"""The library's entry point, what the `bench` commands and the tests call: a suite file becomes its checked
cells (`plan`: load, --smoke, expand, the [tune] space, --only, preflight), and those cells run (`run`: a
plain suite through bench.runner, a suite with [tune] through bench.tune)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.cell import Cell, RunOptions, RunSummary, select
from bench.config import Suite, load_suite
from bench.errors import UserError

if TYPE_CHECKING:  # bench.tune loads Optuna: only a tuned suite's run imports it
    from bench.tune.waves import TuneSummary


@dataclass(frozen=True)
class Plan:
    path: Path  # the suite file
    suite: Suite  # as run: rewritten for stand-in data with --smoke
    cells: list[Cell]  # in run order, parents first, with the ids `bench run` uses
    notes: list[str]  # what preflight says for the console (a split carved from the source's train part)


def plan(path: Path | str, *, only: str | None = None, smoke: bool = False, device: str = "auto",
         results: Path | None = None, data: bool = True, force: bool = False, check: bool = True) -> Plan:
    """The cells of the suite file at `path`, validated; with `check`, preflight too (device, files, weights,
    hub, precision; the data itself only with `data`), so that a mistake is one line before anything runs."""
    path = Path(path)
    suite = load_suite(path)
    if smoke:
        from bench.smoke import smoke_suite

        suite = smoke_suite(suite)
    from bench.suite import expand, preflight

    cells = expand(suite)
    if suite.tune is not None:  # every cell is a contender: the space must fit each of them
        from bench.tune.space import check_space

        check_space(suite, cells)
    chosen = select(cells, only)
    if not chosen:
        raise UserError(f"--only '{only}' matches none of the {len(cells)} cells", file=path,
                        hint="match a cell id or label; `bench plan` lists them")
    notes = preflight(suite, chosen, device, data=data, results=results, force=force) if check else []
    return Plan(path, suite, chosen, notes)


def run(planned: Plan, *, results: Path | str = Path("results"), device: str = "auto",
        options: RunOptions | None = None, executor: Any = None, progress: Any = None) -> RunSummary | TuneSummary:
    """Run a plan's cells: a plain suite through bench.runner, a suite with [tune] through bench.tune."""
    suite_text = planned.path.read_text()
    if planned.suite.tune is not None:
        from bench.tune.waves import tune_suite

        return tune_suite(planned.suite, suite_text, planned.cells, Path(results), device=device,
                          progress=progress, options=options, executor=executor)
    from bench.runner import run_suite

    return run_suite(suite_text, planned.suite.suite.name, planned.cells, Path(results), device=device,
                     progress=progress, options=options, executor=executor)
