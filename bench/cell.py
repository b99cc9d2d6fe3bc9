"""The plain types a run passes around, at the bottom of the run path: a `Cell` (one resolved config and
where it sits in its suite), how cells run (`RunOptions`, a tuning trial's `TrialSpec`), what became of one
(`Outcome`, `RunSummary`), and the two ways training stops early on purpose (`Diverged`, `Pruned`).

No torch and no other bench module but config, hashing and errors: a cell's process unpickles these
without importing anything heavy, and every layer above may import this one."""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from bench.config import CellConfig
from bench.hashing import stable_hash

ID_DIGITS = 10  # hex digits of a cell id: the folder name under results/<suite>/


@dataclass(frozen=True)
class Cell:
    config: CellConfig
    label: str
    axes: dict[str, Any]  # the dotted keys that vary across the suite, with this cell's values
    explicit_label: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    grid_values: str = ""  # this cell's [grid] combination (JSON); with label and seed it finds a parent
    parent: str | None = None  # id of the cell whose best weights it starts from (model.init_from)
    dataset: str | None = None  # the [[datasets]] entry's name; a staged cell's parent is on the same one
    contender: str | None = None  # a tuning trial's contender id (bench.tune)

    @property
    def id(self) -> str:
        spec = identity(self.config)
        # A staged cell's numbers depend on its parent's weights: another parent makes another cell.
        if self.parent is not None:
            spec = {**spec, "parent": self.parent}
        # A trial trains without test, in its contender's study: never the contender's own id (a trial whose
        # values are the suite's), nor another contender's trial (one whose tuned key is a [grid] axis).
        if self.contender is not None:
            spec = {**spec, "contender": self.contender}
        return stable_hash(spec, ID_DIGITS)

    @property
    def group(self) -> str:
        """Same for every seed of one cell: reports average over a group."""
        return stable_hash({**identity(self.config), "seed": None}, ID_DIGITS)

    @property
    def seed(self) -> int:
        return self.config.seed


def identity(config: BaseModel) -> dict[str, Any]:
    """What a cell's id hashes: the keys whose values differ from bench's defaults. A key that a new bench
    adds (at a default that keeps today's behaviour) leaves every existing cell's id, and so its finished
    results, as they were; changing a default's meaning is a SCHEMA_VERSION bump, not a silent new id.
    `data.workers` and `data.cache` are left out: each image's augmentation is drawn from its own seed
    (bench.data.loaders), so where the loading runs changes no number, and an image decoded from its file
    has the pixels the cache holds; so is `train.stored_logits`, how the predictions are kept after the
    record's figures are computed."""
    spec = config.model_dump(mode="json", exclude_defaults=True)
    for table, key in (("data", "workers"), ("data", "cache"), ("train", "stored_logits")):
        if isinstance(spec.get(table), dict):
            spec[table].pop(key, None)
            if not spec[table]:
                del spec[table]
    return spec


def value_text(v: Any, digits: int | None = None) -> str:
    """A value as a label shows it: booleans as TOML writes them, floats to `digits` significant digits when
    given (a sampled learning rate), everything else as str() has it (a label names a parent: keep it)."""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float) and digits is not None:
        return f"{v:.{digits}g}"
    return str(v)


def depths(cells: list[Cell]) -> dict[str, int]:
    """Each cell's depth in its chain of parents within `cells` (0: no parent among them); expand() orders
    parents first, and so must `cells`."""
    depth: dict[str, int] = {}
    for c in cells:
        depth[c.id] = depth[c.parent] + 1 if c.parent in depth else 0
    return depth


def select(cells: list[Cell], only: str | None) -> list[Cell]:
    """--only GLOB matches a cell's id or label."""
    if not only:
        return cells
    return [c for c in cells if fnmatch.fnmatch(c.id, only) or fnmatch.fnmatch(c.label, only)]


def resolved_config(cell: Cell) -> dict[str, Any]:
    """Every key of the cell's config, defaults included, as cell.json and result.json record it."""
    return cell.config.model_dump(mode="json")


def cell_record(cell: Cell, trial: TrialSpec | None = None, attempt: str | None = None) -> dict[str, Any]:
    """What cell.json holds: the cell as its suite expanded it (and, for a trial, whose study it is in), and
    which attempt at it the folder's files are (a token its result.json repeats)."""
    record = {"id": cell.id, "group": cell.group, "label": cell.label, "axes": cell.axes, "parent": cell.parent,
              "config": resolved_config(cell), "attempt": attempt}
    if trial is not None:  # which contender's study this cell is a trial of (bench.tune)
        record["tune"] = {"contender": trial.contender, "label": trial.contender_label, "trial": trial.number,
                          "params": trial.params}
    return record


@dataclass(frozen=True)
class TrialSpec:
    """A tuning trial's part in its cell's run (bench.tune owns the rest): wherever the cell runs, it trains on
    validation only, and with a pruner reports every epoch to its study. Plain data, so that unpickling it
    in a cell's process imports nothing."""
    contender: str  # the contender's cell id, which is also its study's name
    number: int  # the trial's number in that study
    params: dict[str, Any]  # the sampled values, by dotted key
    journal: str  # the study's journal file (absolute)
    pruner: str = "none"
    warmup_epochs: int = 1
    startup_trials: int = 5  # the median pruner's n_startup_trials
    metric: str = "val_error"
    contender_label: str = ""  # what trackers name the contender's parent run


@dataclass(frozen=True)
class RunOptions:
    """How cells run, as opposed to what they are: nothing here changes a cell's id. On the CPU, `threads`
    can change the last bits of a cell's numbers (reductions split otherwise): each record says how many."""
    force: bool = False  # rerun finished cells, from epoch 1
    checkpoint: bool = True  # save every epoch, and resume from the last
    keep_checkpoint: bool = False  # keep checkpoint.pt once the cell has finished
    isolate: bool = True  # each cell in a child process, so a crash is that cell's record
    threads: int | None = None  # torch threads per cell (per rank); None: torch's default (every core)
    ranks: int = 1  # processes per cell ([resources] processes on the CPU, gpus on CUDA): bench.distributed
    cpus: int | None = None  # the cell's CPUs per rank, as its executor shares them (data.workers = "auto")
    # cell id -> its tuning trial (bench.tune): trained on validation only, its epochs reported to its study
    trials: Mapping[str, TrialSpec] = field(default_factory=dict)
    listings: str | None = None  # the run's listing of its data (bench.data.listing): no cell lists it again


@dataclass(frozen=True)
class Outcome:
    """What became of one attempt at a cell, small and picklable: it travels back from Ray and Slurm workers."""
    cell: str
    # ok | failed | diverged | pruned | oom | crashed | skipped (finished earlier) | busy (running elsewhere)
    state: str
    detail: str = ""  # the one-line error, why it was skipped, or its errors


@dataclass
class RunSummary:
    suite_dir: Path
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (cell id, one-line error)
    busy: list[str] = field(default_factory=list)  # claimed by another live process

    def add(self, outcome: Outcome) -> None:
        into = {"ok": self.ran, "skipped": self.skipped, "busy": self.busy}.get(outcome.state)
        if into is not None:
            into.append(outcome.cell)
        else:
            self.failed.append((outcome.cell, outcome.detail))


class Diverged(Exception):
    """Training blew up: a result, not a crash (study 004's lr sweep diverges at 1e-2)."""

    def __init__(self, epoch: int, loss: float, limit: float, history: list[dict[str, Any]]):
        self.epoch, self.loss, self.limit, self.history = epoch, loss, limit, history
        super().__init__(f"diverged at epoch {epoch}: mean training loss {loss:.4g} "
                         + ("is not finite" if not math.isfinite(loss) else f"> {limit:.4g}")
                         + "; lower train.lr, or add warmup_epochs or clip_grad")


class Pruned(Exception):
    """Raised by an on_epoch callback to end training after this epoch as a result, not a crash: a tuning
    trial that its pruner judged hopeless (bench.tune). fit adds the history so far, as for Diverged."""

    def __init__(self, epoch: int, why: str):
        self.epoch, self.history = epoch, []
        self.cost: dict[str, float] = {}  # set by bench.execute: training and pruner-report seconds
        super().__init__(why)
