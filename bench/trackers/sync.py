"""Trackers fed from the results folder, in the parent process: the cells' own processes (a child, a Ray task,
a Slurm job) never import a tracker, and one thread here is the only writer to each tracker, so a SQLite
store sees no concurrent writers and a contender's parent run is made once.

While `bench run` runs, a thread reads each followed cell's history.csv (rewritten as each epoch ends) and
result.json, sends the epochs not sent yet, and ends the cell's run when its record appears. The run id and
the epochs sent are kept in the cell's trackers.json, per destination: a resumed cell continues its run and
sends each epoch once, and `bench log` (a finished suite sent later) is the same pass over every cell.

A tracker that fails (a server down, a full disk) is one warning line and is not used again in this run; the
cells go on, the error lands in the records of the cells it left unsent, and `bench log` sends them later."""

from __future__ import annotations

import contextlib
import functools
import json
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from bench.config.suite import Log
from bench.errors import first_line
from bench.hashing import stable_hash
from bench.store import (
    CELL,
    CELL_PLOTS,
    HISTORY,
    PREDICTIONS,
    RESULT,
    TRACKER_STATE,
    TUNE,
    load_record,
    read_history,
    read_json,
    read_result,
    tune_files,
    write_json,
)
from bench.trackers import tracker_class, wanted
from bench.trackers.base import CellRun, Ending, Run, Tracker

POLL_S = 2.0  # how often a running suite's cells are read: an epoch shows up in its tracker within this


class Sync:
    """The trackers `log` names, fed from the cell folders of `suite_dir` (one suite's results)."""

    def __init__(self, log: Log, suite_dir: Path, say: Callable[[str], None], only: Iterable[str] | None = None):
        self.suite_dir, self.say = Path(suite_dir), say
        results, suite = self.suite_dir.parent, self.suite_dir.name
        self.log = log
        self.failed: dict[str, str] = {}  # destination -> its error: not used again in this run
        self.trackers: list[Tracker] = []
        for name, target in wanted(log).items():
            kind = tracker_class(name)
            try:
                self.trackers.append(kind(target, log, results, suite))
            except Exception as e:  # noqa: BLE001 - a store that cannot be opened: a warning, as any failure
                self._warn(name, f"{name}:{target}", e)
        self.open: dict[tuple[str, str], Run] = {}  # (destination, cell id) -> its run while the cell is followed
        self.cells: dict[str, None] = dict.fromkeys(only or ())
        self.ended: set[str] = set()  # cells whose runs all ended: not read again by the polls
        self.lock = threading.Lock()
        self.counts = {t.destination: Counter() for t in self.trackers}  # runs new, continued, ended; epochs

    def follow(self, cell_ids: Iterable[str], force: bool = False) -> None:
        """Follow these cells too; with `force` (they run again from scratch) their next runs are new runs."""
        cell_ids = list(cell_ids)
        if force:
            for cid in cell_ids:
                with contextlib.suppress(FileNotFoundError):
                    (self.suite_dir / cid / TRACKER_STATE).unlink()
        with self.lock:
            self.cells.update(dict.fromkeys(cell_ids))
            self.ended.difference_update(cell_ids)

    def live(self) -> list[Tracker]:
        return [t for t in self.trackers if t.destination not in self.failed]

    def sync(self) -> None:
        """One pass over the followed cells that have not ended."""
        with self.lock:
            cells = [c for c in self.cells if c not in self.ended]
        for cid in cells:
            if not self.live():
                return
            self._cell(self.suite_dir / cid)

    def _cell(self, cell_dir: Path) -> None:
        try:
            cell = read_json(cell_dir / CELL)
        except (OSError, ValueError):
            return  # not started yet (or not a cell): a later pass sees it
        result = read_result(cell_dir)
        try:
            state = read_json(cell_dir / TRACKER_STATE)
        except (OSError, ValueError):
            state = {}
        rows = _numeric_rows(read_history(cell_dir))
        run_info = None
        ended = True
        ending = functools.cache(lambda: _ending(result, cell_dir, self.log))  # once, whatever the trackers
        for t in self.live():
            s = state.setdefault(t.destination, {})
            attempt = _attempt(result)
            if s.get("ended") is not None and s["ended"] == attempt:
                continue
            try:
                run_info = run_info or _cell_run(cell, cell_dir, self.suite_dir)
                ended &= self._send(t, run_info, s, rows, result, attempt, ending, lambda: write_json(
                    cell_dir / TRACKER_STATE, state))
            except Exception as e:  # noqa: BLE001 - any tracker's failure is a warning, never the cell's
                self._fail(t, e)
                ended = False
        if result is not None and ended:
            with self.lock:
                self.ended.add(cell_dir.name)
        with contextlib.suppress(OSError):  # a full disk: the trackers already have it; a rerun resends
            write_json(cell_dir / TRACKER_STATE, state)

    def _send(self, t: Tracker, cell: CellRun, s: dict[str, Any], rows: list[dict[str, float]],
              result: dict[str, Any] | None, attempt: str | None, ending: Callable[[], Ending],
              save: Callable[[], None]) -> bool:
        """Send what `t` has not had of one cell; whether its run ended."""
        key = (t.destination, cell.id)
        if s.get("ended") is not None:  # its run ended, and the cell ran again since (a failed cell retried)
            s.clear()
            self._drop(key)
        run = self.open.get(key)
        count = self.counts[t.destination]
        if run is None:
            run = t.start(cell, s.get("run"), s.get("epochs", 0))
            self.open[key] = run
            count["continued" if s.get("run") else "new"] += 1
            if s.get("run") != run.id:
                s.update(run=run.id, epochs=0)
                save()  # before any epoch: a kill from here on continues this run, never starts a second
        new = [r for r in rows if r["epoch"] > run.logged]  # what the destination lacks, by its own count
        if new:
            run.log_epochs(new)
            count["epochs"] += len(new)
        s["epochs"] = run.logged
        if result is None:
            return False
        run.finish(ending())
        self.open.pop(key, None)
        count["ended"] += 1
        s["ended"] = attempt
        s.pop("error", None)
        return True

    def _drop(self, key: tuple[str, str]) -> None:
        run = self.open.pop(key, None)
        if run is not None:
            with contextlib.suppress(Exception):
                run.suspend()

    def _warn(self, name: str, destination: str, e: Exception) -> None:
        why = first_line(e, typed=True)
        self.failed[destination] = why
        self.say(f"[bench] warning: {name} ({destination}) failed: {why}; the cells go on, the results "
                 f"folder keeps everything, and `bench log {self.suite_dir} --to {name}` sends it later")

    def _fail(self, t: Tracker, e: Exception) -> None:
        self._warn(t.name, t.destination, e)
        for key in [k for k in self.open if k[0] == t.destination]:
            self._drop(key)

    def mark_chosen(self) -> None:
        """Each tuned contender's chosen trial tagged as such (its test figures too), the others untagged."""
        for t in self.live():
            try:
                for cid, chosen in _trials(self.suite_dir, list(self.cells)):
                    state = _state(self.suite_dir / cid).get(t.destination) or {}
                    if state.get("run"):
                        cell = _cell_run(read_json(self.suite_dir / cid / CELL), self.suite_dir / cid,
                                         self.suite_dir)
                        t.mark_chosen(cell, state["run"], chosen)
            except Exception as e:  # noqa: BLE001
                self._fail(t, e)

    def lines(self) -> list[str]:
        """What this pass sent, a line per destination (`bench log`)."""
        out = []
        for t in self.trackers:
            n = self.counts[t.destination]
            state = f"failed: {self.failed[t.destination]}" if t.destination in self.failed else "ok"
            out.append(f"[bench] {t.destination}: {n['new']} new run(s), {n['continued']} continued, "
                       f"{n['ended']} ended, {n['epochs']} epoch(s) sent; {state}")
        return out

    def close(self, interrupted: bool) -> None:
        """The last pass; runs of unfinished cells suspended; each followed cell's record told where it went."""
        self.sync()
        if not interrupted:
            self.mark_chosen()
        for key in list(self.open):
            self._drop(key)
        for t in self.trackers:
            with contextlib.suppress(Exception):
                t.close()
        destinations = list(dict.fromkeys([*(t.destination for t in self.trackers), *self.failed]))
        for cid in self.cells:
            _note_in_record(self.suite_dir / cid, destinations, self.failed)


@contextlib.contextmanager
def following(log: Log, suite_dir: Path, say: Callable[[str], None], cells: Iterable[str] = (),
              force: bool = False) -> Iterator[Sync | None]:
    """While the block runs, `cells` (and those later given to follow()) are sent to the trackers `log`
    names, by a thread that reads their folders every POLL_S seconds; None when `log` names none."""
    if not wanted(log):
        yield None
        return
    sync = Sync(log, suite_dir, say)
    sync.follow(cells, force)
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(POLL_S):
            sync.sync()

    thread = threading.Thread(target=poll, name="bench-trackers", daemon=True)
    thread.start()
    interrupted = True
    try:
        yield sync
        interrupted = False
    finally:
        stop.set()
        thread.join()
        sync.close(interrupted)


def send(log: Log, suite_dir: Path, say: Callable[[str], None]) -> Sync:
    """`bench log`: every cell of a finished (or partly run) suite sent, what was sent before left alone."""
    suite_dir = Path(suite_dir)
    cells = sorted(p.parent.name for p in suite_dir.glob(f"*/{CELL}"))
    sync = Sync(log, suite_dir, say, cells)
    sync.close(interrupted=False)
    return sync


# ------------------------------------------------------------------------------------------------ what is sent
def _attempt(result: dict[str, Any] | None) -> str | None:
    """Which ending of a cell a record is: a failed cell run again ends anew (a new run), while a later change
    to the same ending (a tuned trial's test figures, withdrawn ones) is not a new attempt."""
    if result is None:
        return None
    return stable_hash({k: result.get(k) for k in ("status", "error", "epochs_run", "best_epoch")}, 12)


def _numeric_rows(rows: list[dict[str, str]]) -> list[dict[str, float]]:
    out = []
    for row in rows:
        values = {}
        for k, v in row.items():
            with contextlib.suppress(TypeError, ValueError):
                values[k] = float(v)
        if "epoch" in values:
            values["epoch"] = int(values["epoch"])
            out.append(values)
    return out


def flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested mapping as dotted keys (`train.lr`), leaves as they are."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _scalar(value: Any) -> int | float | str | bool:
    if isinstance(value, bool | int | float | str):
        return value
    return "none" if value is None else json.dumps(value, sort_keys=True, default=str)


def _cell_run(cell: dict[str, Any], cell_dir: Path, suite_dir: Path) -> CellRun:
    config = cell["config"]
    tune = cell.get("tune") or {}
    return CellRun(id=cell["id"], label=cell["label"], suite=suite_dir.name, seed=int(config.get("seed", 0)),
                   config=config, params={k: _scalar(v) for k, v in flat(config).items()}, dir=cell_dir,
                   contender=tune.get("contender"), contender_label=tune.get("label") or tune.get("contender"),
                   trial=tune.get("trial"))


def _ending(result: dict[str, Any], cell_dir: Path, log: Log) -> Ending:
    summary = {k: float(v) for k, v in flat({"metrics": result.get("metrics") or {},
                                             "cost": result.get("cost") or {}}).items()
               if isinstance(v, int | float) and not isinstance(v, bool)}
    summary = {k.removeprefix("metrics."): v for k, v in summary.items()}  # val.top1_error, cost.wall_time_s
    for k in ("best_epoch", "epochs_run"):
        if isinstance(result.get(k), int):
            summary[k] = float(result[k])
    files = [cell_dir / name for name in (RESULT, CELL, HISTORY) if (cell_dir / name).is_file()]
    if result.get("status") == "ok":  # its learning curves, PR curves and confusion matrix, as `bench report --plots`
        from bench.plots import cell_plots

        files += cell_plots(load_record(cell_dir), cell_dir / CELL_PLOTS)
    if log.predictions and (cell_dir / PREDICTIONS).is_file():
        files.append(cell_dir / PREDICTIONS)
    status = result.get("status", "failed")
    return Ending(status=status, reason=None if status == "ok" else str(result.get("error") or status),
                  summary=summary, files=files)


def _state(cell_dir: Path) -> dict[str, Any]:
    try:
        state = read_json(cell_dir / TRACKER_STATE)
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def _trials(suite_dir: Path, cells: list[str]) -> Iterator[tuple[str, bool]]:
    """(trial cell, whether its contender chose it) for every followed cell that is a tuning trial."""
    chosen: dict[str, str | None] = {}
    for cid in cells:
        with contextlib.suppress(OSError, ValueError):
            contender = (read_json(suite_dir / cid / CELL).get("tune") or {}).get("contender")
            if contender is None:
                continue
            if contender not in chosen:
                chosen[contender] = read_json(tune_files(suite_dir / TUNE, contender)[1]).get("chosen")
            yield cid, chosen[contender] == cid


def _note_in_record(cell_dir: Path, destinations: list[str], failed: dict[str, str]) -> None:
    """result.json says where the cell went: each destination's run, or why it is not there (yet)."""
    result = read_result(cell_dir)
    if result is None:
        return
    state = _state(cell_dir)
    note = {}
    for where in destinations:
        s = state.get(where) or {}
        entry = {"run": s.get("run")} if s.get("run") else {}
        if where in failed and s.get("ended") != _attempt(result):
            entry["error"] = failed[where]
        note[where] = entry
    if result.get("trackers") != {**(result.get("trackers") or {}), **note}:
        result["trackers"] = {**(result.get("trackers") or {}), **note}
        with contextlib.suppress(OSError):
            write_json(cell_dir / RESULT, result)
