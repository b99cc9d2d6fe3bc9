"""What every tracker is given and must do. A tracker sends what the results folder already holds (a cell's
config, its history.csv rows as they are written, its record when it ends) to a place people browse; the
folder stays the source of truth, so a tracker may fail without failing anything (bench.trackers.sync)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from bench.config.suite import Log
from bench.registry import register

TRACKERS: dict[str, type[Tracker]] = {}


def tracker(name: str):
    """Class decorator: a Tracker under `name`, the [log] key that turns it on (as `bench log --to NAME`)."""
    return register(TRACKERS, name)


Scalar = int | float | str | bool


@dataclass(frozen=True)
class CellRun:
    """One cell as a tracker sees it: one run per cell, named by its label."""
    id: str
    label: str
    suite: str  # the suite's name
    seed: int
    config: dict[str, Any]  # the resolved config, nested as in result.json
    params: dict[str, Scalar]  # the same as dotted keys with scalar values (lists as their TOML-like text)
    dir: Path  # the cell's folder
    contender: str | None = None  # a tuning trial's contender (its cell id)
    contender_label: str | None = None
    trial: int | None = None  # the trial's number in its contender's study


@dataclass(frozen=True)
class Ending:
    """How a cell's run ends: its status as bench records it, why when it did not finish ("ok" has no reason),
    the final figures (val/test metrics and cost, dotted keys), and the files to attach."""
    status: str  # ok, failed, diverged, oom, pruned, crashed, ...
    reason: str | None
    summary: dict[str, float]
    files: list[Path] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status in ("ok", "pruned")  # a pruned trial ended as its study decided: not a failure


class Run:
    """One cell's run in a tracker, open while the cell is followed."""
    id: str  # kept in the cell's folder: a resumed cell continues this run
    # the last epoch the destination holds: start() may find fewer than the cell's folder counts (a kill came
    # before a tracker's own buffers reached its files) or more (a kill came before the count was saved)
    logged: int = 0

    def log_epochs(self, rows: list[dict[str, float]]) -> None:
        """History rows after `logged` (the caller sends no others), in epoch order; each has `epoch` (the
        step) and numeric columns."""
        raise NotImplementedError

    def finish(self, ending: Ending) -> None:
        """The cell ended: final figures, files, the run's status (failed with the reason when not ok)."""
        raise NotImplementedError

    def suspend(self) -> None:
        """The run stops following an unfinished cell (`bench run` interrupted): it is continued later."""
        raise NotImplementedError


class Tracker:
    """One destination (a tracking store, a folder, a project). Every method may raise: the caller turns any
    error into one warning line and stops using this tracker for the rest of the run."""
    name: ClassVar[str]

    def __init__(self, target: bool | str, log: Log, results: Path, suite: str):
        self.target, self.log, self.results, self.suite = target, log, Path(results), suite

    @property
    def destination(self) -> str:
        """Where runs go, as text: a cell's folder keeps its run id per destination."""
        raise NotImplementedError

    def start(self, cell: CellRun, run_id: str | None, logged: int) -> Run:
        """Open `cell`'s run: a new one when run_id is None, else continue that run, to which `logged` epochs
        were sent (a tracker that can drop later ones, as TensorBoard's purge_step does, drops them)."""
        raise NotImplementedError

    def mark_chosen(self, cell: CellRun, run_id: str, chosen: bool) -> None:
        """A tuning trial is (or no longer is) its contender's chosen one; the chosen one has its test figures
        by now (cell.dir's result.json). Optional: only what changed is told."""

    def end_contender(self, contender: str, chosen: CellRun | None, run_id: str | None) -> None:
        """A tuned contender is done: its chosen trial and that trial's run, or None when no trial completed.
        Optional; told at the end of every run that tuned it, so it must be idempotent."""

    def close(self) -> None:
        """Release connections and writers at the end of a run."""
