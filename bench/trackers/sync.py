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
import copy
import functools
import json
import signal
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from bench.config.load import flatten
from bench.config.suite import Log
from bench.errors import first_line
from bench.hashing import stable_hash
from bench.locks import FileLock
from bench.store import (
    CELL,
    CELL_PLOTS,
    HISTORY,
    PREDICTIONS,
    RESULT,
    TRACKER_LOCK,
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
    """The trackers `log` names, fed from the cell folders of `suite_dir` (one suite's results).

    A cell's files say which attempt at it they are (cell.json's token, repeated by result.json): a cell run
    anew (--force, a failed cell run again) gets new runs, while a resumed one continues its own; a record
    left by an earlier attempt is never sent as the new one's. While this process sends a cell it holds the
    cell's tracker lock: another `bench run` or `bench log` at the same time leaves that cell to it."""

    def __init__(self, log: Log, suite_dir: Path, say: Callable[[str], None]):
        self.suite_dir, self.say, self.log = Path(suite_dir), say, log
        results, suite = self.suite_dir.parent, self.suite_dir.name
        self.failed: dict[str, str] = {}  # destination -> its error: not used again in this run
        self.trackers: list[Tracker] = [tracker_class(name)(target, log, results, suite)
                                        for name, target in wanted(log).items()]
        self.open: dict[tuple[str, str], Run] = {}  # (destination, cell id) -> its run while the cell is followed
        self.locks: dict[str, FileLock] = {}  # cells this process sends (with a run open)
        self.cells: dict[str, None] = {}
        self.seen: dict[str, tuple] = {}  # cell -> its files' stamps at the last pass: unchanged, not read again
        self.held_elsewhere: set[str] = set()
        self.lock = threading.Lock()
        self.counts = {t.destination: Counter() for t in self.trackers}  # runs new, continued, ended; epochs
        import bench.plots  # noqa: F401 - matplotlib imported here, not in the poll thread while the main one imports it

    def follow(self, cell_ids: Iterable[str]) -> None:
        with self.lock:
            self.cells.update(dict.fromkeys(cell_ids))

    def live(self) -> list[Tracker]:
        return [t for t in self.trackers if t.destination not in self.failed]

    def sync(self) -> None:
        """One pass over the followed cells whose files changed since the last."""
        with self.lock:
            cells = list(self.cells)
        for cid in cells:
            if not self.live():
                return
            cell_dir = self.suite_dir / cid
            stamp = tuple(_mtime(cell_dir / name) for name in (CELL, RESULT, HISTORY))
            if self.seen.get(cid) != stamp:
                self.seen[cid] = stamp if self._cell(cell_dir) else None

    def _cell(self, cell_dir: Path) -> bool:
        """Send one cell's news; whether all of it went (False: read the cell again next pass)."""
        try:
            cell = read_json(cell_dir / CELL)
        except (OSError, ValueError):
            return False  # not started yet (or not a cell): a later pass sees it
        lock = self.locks.get(cell_dir.name) or FileLock(cell_dir / TRACKER_LOCK)
        if not lock.held and not lock.acquire(blocking=False):
            self.held_elsewhere.add(cell_dir.name)  # another bench sends it
            return False
        self.locks[cell_dir.name] = lock
        self.held_elsewhere.discard(cell_dir.name)
        attempt = cell.get("attempt")
        result = read_result(cell_dir)
        if result is not None and result.get("attempt") != attempt:
            result = None  # an earlier attempt's record, not yet replaced
        state = _state(cell_dir)
        sent = copy.deepcopy(state)  # what trackers.json holds: written again only if a pass changed it
        rows = _numeric_rows(read_history(cell_dir))
        ending = functools.cache(lambda: _ending(result, cell_dir, self.log))  # once, whatever the trackers
        done = True
        for t in self.live():
            s = state.setdefault(t.destination, {})
            try:
                done &= self._send(t, cell, cell_dir, s, rows, result, ending,
                                   lambda: write_json(cell_dir / TRACKER_STATE, state))
            except Exception as e:  # noqa: BLE001 - any tracker's failure is a warning, never the cell's
                self._fail(t, e)
                done = False
        if state != sent:
            with contextlib.suppress(OSError):  # a full disk: the trackers already have it; a rerun resends
                write_json(cell_dir / TRACKER_STATE, state)
        if not any(k[1] == cell_dir.name for k in self.open):
            self.locks.pop(cell_dir.name).release()
        return done  # a running cell is read again when its files change (a new epoch, its result)

    def _send(self, t: Tracker, cell: dict[str, Any], cell_dir: Path, s: dict[str, Any],
              rows: list[dict[str, float]], result: dict[str, Any] | None, ending: Callable[[], Ending],
              save: Callable[[], None]) -> bool:
        """Send what `t` has not had of one cell's attempt; whether its run ended."""
        key = (t.destination, cell["id"])
        if s.get("attempt") != cell.get("attempt") or "run" not in s:  # a new attempt: a new run
            self._drop(key)
            s.clear()
            s["attempt"] = cell.get("attempt")
        ended = _ended(result)
        if ended is not None and s.get("ended") == ended:
            return True
        run = self.open.get(key)
        count = self.counts[t.destination]
        if run is None:
            run = t.start(_cell_run(cell, cell_dir, self.suite_dir), s.get("run"), s.get("epochs", 0))
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
        s["ended"] = ended
        return True

    def _drop(self, key: tuple[str, str]) -> None:
        run = self.open.pop(key, None)
        if run is not None:
            with contextlib.suppress(Exception):
                run.suspend()

    def _fail(self, t: Tracker, e: Exception) -> None:
        why = first_line(e, typed=True)
        self.failed[t.destination] = why
        self.say(f"[bench] warning: {t.name} ({t.destination}) failed: {why}; the cells go on, the results "
                 f"folder keeps everything, and `bench log {self.suite_dir} --to {t.name}` sends it later")
        for key in [k for k in self.open if k[0] == t.destination]:
            self._drop(key)

    def mark_chosen(self) -> None:
        """Each tuned contender's chosen trial tagged as such (its test figures too), the others untagged, and
        the contender's own run ended; only what changed since it was last told."""
        contenders: dict[str, list[tuple[str, bool]]] = {}
        for cid, contender, chosen in _trials(self.suite_dir, list(self.cells)):
            contenders.setdefault(contender, []).append((cid, chosen))
        for t in self.live():
            try:
                for contender, trials in contenders.items():
                    chosen_run = None
                    for cid, chosen in trials:
                        state = _state(self.suite_dir / cid)
                        s = state.get(t.destination) or {}
                        if not s.get("run"):
                            continue
                        cell = _cell_run(read_json(self.suite_dir / cid / CELL), self.suite_dir / cid,
                                         self.suite_dir)
                        if s.get("chosen") != chosen:
                            t.mark_chosen(cell, s["run"], chosen)
                            s["chosen"] = chosen
                            write_json(self.suite_dir / cid / TRACKER_STATE, state)
                        chosen_run = (cell, s["run"]) if chosen else chosen_run
                    t.end_contender(contender, *(chosen_run or (None, None)))
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
        if self.held_elsewhere:
            out.append(f"[bench] {len(self.held_elsewhere)} cell(s) left to the bench that is sending them")
        return out

    def close(self, interrupted: bool) -> None:
        """The last pass; runs of unfinished cells suspended; each followed cell's record told where it went.
        Ctrl-C or SIGTERM wait until it is done: cut short, it would leave runs open in their trackers."""
        with _signals_held():
            self.seen.clear()
            self.sync()
            if not interrupted:
                self.mark_chosen()
            for key in list(self.open):
                self._drop(key)
            for t in self.trackers:
                with contextlib.suppress(Exception):
                    t.close()
            for lock in self.locks.values():
                lock.release()
            for cid in self.cells:
                if cid not in self.held_elsewhere:
                    _note_in_record(self.suite_dir / cid, [t.destination for t in self.trackers], self.failed)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM held back while the block runs (delivered after it), in the main thread."""
    signals = {signal.SIGINT, signal.SIGTERM}
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)


@contextlib.contextmanager
def following(log: Log, suite_dir: Path, say: Callable[[str], None], cells: Iterable[str] = ()
              ) -> Iterator[Sync | None]:
    """While the block runs, `cells` (and those later given to follow()) are sent to the trackers `log`
    names, by a thread that reads their folders every POLL_S seconds; None when `log` names none."""
    if not wanted(log):
        yield None
        return
    sync = Sync(log, suite_dir, say)  # no tracker touches its destination before its first send
    sync.follow(cells)
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
    """`bench log`: every cell of a suite's results sent, what was sent before left alone."""
    suite_dir = Path(suite_dir)
    sync = Sync(log, suite_dir, say)
    sync.follow(sorted(p.parent.name for p in suite_dir.glob(f"*/{CELL}")))
    sync.close(interrupted=False)
    return sync


# ------------------------------------------------------------------------------------------------ what is sent
def _ended(result: dict[str, Any] | None) -> str | None:
    """How an attempt ended, as its record says: a record that changes this (a resumed failed cell that now
    finishes) ends its run again, one that does not (a tuned trial's test figures added) is not sent again."""
    if result is None:
        return None
    return stable_hash({k: result.get(k) for k in ("status", "error", "epochs_run", "best_epoch")}, 12)


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


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


def _scalar(value: Any) -> int | float | str | bool:
    if isinstance(value, bool | int | float | str):
        return value
    return "none" if value is None else json.dumps(value, sort_keys=True, default=str)


def _cell_run(cell: dict[str, Any], cell_dir: Path, suite_dir: Path) -> CellRun:
    config = cell["config"]
    tune = cell.get("tune") or {}
    return CellRun(id=cell["id"], label=cell["label"], suite=suite_dir.name, seed=int(config.get("seed", 0)),
                   config=config, params={k: _scalar(v) for k, v in flatten(config).items()}, dir=cell_dir,
                   contender=tune.get("contender"), contender_label=tune.get("label") or tune.get("contender"),
                   trial=tune.get("trial"))


def _ending(result: dict[str, Any], cell_dir: Path, log: Log) -> Ending:
    summary = {k: float(v) for k, v in flatten({"metrics": result.get("metrics") or {},
                                                "cost": result.get("cost") or {}}).items()
               if isinstance(v, int | float) and not isinstance(v, bool)}
    summary = {k.removeprefix("metrics."): v for k, v in summary.items()}  # val.top1_error, cost.wall_time_s
    for k in ("best_epoch", "epochs_run"):
        if isinstance(result.get(k), int):
            summary[k] = float(result[k])
    files = [cell_dir / name for name in (RESULT, CELL, HISTORY) if (cell_dir / name).is_file()]
    if result.get("status") == "ok":  # its learning curves, PR curves and confusion matrix, as `bench report --plots`
        from bench.plots import cell_plots

        try:
            files += cell_plots(load_record(cell_dir), cell_dir / CELL_PLOTS)
        except Exception:  # noqa: BLE001 - no figures is no reason to hold back the record
            pass
    if log.predictions and (cell_dir / PREDICTIONS).is_file():
        files.append(cell_dir / PREDICTIONS)
    status = result.get("status", "failed")
    return Ending(status=status, reason=None if status == "ok" else str(result.get("error") or status),
                  summary=summary, files=files)


def _state(cell_dir: Path) -> dict[str, Any]:
    """The cell's trackers.json: per destination, its run, attempt, epochs sent, how it ended."""
    try:
        state = read_json(cell_dir / TRACKER_STATE)
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) and all(isinstance(v, dict) for v in state.values()) else {}


def _trials(suite_dir: Path, cells: list[str]) -> Iterator[tuple[str, str, bool]]:
    """(trial cell, its contender, whether the contender chose it) for every followed tuning trial."""
    chosen: dict[str, str | None] = {}
    for cid in cells:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            contender = (read_json(suite_dir / cid / CELL).get("tune") or {}).get("contender")
            if contender is None:
                continue
            if contender not in chosen:
                chosen[contender] = read_json(tune_files(suite_dir / TUNE, contender)[1]).get("chosen")
            yield cid, contender, chosen[contender] == cid


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
        if where in failed and s.get("ended") != _ended(result):
            entry["error"] = failed[where]
        note[where] = entry
    noted = {**(result.get("trackers") or {}), **note}
    if result.get("trackers") != noted:
        result["trackers"] = noted
        with contextlib.suppress(OSError):
            write_json(cell_dir / RESULT, result)
