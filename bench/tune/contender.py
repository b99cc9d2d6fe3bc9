"""One contender's tuning: its Optuna study in a journal file, the lock that makes one `bench run` its only
asker, its trials asked for and told, the choice on validation, the one test, and its record."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from bench.cell import Cell, TrialSpec
from bench.config import Tune
from bench.errors import UserError
from bench.execute import evaluate_test, withdraw_test
from bench.hashing import stable_hash
from bench.locks import FileLock
from bench.store import read_json, read_result, tune_files, write_json
from bench.tune.pruning import PRUNERS, journal
from bench.tune.space import grid_space, suggest, trial_cell


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
METRICS = {"val_error": "top1_error", "val_loss": "loss"}  # tune.metric -> its name in result.json's metrics.val
STATES = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed",
          TrialState.RUNNING: "running", TrialState.WAITING: "running"}
FINAL = ("ok", "pruned", "diverged")  # a trial cell's record that is its result: never trained again


def sampler(tune: Tune, contender: str, number: int) -> optuna.samplers.BaseSampler:
    """The sampler that draws trial `number` of a contender. A seeded Optuna sampler keeps one generator for
    the life of its object, which a resumed run (or one with a raised budget) would start over: seeded anew
    for every trial, a trial's values depend only on the seed, the contender, its number and the trials
    before it, however many runs it took to get there. The grid's order is drawn once from the seed (trial n
    takes its n-th point), so its seed leaves the number out."""
    draw = [tune.seed, contender] + ([] if tune.sampler == "grid" else [number])
    return SAMPLERS[tune.sampler](tune, int(stable_hash(draw, 8), 16))


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
        self.journal, self.path, lock = tune_files(tune_dir, cell.id)
        self.lock = FileLock(lock)
        self.overhead, self.earlier_overhead = 0.0, 0.0  # the tuning machinery's own seconds
        self.deferred: set[int] = set()  # running trials whose cell another process holds: left to it
        self.chosen: str | None = None
        self.test: dict[str, float] | None = None
        self.test_eval_s: float | None = None
        self.earlier_test_eval_s: float | None = None
        self.test_error: str | None = None
        # test figures of trials chosen before the choice changed (a raised or lowered budget): withdrawn
        # from their cells, kept here, so that the record says how often the test split was looked at
        self.superseded: list[dict[str, Any]] = []
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
                earlier = read_json(self.path)
                self.superseded = list(earlier.get("superseded_tests") or [])
                cost = earlier["cost"]
                self.earlier_overhead, self.earlier_test_eval_s = float(cost["tuning_overhead_s"]), cost["test_eval_s"]
            self.study = optuna.create_study(
                study_name=self.cell.id, storage=journal(self.journal), direction="minimize", load_if_exists=True,
                pruner=PRUNERS[self.tune.pruner](self.tune.warmup_epochs, self.tune.pruner_startup_trials))
            self._check_cells()
        return True

    def _check_cells(self) -> None:
        """A study whose trials ran as other cells than this bench makes of them (an older bench's ids, or
        another tune.metric, which a trial monitors) would mix figures and lose its trials' folders: refused.
        One trial shows it."""
        recorded = next((t for t in self.study.get_trials(deepcopy=False) if "cell" in t.user_attrs), None)
        if recorded is not None and recorded.user_attrs["cell"] != self._trial_cell(recorded.number, recorded.user_attrs["params"]).id:
            raise UserError(f"trial {recorded.number} ran as cell {recorded.user_attrs['cell']}, which this bench "
                            f"and this tune.metric ({self.tune.metric}) make another cell", file=self.journal,
                            hint="start this tuning over with bench run --force, or go back to the tune.metric "
                                 "it ran with")

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

    def finished_earlier(self) -> list[str]:
        """The trials of the budget that an earlier run finished (their cells; a trial whose values were
        refused has none), as the run summary counts them."""
        return [t.user_attrs.get("cell") or f"{self.cell.id} trial {t.number}" for t in self.counted()
                if t.state.is_finished()]

    def finished(self) -> bool:
        return self.left() == 0 and not any(t.state in (TrialState.RUNNING, TrialState.WAITING)
                                            for t in self.counted())

    def _spec(self, number: int, params: dict[str, Any]) -> TrialSpec:
        return TrialSpec(self.cell.id, number, params, str(self.journal), self.tune.pruner,
                         self.tune.warmup_epochs, self.tune.pruner_startup_trials, self.tune.metric,
                         self.cell.label)

    def _trial_cell(self, number: int, params: dict[str, Any]) -> Cell:
        return trial_cell(self.cell, number, params, self.tune.metric, self.checked)

    def _pending(self, trial: optuna.trial.Trial) -> Pending | None:
        """The trial's cell, or None when its values make a config bench refuses: that trial failed."""
        params = suggest(trial, self.tune.space)
        trial.set_user_attr("params", params)
        try:
            cell = self._trial_cell(trial.number, params)
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
            # the new trial's number: Optuna numbers a study's trials in order, and this run is its only asker
            self.study.sampler = sampler(self.tune, self.cell.id, len(self.study.get_trials(deepcopy=False)))
            return self._pending(self.study.ask())

    def resume(self, frozen: FrozenTrial) -> Pending | None:
        """A trial an interrupted run left running, with the values it was given."""
        with self.timed():
            self.study.sampler = sampler(self.tune, self.cell.id, frozen.number)
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

    def finish(self, suite_dir: Path, device: Any, listings: str | None = None) -> None:
        """Once the budget is spent: choose on validation, then evaluate that trial on test, once (the data as
        the run listed it: bench.data.listing)."""
        if not self.finished():
            with self.timed():
                self.write()
            return
        with self.timed():
            best = self.best()
            cell = self._trial_cell(best.number, best.user_attrs["params"]) if best else None
            self._withdraw_tests(suite_dir, cell.id if cell is not None else None)
        earlier = read_result(suite_dir / cell.id) if cell is not None else None
        if earlier and "test" in earlier.get("metrics", {}):  # tested by an earlier run: test is looked at once
            self.chosen, self.test, self.test_error = cell.id, earlier["metrics"]["test"], None
            self.test_eval_s = self.earlier_test_eval_s
        elif cell is not None:
            start = time.perf_counter()
            try:
                self.test = evaluate_test(cell, suite_dir, device, listings).get("test")
                self.chosen, self.test_error = cell.id, None
            except Exception as e:  # recorded; the next run tries again
                self.test_error = f"{type(e).__name__}: {e}"
            self.test_eval_s = time.perf_counter() - start
        with self.timed():
            self.write()

    def _withdraw_tests(self, suite_dir: Path, chosen: str | None) -> None:
        """Test figures in any trial's cell but the chosen one's are an earlier choice's (the budget changed
        since): out of its predictions.npz and result.json, so that nothing reads them as valid, and into the
        record's superseded_tests, which is written first: a kill between the two, or during the new choice's
        test, must not erase that the test split was looked at."""
        numbers = {}
        for t in self.study.get_trials(deepcopy=False):
            numbers.setdefault(t.user_attrs.get("cell"), t.number)
        for cid, number in numbers.items():
            result = read_result(suite_dir / cid) if cid not in (None, chosen) else None
            tested = {k: v for k, v in ((result or {}).get("metrics") or {}).items() if k.startswith("test")}
            if not tested:
                continue
            if not any((e["trial"], e["cell"]) == (number, cid) for e in self.superseded):  # not after a kill
                self.superseded.append({"trial": number, "cell": cid, "metrics": tested})
                self.write()
            withdraw_test(suite_dir / cid, result)

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
            # the test split's looks: the chosen trial's, and each earlier choice's (withdrawn)
            "test_looks": len(self.superseded) + (self.test is not None), "superseded_tests": self.superseded,
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


def final_result(cell_dir: Path) -> dict[str, Any] | None:
    """The trial's record if it is its result (ok, pruned, diverged), else None."""
    record = read_result(cell_dir)
    return record if isinstance(record, dict) and record.get("status") in FINAL else None
