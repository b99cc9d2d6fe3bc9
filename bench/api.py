"""The library's entry point, what the `bench` commands and the tests call: a suite file becomes its checked
cells (`plan`: load with the command line's overrides, --smoke, expand, the [tune] space, --only,
preflight), what they share built before they run (`prepare`), and those cells run (`run`: a plain suite
through bench.runner, a suite with [tune] through bench.tune); and a suite's results sent to trackers
(`send_results`, `bench log`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.cell import Cell, RunOptions, RunSummary, resolved_config, select
from bench.config import Suite
from bench.config.overrides import Override, blame, config_toml, load, parse, suite_text
from bench.errors import UserError

if TYPE_CHECKING:  # bench.tune loads Optuna: only a tuned suite's run imports it
    from bench.prepare import Prepared
    from bench.trackers.sync import Sync
    from bench.tune.waves import TuneSummary


@dataclass(frozen=True)
class Plan:
    path: Path  # the suite file
    suite: Suite  # as run: with the command line's overrides, rewritten for stand-in data with --smoke
    cells: list[Cell]  # in run order, parents first, with the ids `bench run` uses
    notes: list[str]  # what preflight says for the console (a split carved from the source's train part)
    overrides: tuple[Override, ...] = ()  # the command line's, set in `suite`; the results folder records them
    # each data source as preflight listed it (bench.data.listing): the run hands its cells this listing
    listed: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


def plan(path: Path | str, *, only: str | None = None, smoke: bool = False, device: str = "auto",
         results: Path | None = None, data: bool = True, force: bool = False, check: bool = True,
         overrides: Sequence[str] = ()) -> Plan:
    """The cells of the suite file at `path`, with `overrides` (KEY=VALUE, as on the command line) set in it,
    validated; with `check`, preflight too (device, files, weights, hub, precision; the data itself only with
    `data`), so that a mistake is one line before anything runs. An error in a key an override set names
    the override."""
    given = parse(overrides)
    try:
        return _plan(Path(path), given, only=only, smoke=smoke, device=device, results=results, data=data,
                     force=force, check=check)
    except UserError as e:
        raise blame(e, given) from None


def _plan(path: Path, given: list[Override], *, only: str | None, smoke: bool, device: str,
          results: Path | None, data: bool, force: bool, check: bool) -> Plan:
    suite = load(path, given)
    if smoke:
        from bench.smoke import smoke_suite

        suite = smoke_suite(suite)
    from bench.suite import expand, preflight

    cells = expand(suite)
    if suite.tune is not None:  # every cell is a contender: the space must fit each of them
        from bench.tune.space import check_space

        check_space(suite, cells)
    chosen = _matching(cells, only, "--only", path)
    if check:
        from bench.trackers import check_installed, wanted

        check_installed(wanted(suite.log), file=path)
    listed: dict[str, Any] = {}
    notes = preflight(suite, chosen, device, data=data, results=results, force=force, listed=listed) if check else []
    return Plan(path, suite, chosen, notes, tuple(given), listed)


def _matching(cells: list[Cell], pattern: str | None, option: str, path: Path) -> list[Cell]:
    chosen = select(cells, pattern)
    if not chosen:
        raise UserError(f"{option} '{pattern}' matches none of the {len(cells)} cells", file=path,
                        hint="match a cell id or label; `bench plan` lists them")
    return chosen


def show_config(planned: Plan, pattern: str) -> str:
    """The resolved config, as TOML, of each planned cell whose id or label matches `pattern` (as --only)."""
    chosen = _matching(planned.cells, pattern, "--show-config", planned.path)
    return "\n".join(config_toml(resolved_config(c), f"cell {c.id}: {c.label}") for c in chosen)


def run(planned: Plan, *, results: Path | str = Path("results"), device: str = "auto",
        options: RunOptions | None = None, executor: Any = None, progress: Any = None) -> RunSummary | TuneSummary:
    """Run a plan's cells: a plain suite through bench.runner, a suite with [tune] through bench.tune."""
    text = suite_text(planned.path, planned.overrides)  # as it runs, for the results folder's suite.toml
    if planned.suite.tune is not None:
        from bench.tune.waves import tune_suite

        return tune_suite(planned.suite, text, planned.cells, Path(results), device=device,
                          progress=progress, options=options, executor=executor, listed=planned.listed)
    from bench.runner import run_suite

    return run_suite(text, planned.suite.suite.name, planned.cells, Path(results), device=device,
                     progress=progress, options=options, executor=executor, log=planned.suite.log,
                     listed=planned.listed)


def prepare(planned: Plan, *, results: Path | str = Path("results"), say: Any = print) -> Prepared:
    """Every split, decoded cache and set of initial weights the plan's cells need (a tuned suite's: its
    contenders'), built into results/<suite>/ before any cell runs, and each cell's estimated cost; the data
    listed once (bench.data.listing), as a run lists it."""
    from bench.data.listing import run_listings
    from bench.prepare import prepare_cells

    suite_dir = Path(results).resolve() / planned.suite.suite.name
    suite_dir.mkdir(parents=True, exist_ok=True)
    with run_listings(suite_dir, [c.config.data for c in planned.cells], planned.listed) as listings:
        return prepare_cells(planned.cells, suite_dir, say, str(listings))


def status_rows(target: Path, overrides: Sequence[str], results: Path, smoke: bool) -> list[dict[str, Any]]:
    """`bench status`: each cell's state, from a suite file (every cell, started or not) or a results folder."""
    from bench.status import cell_states

    if target.suffix == ".toml":
        planned = plan(target, smoke=smoke, overrides=overrides, check=False)
        return cell_states(results / planned.suite.suite.name, [(c.id, c.label) for c in planned.cells])
    if overrides:
        raise UserError(f"{overrides[0]} overrides a suite file's key", file=target, hint="name the suite file")
    if not target.is_dir():
        raise UserError(f"no results folder at '{target}'", hint="name a suite file or results/<suite>")
    return cell_states(target, None)


def send_results(suite_dir: Path | str, to: Sequence[str], *, project: str | None = None,
                 entity: str | None = None, say: Any = print) -> Sync:
    """A suite's results, finished or not, sent to the trackers `to` names (NAME, or NAME=TARGET: a tracking
    URI, a folder, W&B's mode); the rest of [log] (project, predictions) as the suite ran with it. What a
    tracker already holds is not sent again (each cell's trackers.json says what went where)."""
    from pydantic import ValidationError

    from bench.config.load import read_suite, validation_error
    from bench.config.suite import Log
    from bench.errors import did_you_mean
    from bench.store import SUITE_FILE, is_suite_dir
    from bench.trackers import PACKAGES
    from bench.trackers.sync import send

    suite_dir = Path(suite_dir)
    if not is_suite_dir(suite_dir):
        raise UserError("not a suite's results folder", file=suite_dir, hint="name results/<suite>, e.g. results/quickstart")
    recorded = read_suite(suite_dir / SUITE_FILE).get("log", {})  # the [log] the suite ran with
    settings = {k: v for k, v in recorded.items() if k not in PACKAGES}
    for item in to:
        name, _, target = item.partition("=")
        if name not in PACKAGES:
            raise UserError(f"unknown tracker '{name}'", key="--to", hint=did_you_mean(name, PACKAGES))
        settings[name] = target or recorded.get(name) or ("online" if name == "wandb" else True)
    settings.update({k: v for k, v in (("project", project), ("entity", entity)) if v is not None})
    try:
        log = Log.model_validate(settings)
    except ValidationError as e:
        raise validation_error(e, suite_dir / SUITE_FILE, prefix="log", model=Log) from None
    return send(log, suite_dir, say)  # a tracker whose package is missing: one line with the install command


def data_configs(cells: Sequence[Cell]) -> list:
    """The distinct data configs of `cells` (workers aside: it does not change the data)."""
    return list({c.config.data.model_dump_json(exclude={"workers"}): c.config.data for c in cells}.values())


def suite_dirs_of(targets: Sequence[Path | None], results: Path) -> list[Path]:
    """The results folders `bench report` names (None: the latest run under `results`), each one a run's."""
    from bench.store import is_suite_dir

    found = []
    for target in targets:
        suite_dir = suite_dir_of(target, results)
        if suite_dir is None or not is_suite_dir(suite_dir):
            raise UserError(f"no run found at '{target or results}'",
                            hint="run `bench run SUITE` first, or name a results/<suite> folder")
        found.append(suite_dir)
    return found


def suite_dir_of(target: Path | None, results: Path) -> Path | None:
    """The results folder a command names: a suite file's, a results/<suite> folder, or the latest in one."""
    from bench.store import is_suite_dir, latest_suite_dir

    if target is None:
        return latest_suite_dir(results)
    if target.is_file() and target.suffix == ".toml":
        from bench.config import load_suite

        return results / load_suite(target).suite.name
    if is_suite_dir(target):
        return target
    return latest_suite_dir(target) if target.is_dir() else None
