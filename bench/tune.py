"""Tuning (`[tune]`, issue 12): every cell of the suite is a *contender* with an Optuna study of its own and
the same budget of trials, chosen on validation only; the chosen trial alone is then evaluated on test, once.

A trial is an ordinary cell: its config is the contender's with the sampled values set, and the runner
trains it as any other (claims, checkpoints, resume, any executor), without the test split. This module
only asks Optuna for parameters, turns them into cells, runs them in waves through the executor, tells
Optuna what became of them and writes each contender's record. A study lives in a journal file beside the
cells (results/<suite>/tune/<contender>.journal), so a killed tuning run resumes: finished trials count
toward the budget, running ones finish with the parameters they were given (their cells resume from their
checkpoints), and only then are new ones asked for.

results/<suite>/tune/
  <contender>.journal     the Optuna study (JournalStorage): trials, parameters, states, reported epochs
  <contender>.json        the contender's record (see `Contender.record`): its trials, the chosen one, the cost
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from pydantic import ValidationError

from bench.config import CellConfig, Dimension, Suite, Tune, validation_error
from bench.errors import UserError
from bench.hashing import stable_hash
from bench.locks import FileLock
from bench.progress import LiveView, LogProgress
from bench.runner import RunOptions, TrialSpec, _sigterm_interrupts, evaluate_test, resolve_device
from bench.store import RUN, atomic_write_text, read_json, write_json
from bench.suite import Cell, check_names, set_dotted
from bench.train import Pruned

TUNE = "tune"  # the folder under results/<suite>/ that holds the studies and the contenders' records

# Optuna logs every trial at INFO; bench prints its own line per trial
optuna.logging.set_verbosity(optuna.logging.WARNING)

class GridSampler(optuna.samplers.GridSampler):
    """Optuna's GridSampler, without the study.stop() it calls once the grid is covered: that stops
    study.optimize, and raises under ask/tell. bench stops at the budget, which check_space keeps within
    the grid."""

    def after_trial(self, study, trial, state, values) -> None:
        pass


SAMPLERS: dict[str, Callable[[Tune, int], optuna.samplers.BaseSampler]] = {
    "tpe": lambda tune, seed: optuna.samplers.TPESampler(
        seed=seed, **({"n_startup_trials": tune.startup_trials} if tune.startup_trials else {})),
    "random": lambda tune, seed: optuna.samplers.RandomSampler(seed=seed),
    "grid": lambda tune, seed: GridSampler(grid_space(tune.space), seed=seed),
}
# a trial reports its validation metric after every epoch (step = epoch, from 1): warmup_epochs = 1 lets the
# median pruner stop a trial after its first epoch
PRUNERS: dict[str, Callable[[int, int], optuna.pruners.BasePruner]] = {
    "none": lambda warmup, startup: optuna.pruners.NopPruner(),
    "median": lambda warmup, startup: optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=warmup),
    "halving": lambda warmup, startup: optuna.pruners.SuccessiveHalvingPruner(),
}
METRICS = {"val_error": "top1_error", "val_loss": "loss"}  # tune.metric -> its name in result.json's metrics.val
STATES = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed",
          TrialState.RUNNING: "running", TrialState.WAITING: "running"}
FINAL = ("ok", "pruned", "diverged")  # a trial cell's record that is its result: never trained again


def journal(path: Path | str) -> optuna.storages.JournalStorage:
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))


# ----------------------------------------------------------------------------------------- the space
def _encoded(dim: Dimension) -> bool:
    """Optuna's categorical choices are scalars; lists and tables (an augment list, head_hidden) go as JSON."""
    return any(not isinstance(c, str | int | float | bool | type(None)) for c in dim.choices or [])


def _choices(dim: Dimension) -> list[Any]:
    return [json.dumps(c, sort_keys=True) for c in dim.choices] if _encoded(dim) else list(dim.choices)


def grid_points(dim: Dimension) -> list[Any]:
    """A dimension's grid: its choices, or low, low + step, ... up to high."""
    if dim.choices is not None:
        return _choices(dim)
    n = int(math.floor((dim.high - dim.low) / dim.step + 1e-9)) + 1
    if dim.integer:
        return [int(dim.low + i * int(dim.step)) for i in range(n)]
    return [float(dim.low + i * dim.step) for i in range(n)]


def grid_space(space: dict[str, Dimension]) -> dict[str, list[Any]]:
    return {key: grid_points(dim) for key, dim in space.items()}


def suggest(trial: optuna.trial.Trial, space: dict[str, Dimension]) -> dict[str, Any]:
    """One value per key, as Optuna's suggest_* draws it (a trial that has them already gets them back)."""
    params = {}
    for key, dim in space.items():
        if dim.choices is not None:
            value = trial.suggest_categorical(key, _choices(dim))
            params[key] = json.loads(value) if _encoded(dim) else value
        elif dim.integer:
            params[key] = trial.suggest_int(key, dim.low, dim.high, step=int(dim.step or 1), log=dim.log)
        else:
            params[key] = trial.suggest_float(key, float(dim.low), float(dim.high), step=dim.step, log=dim.log)
    return params


def _probes(dim: Dimension) -> list[Any]:
    """Values that show whether a key takes a range: both ends and one inside (off the integers, so that a
    float range over an integer key is refused before it is sampled)."""
    if dim.choices is not None:
        return list(dim.choices)
    if dim.integer:
        return [dim.low, dim.high]
    low, high = float(dim.low), float(dim.high)
    inside = math.sqrt(low * high) if dim.log else low + 0.382 * (high - low)
    return [low, high, inside]


def trial_config(config: CellConfig, params: dict[str, Any], checked: dict | None = None) -> CellConfig:
    """`config` with the sampled values set, validated as a suite's cell is; UserError(key=...) if refused."""
    tree = config.model_dump(mode="json")
    for key, value in params.items():
        set_dotted(tree, key, value)
    try:
        out = CellConfig.model_validate(tree)
    except ValidationError as e:
        raise validation_error(e, None, model=CellConfig) from None
    check_names(out, checked)
    return out


def trial_cell(contender: Cell, number: int, params: dict[str, Any], checked: dict | None = None) -> Cell:
    """The trial as a cell: the contender with the sampled values (its id follows from its config)."""
    config = trial_config(contender.config, params, checked)
    return dataclasses.replace(contender, config=config, label=f"{contender.label} trial {number}",
                               axes={**contender.axes, **params}, overrides={**contender.overrides, **params})


def check_space(suite: Suite, contenders: list[Cell]) -> None:
    """Refuse, on one line naming the key, a [tune] table that no trial could run: a key the cells do not
    have, a range a key's type or bounds refuse for some contender (probed at both ends and inside), a grid
    with fewer points than trials, or staged cells."""
    tune = suite.tune
    if tune is None:
        return
    if any(c.parent or c.config.model.init_from for c in contenders):
        raise UserError("[tune] and model.init_from do not combine: a child would not know which trial of its "
                        "parent to start from", file=suite.path, key="tune",
                        hint="tune the parent in a suite of its own, then start from its chosen trial's weights "
                             "with model.pretrained = \"results/<suite>/<trial>/best.safetensors\"")
    checked: dict = {}
    for key, dim in tune.space.items():
        where = f'tune.space."{key}"'
        if dim.integer and dim.step is not None and not float(dim.step).is_integer():
            raise UserError(f"an integer range needs an integer step, not {dim.step}", file=suite.path, key=where)
        for value in _probes(dim):
            for contender in contenders:
                try:
                    trial_config(contender.config, {key: value}, checked)
                except UserError as e:
                    reason = e.reason if e.reason == "unknown key" else f"{e.reason} (value {value!r})"
                    raise UserError(reason, file=suite.path, key=where, hint=e.hint) from None
    if tune.sampler == "grid":
        points = math.prod(len(grid_points(d)) for d in tune.space.values())
        if tune.trials > points:
            raise UserError(f"the grid has {points} point(s), fewer than trials = {tune.trials}: the rest would "
                            "repeat them", file=suite.path, key="tune.trials", hint=f"set trials = {points}")


# ----------------------------------------------------------------------------------------- in the trial
class EpochReporter:
    """on_epoch of a trial with a pruner, in the trial's own process (a child, a Ray task, a Slurm job): the
    epoch's validation metric goes to the study, reopened from its journal file, and Pruned is raised when the
    pruner judges the trial hopeless. `seconds` is what that cost: tuning's time, not training's."""

    def __init__(self, spec: TrialSpec, train: Any):
        start = time.perf_counter()
        self.spec = spec
        # the figure of the weights that validation selects (with a weight EMA, the average's columns)
        self.column = spec.metric + ("_ema" if train.ema and train.ema_select == "ema" else "")
        study = optuna.load_study(study_name=spec.contender, storage=journal(spec.journal),
                                  sampler=optuna.samplers.RandomSampler(),  # samples nothing here
                                  pruner=PRUNERS[spec.pruner](spec.warmup_epochs, spec.startup_trials))
        trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, spec.number)
        self.trial = optuna.trial.Trial(study, trial_id)
        self.seconds = time.perf_counter() - start

    def __call__(self, row: dict[str, Any]) -> None:
        start = time.perf_counter()
        value = float(row[self.column])
        self.trial.report(value, row["epoch"])
        prune = self.trial.should_prune()
        self.seconds += time.perf_counter() - start
        if prune:
            raise Pruned(row["epoch"], f"pruned after epoch {row['epoch']} by the {self.spec.pruner} pruner "
                                       f"({self.spec.metric} {value:.4f})")


# ----------------------------------------------------------------------------------------- one contender
@dataclass
class Pending:
    """A trial asked for (or left running by an earlier run) and its cell, waiting for its wave."""
    contender: Contender
    number: int
    cell: Cell
    spec: TrialSpec


class Contender:
    """One contender's tuning: its Optuna study (journal file), the lock that makes one `bench run` its
    only asker, and its record."""

    def __init__(self, cell: Cell, tune: Tune, tune_dir: Path, checked: dict):
        self.cell, self.tune, self.checked = cell, tune, checked
        self.journal = tune_dir / f"{cell.id}.journal"
        self.path = tune_dir / f"{cell.id}.json"
        self.lock = FileLock(tune_dir / f"{cell.id}.lock")
        self.overhead, self.earlier_overhead = 0.0, 0.0  # the tuning machinery's own seconds
        self.deferred: set[int] = set()  # running trials whose cell another process holds: left to it
        self.chosen: str | None = None
        self.test: dict[str, float] | None = None
        self.test_eval_s: float | None = None
        self.earlier_test_eval_s: float | None = None
        self.test_error: str | None = None
        self.study: optuna.Study | None = None

    @contextlib.contextmanager
    def timed(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.overhead += time.perf_counter() - start

    def open(self, force: bool) -> bool:
        """Lock and load (or create) the study; False when another live `bench run` is tuning it."""
        if not self.lock.acquire(blocking=False):
            return False
        with self.timed():
            if force:  # --force: tuning starts over (and its trial cells train again from epoch 1)
                self.journal.unlink(missing_ok=True)
                self.path.unlink(missing_ok=True)
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                cost = read_json(self.path)["cost"]
                self.earlier_overhead, self.earlier_test_eval_s = float(cost["tuning_overhead_s"]), cost["test_eval_s"]
            self.study = optuna.create_study(
                study_name=self.cell.id, storage=journal(self.journal), direction="minimize", load_if_exists=True,
                pruner=PRUNERS[self.tune.pruner](self.tune.warmup_epochs, self.tune.pruner_startup_trials))
            # One stream per contender. A seeded sampler's generator starts over in every process, so a
            # resumed run would draw the first run's values again: its seed also counts the trials so far.
            earlier = len(self.study.trials)
            seed = int(stable_hash([self.tune.seed, self.cell.id] + ([earlier] if earlier else []), 8), 16)
            self.study.sampler = SAMPLERS[self.tune.sampler](self.tune, seed)
        return True

    def close(self) -> None:
        self.lock.release()

    def counted(self) -> list[FrozenTrial]:
        """The trials of the budget, by number (a budget lowered since leaves the later ones out)."""
        return [t for t in self.study.get_trials(deepcopy=False) if t.number < self.tune.trials]

    def left(self) -> int:
        return self.tune.trials - len(self.counted())

    def running(self) -> list[FrozenTrial]:
        return [t for t in self.counted() if t.state in (TrialState.RUNNING, TrialState.WAITING)
                and t.number not in self.deferred]

    def finished(self) -> bool:
        return self.left() == 0 and not any(t.state in (TrialState.RUNNING, TrialState.WAITING)
                                            for t in self.counted())

    def _spec(self, number: int, params: dict[str, Any]) -> TrialSpec:
        return TrialSpec(self.cell.id, number, params, str(self.journal), self.tune.pruner,
                         self.tune.warmup_epochs, self.tune.pruner_startup_trials, self.tune.metric)

    def _pending(self, trial: optuna.trial.Trial) -> Pending | None:
        """The trial's cell, or None when its values make a config bench refuses: that trial failed."""
        params = suggest(trial, self.tune.space)
        trial.set_user_attr("params", params)
        try:
            cell = trial_cell(self.cell, trial.number, params, self.checked)
        except UserError as e:
            trial.set_user_attr("status", "failed")
            trial.set_user_attr("error", f"sampled values refused: {e.line()}")
            self.study.tell(trial.number, state=TrialState.FAIL)
            self.write()
            return None
        trial.set_user_attr("cell", cell.id)
        return Pending(self, trial.number, cell, self._spec(trial.number, params))

    def ask(self) -> Pending | None:
        with self.timed():
            return self._pending(self.study.ask())

    def resume(self, frozen: FrozenTrial) -> Pending | None:
        """A trial an interrupted run left running, with the values it was given."""
        with self.timed():
            return self._pending(optuna.trial.Trial(self.study, frozen._trial_id))

    def tell(self, number: int, result: dict[str, Any] | None) -> None:
        """What became of a trial's cell, from its result.json: ok -> COMPLETE with its validation figure,
        pruned -> PRUNED, anything else (diverged, failed, oom, crashed) -> FAIL."""
        with self.timed():
            status = result.get("status", "failed") if isinstance(result, dict) else "failed"
            value = None
            if status == "ok":
                value = (result.get("metrics", {}).get("val") or {}).get(METRICS[self.tune.metric])
                if not isinstance(value, int | float) or not math.isfinite(value):
                    status, value = "failed", None
            trial_id = self.study._storage.get_trial_id_from_study_id_trial_number(self.study._study_id, number)
            cost = (result or {}).get("cost", {})
            for key, v in {"status": status, "error": (result or {}).get("error"),
                           "train_time_s": _train_time(result), "pruner_s": cost.get("pruner_s", 0.0)}.items():
                self.study._storage.set_trial_user_attr(trial_id, key, v)
            if value is not None:
                self.study.tell(number, float(value))
            else:
                self.study.tell(number, state=TrialState.PRUNED if status == "pruned" else TrialState.FAIL)
            self.write()

    def best(self) -> FrozenTrial | None:
        """The chosen trial: the lowest validation figure among the complete ones; a tie goes to the earlier."""
        done = [t for t in self.counted() if t.state == TrialState.COMPLETE]
        return min(done, key=lambda t: (t.value, t.number), default=None)

    def finish(self, suite_dir: Path, device: Any) -> None:
        """Once the budget is spent: choose on validation, then evaluate that trial on test, once."""
        if not self.finished():
            with self.timed():
                self.write()
            return
        with self.timed():
            best = self.best()
            cell = trial_cell(self.cell, best.number, best.user_attrs["params"], self.checked) if best else None
        earlier = _result(suite_dir / cell.id) if cell is not None else None
        if earlier and "test" in earlier.get("metrics", {}):  # tested by an earlier run: test is looked at once
            self.chosen, self.test, self.test_error = cell.id, earlier["metrics"]["test"], None
            self.test_eval_s = self.earlier_test_eval_s
        elif cell is not None:
            start = time.perf_counter()
            try:
                self.test = evaluate_test(cell, suite_dir, device).get("test")
                self.chosen, self.test_error = cell.id, None
            except Exception as e:  # recorded; the next run tries again
                self.test_error = f"{type(e).__name__}: {e}"
            self.test_eval_s = time.perf_counter() - start
        with self.timed():
            self.write()

    def record(self) -> dict[str, Any]:
        trials = []
        for t in self.counted():
            attrs = t.user_attrs
            trials.append({"number": t.number, "cell": attrs.get("cell"), "params": attrs.get("params", t.params),
                           "state": STATES.get(t.state, "failed"),
                           "value": t.value if t.state in (TrialState.COMPLETE, TrialState.PRUNED) else None,
                           "train_time_s": attrs.get("train_time_s"), "status": attrs.get("status"),
                           "error": attrs.get("error")})
        finished = [t for t in trials if t["state"] != "running"]
        pruner_s = sum(t.user_attrs.get("pruner_s") or 0.0 for t in self.counted())
        return {
            "contender": self.cell.id, "label": self.cell.label, "axes": self.cell.axes,
            "space": {k: d.model_dump(exclude_unset=True) for k, d in self.tune.space.items()},
            "budget": self.tune.trials, "sampler": self.tune.sampler, "pruner": self.tune.pruner,
            "metric": self.tune.metric, "seed": self.tune.seed, "trials": trials, "chosen": self.chosen,
            "cost": {"trials": len(finished), "pruned": sum(t["state"] == "pruned" for t in trials),
                     "failed": sum(t["state"] == "failed" for t in trials),
                     "train_time_s": sum(t["train_time_s"] or 0.0 for t in trials),
                     # ask, tell, the journal, selection, records, and the trials' reports to their study;
                     # the final test evaluation is apart, in test_eval_s
                     "tuning_overhead_s": self.earlier_overhead + self.overhead + pruner_s,
                     "test_eval_s": self.test_eval_s},
            "test": self.test,
            **({"test_error": self.test_error} if self.test_error else {}),
        }

    def write(self) -> None:
        write_json(self.path, self.record())


def _train_time(result: dict[str, Any] | None) -> float:
    """A trial cell's training seconds: its cost, or (cells that stopped: pruned, diverged) its epochs'."""
    if not isinstance(result, dict):
        return 0.0
    cost = result.get("cost") or {}
    if isinstance(cost.get("train_time_s"), int | float):
        return float(cost["train_time_s"])
    return float(sum(r.get("train_seconds") or 0.0 for r in result.get("history") or []))


def _result(cell_dir: Path) -> dict[str, Any] | None:
    try:
        return read_json(cell_dir / "result.json")
    except (OSError, ValueError):
        return None


def _final(cell_dir: Path) -> dict[str, Any] | None:
    """The trial's record if it is its result (ok, pruned, diverged), else None."""
    record = _result(cell_dir)
    return record if isinstance(record, dict) and record.get("status") in FINAL else None


# ----------------------------------------------------------------------------------------- the run
@dataclass
class TuneSummary:
    suite_dir: Path
    contenders: list[dict[str, Any]] = field(default_factory=list)  # one row each, for the CLI
    ran: list[str] = field(default_factory=list)  # trial cells trained by this run
    skipped: list[str] = field(default_factory=list)  # trials whose cell had finished earlier
    failed: list[tuple[str, str]] = field(default_factory=list)  # (cell or contender id, one-line error)
    busy: list[str] = field(default_factory=list)  # contenders or trial cells another live run holds


class _Numbered:
    """The run's progress, each trial numbered among all of the run's (an executor numbers its wave alone)."""

    def __init__(self, inner: LogProgress, offset: int, total: int):
        self.inner, self.offset, self.total = inner, offset, total

    def start_cell(self, index: int, total: int, *rest: Any) -> None:
        self.inner.start_cell(self.offset + index, self.total, *rest)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _wave_width(executor: Any, contenders: int) -> int:
    """Trials asked for at once: --jobs; Ray and Slurm without --jobs, one per contender."""
    jobs = getattr(executor, "jobs", 1)
    return jobs if jobs > 1 else (contenders if executor.parallel else 1)


def _next_wave(studies: list[Contender], width: int) -> list[Pending]:
    """Running trials first (an interrupted run's, with their values), then new ones, one contender after
    another in turn so that all of them progress alike."""
    wave: list[Pending] = []
    for s in studies:
        with s.timed():  # reading the journal is tuning's time too
            running = s.running()
        for frozen in running:
            if len(wave) >= width:
                return wave
            pending = s.resume(frozen)
            if pending is not None:
                wave.append(pending)
    while len(wave) < width:
        asking = []
        for s in studies:
            with s.timed():
                if s.left() > 0:
                    asking.append(s)
        if not asking:
            break
        for s in asking:
            if len(wave) >= width:
                break
            pending = s.ask()
            if pending is not None:
                wave.append(pending)
    return wave


def _sort_wave(wave: list[Pending], suite_dir: Path, force: bool, fresh: set[str]
               ) -> tuple[dict[str, Pending], list[Pending]]:
    """(trials to train, by cell id; trials whose cell has its result or gets it in this wave): a trial whose
    config another trial of this run trained, or whose cell finished earlier (unless --force), is told that
    cell's result: the same config and seed give the same numbers."""
    to_run: dict[str, Pending] = {}
    later: list[Pending] = []
    for p in wave:
        with p.contender.timed():
            if p.cell.id in to_run or p.cell.id in fresh or (not force and _final(suite_dir / p.cell.id)):
                later.append(p)
            else:
                to_run[p.cell.id] = p
    return to_run, later


def _settle(to_run: dict[str, Pending], later: list[Pending], outcomes: dict[str, Any], suite_dir: Path,
            fresh: set[str], summary: TuneSummary) -> None:
    """Tell each study what became of its trials of the wave (a cell another run holds stays running)."""
    for cid, p in to_run.items():
        with p.contender.timed():
            outcome = outcomes.get(cid)
            if outcome is not None and outcome.state == "busy":
                p.contender.deferred.add(p.number)
                summary.busy.append(cid)
                continue
            fresh.add(cid)
            result = _result(suite_dir / cid)
            if (result or {}).get("status") in FINAL:
                summary.ran.append(cid)
            else:
                summary.failed.append((cid, (result or {}).get("error") or (outcome.detail if outcome else "")))
        p.contender.tell(p.number, result)
    for p in later:
        with p.contender.timed():
            known = p.cell.id in fresh or _final(suite_dir / p.cell.id) is not None
            if not known:  # its twin of this wave was held elsewhere
                p.contender.deferred.add(p.number)
        if known:
            p.contender.tell(p.number, _result(suite_dir / p.cell.id))


def tune_suite(suite: Suite, suite_text: str, contenders: list[Cell], results: Path, *, device: str = "auto",
               progress: LogProgress | None = None, options: RunOptions | None = None,
               executor: Any = None) -> TuneSummary:
    """Tune every contender to its budget, in waves of trials through `executor`, then choose each one's trial
    on validation and evaluate it on test. Interrupted (Ctrl-C, SIGTERM), it leaves every study and checkpoint
    resumable: the same command goes on where it stopped."""
    from bench.executors import Local

    tune = suite.tune
    assert tune is not None, "tune_suite needs a suite with [tune]"
    options = options or RunOptions()
    progress = progress or LogProgress()
    executor = executor or Local()
    check_space(suite, contenders)
    dev = resolve_device(device)  # before anything is written
    suite_dir = Path(results).resolve() / suite.suite.name
    suite_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(suite_dir / "suite.toml", suite_text)
    checked: dict = {}
    studies = [Contender(c, tune, suite_dir / TUNE, checked) for c in contenders]
    summary = TuneSummary(suite_dir)
    planned: dict[str, None] = {}  # the trial cells this run set out to run, for run.json
    started = time.time()

    def note_run() -> None:
        write_json(suite_dir / RUN, {"cells": list(planned), "executor": executor.name, "started": started,
                                     "tune": [c.id for c in contenders]})

    opened: list[Contender] = []
    try:
        for s in studies:
            if s.open(options.force):
                opened.append(s)
            else:
                summary.busy.append(s.cell.id)
        note_run()
        width, total, count = _wave_width(executor, len(opened)), len(opened) * tune.trials, 0
        fresh: set[str] = set()  # trial cells trained by this run: a repeat of one is told its result
        title = f"{suite.suite.name}: {len(opened)} contender(s), {tune.trials} trials each over " \
                f"{', '.join(tune.space)}"
        # in parallel, a live view of each wave (read from the cell folders) shows the trials, as run_suite's
        outer = contextlib.nullcontext() if executor.parallel else progress
        with outer, _sigterm_interrupts():
            if executor.parallel:
                progress._say(f"[bench] {title}")
            else:
                progress.start_run(total, title)
            while wave := _next_wave(opened, width):
                to_run, later = _sort_wave(wave, suite_dir, options.force, fresh)
                planned.update(dict.fromkeys(p.cell.id for p in wave))
                note_run()
                for p in later:
                    if p.cell.id not in to_run and p.cell.id not in fresh:  # finished before this run
                        summary.skipped.append(p.cell.id)
                        shown = _Numbered(progress, count, total)
                        shown.start_cell(1, 1, p.cell.label, p.cell.id, 1, 1)
                        shown.end_cell("skipped", "finished earlier")
                        count += 1
                outcomes = {}
                if to_run:
                    cells = [p.cell for p in to_run.values()]
                    wave_options = replace(options, trials={cid: p.spec for cid, p in to_run.items()})
                    view = LiveView(suite_dir, cells, getattr(progress, "console", None), progress.stream) \
                        if executor.parallel else contextlib.nullcontext(_Numbered(progress, count, total))
                    with view as shown:
                        for outcome in executor.run(cells, suite_dir, dev, shown, wave_options):
                            outcomes[outcome.cell] = outcome
                    count += len(cells)
                _settle(to_run, later, outcomes, suite_dir, fresh, summary)
        for s in opened:
            s.finish(suite_dir, dev)
            summary.contenders.append(_row(s))
            if s.test_error:
                summary.failed.append((s.cell.id, f"test evaluation of the chosen trial: {s.test_error}"))
    finally:
        for s in studies:
            s.close()
    return summary


def _row(s: Contender) -> dict[str, Any]:
    best = s.best() if s.finished() else None
    record = s.record()
    return {"id": s.cell.id, "label": s.cell.label, "state": "tuned" if s.finished() else "unfinished",
            "trials": record["cost"]["trials"], "budget": s.tune.trials, "metric": s.tune.metric,
            "chosen": s.chosen, "number": best.number if best else None,
            "params": best.user_attrs.get("params") if best else None, "value": best.value if best else None,
            "test": s.test, "cost": record["cost"]}


def describe(row: dict[str, Any]) -> str:
    """One line per contender for the console: what was chosen, on what validation figure."""
    head = f"{row['label']} ({row['id']}): "
    if row["state"] != "tuned":
        return head + f"unfinished, {row['trials']} of {row['budget']} trials done; run again to go on"
    if row["chosen"] is None and row["params"] is None:
        return head + f"no trial of {row['budget']} completed (see results/<suite>/tune/{row['id']}.json)"
    params = " ".join(f"{k.split('.', 1)[1]}={_short(v)}" for k, v in (row["params"] or {}).items())
    test = (row["test"] or {}).get("top1_error")
    cost = row["cost"]
    return (head + f"chose trial {row['number']} ({row['chosen']}) {params}: {row['metric']} {row['value']:.4f}"
            + (f", test_error {test:.4f}" if isinstance(test, float) else "")
            + f"; {cost['trials']} trials ({cost['pruned']} pruned, {cost['failed']} failed), "
              f"{cost['train_time_s']:.1f} s training, {cost['tuning_overhead_s']:.2f} s tuning")


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
