"""A plain suite's run: its cells through an executor, parents before their children, in one session.
(A suite with [tune] runs through bench.tune instead; both are started from bench.api.)"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.cell import Cell, RunOptions, RunSummary
from bench.config.suite import Log
from bench.data.listing import run_listings
from bench.errors import UserError
from bench.executors import Local
from bench.prepare import Prepared, longest_first
from bench.progress import LiveView, LogProgress
from bench.session import open_session
from bench.store import is_done
from bench.trackers.sync import following


def run_suite(suite_text: str, name: str, cells: list[Cell], results: Path, *, device: str = "auto",
              progress: LogProgress | None = None, options: RunOptions | None = None,
              executor: Any = None, log: Log | None = None, listed: dict[str, Any] | None = None) -> RunSummary:
    """Run `cells` (in order, or as `executor` spreads them; parents always before their children). A cell
    another live process has claimed is left to it; a finished one is skipped; an unfinished one goes on
    from its checkpoint. One cell's failure is its record, and the suite goes on; KeyboardInterrupt (or
    SIGTERM) stops the suite, leaving every checkpoint resumable. The trackers `log` names follow the cells.
    The cells' data is listed once for the run (bench.data.listing; `listed`: as the plan's preflight read it)."""
    options = options or RunOptions()
    progress = progress or LogProgress()
    executor = executor or Local()
    suite_dir = Path(results).resolve() / name
    chosen = {c.id for c in cells}
    for c in cells:
        if c.parent and c.parent not in chosen and not is_done(suite_dir / c.parent):
            raise UserError(f"cell '{c.label}' starts from cell {c.parent} (model.init_from = "
                            f"'{c.config.model.init_from}'), which has not finished", key="model.init_from",
                            hint="run the parent cell first, or widen --only to include it")
    with open_session(results, name, suite_text, device, executor.name) as session, \
            run_listings(session.dir, [c.config.data for c in cells], listed) as listings, executor, \
            following(log or Log(), session.dir, lambda line: progress.say(line), [c.id for c in cells]):
        # (a lambda: `progress` becomes the live view below when cells run in parallel)
        options = replace(options, listings=str(listings))
        session.note_run(c.id for c in cells)
        summary = RunSummary(session.dir)
        if executor.parallel:  # many cells at once: what they share built first, the longest started first
            cells = _prepared(executor, cells, session, progress, options)
            progress = LiveView(session.dir, cells, getattr(progress, "console", None), progress.stream)
        with progress:
            progress.start_run(len(cells), name)
            for outcome in executor.run(cells, session.dir, session.device, progress, options):
                summary.add(outcome)
    return summary


def _prepared(executor: Any, cells: list[Cell], session: Any, progress: LogProgress,
              options: RunOptions) -> list[Cell]:
    """The cells' splits, caches and initial weights built (those that will train: not finished ones), and
    the cells in the order to start them; run.json says what preparing took and where it ran."""
    todo = [c for c in cells if options.force or not is_done(session.dir / c.id)]
    prepared = executor.prepare(todo, session.dir, progress, options.listings) if todo else Prepared()
    session.note_run((c.id for c in cells), prepared=prepared.note())
    return longest_first(cells, prepared.costs)
