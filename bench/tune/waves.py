"""`bench run` of a suite with [tune]: every contender tuned to its budget, in waves of trials through the
executor, in one session (bench.session); then each one's choice on validation and its one test."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.cell import Cell, RunOptions, value_text
from bench.config import Suite
from bench.data.listing import run_listings
from bench.executors import Local
from bench.progress import LiveView, LogProgress
from bench.session import open_session
from bench.store import TUNE, read_result
from bench.trackers.sync import following
from bench.tune.contender import FINAL, Contender, Pending, final_result


@dataclass
class TuneSummary:
    suite_dir: Path
    contenders: list[dict[str, Any]] = field(default_factory=list)  # one row each, for the CLI
    ran: list[str] = field(default_factory=list)  # trial cells trained by this run
    # trials of the budget that had finished before this run, and new ones whose cell had (the same values)
    skipped: list[str] = field(default_factory=list)
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
            if p.cell.id in to_run or p.cell.id in fresh or (not force and final_result(suite_dir / p.cell.id)):
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
            result = read_result(suite_dir / cid)
            if (result or {}).get("status") in FINAL:
                summary.ran.append(cid)
            else:
                summary.failed.append((cid, (result or {}).get("error") or (outcome.detail if outcome else "")))
        p.contender.tell(p.number, result)
    for p in later:
        with p.contender.timed():
            known = p.cell.id in fresh or final_result(suite_dir / p.cell.id) is not None
            if not known:  # its twin of this wave was held elsewhere
                p.contender.deferred.add(p.number)
        if known:
            p.contender.tell(p.number, read_result(suite_dir / p.cell.id))


def tune_suite(suite: Suite, suite_text: str, contenders: list[Cell], results: Path, *, device: str = "auto",
               progress: LogProgress | None = None, options: RunOptions | None = None,
               executor: Any = None, listed: dict[str, Any] | None = None) -> TuneSummary:
    """Tune every contender to its budget, in waves of trials through `executor`, then choose each one's trial
    on validation and evaluate it on test. Interrupted (Ctrl-C, SIGTERM), it leaves every study and checkpoint
    resumable: the same command goes on where it stopped. The [tune] space was checked against every
    contender when the suite was planned (bench.api.plan). The data is listed once for the run, as
    bench.runner.run_suite lists it."""
    tune = suite.tune
    assert tune is not None, "tune_suite needs a suite with [tune]"
    options = options or RunOptions()
    progress = progress or LogProgress()
    executor = executor or Local()
    with open_session(results, suite.suite.name, suite_text, device, executor.name) as session, \
            run_listings(session.dir, [c.config.data for c in contenders], listed) as listings, executor, \
            following(suite.log, session.dir, progress.say) as trackers:
        options = replace(options, listings=str(listings))
        checked: dict = {}
        studies = [Contender(c, tune, session.dir / TUNE, checked) for c in contenders]
        summary = TuneSummary(session.dir)
        planned: dict[str, None] = {}  # the trial cells this run set out to run, for run.json
        tuned = [c.id for c in contenders]
        opened: list[Contender] = []
        noted: dict[str, Any] = {}
        try:
            for s in studies:
                if s.open(options.force):
                    opened.append(s)
                    earlier = s.finished_earlier()
                    summary.skipped.extend(earlier)
                    if trackers is not None:  # their runs may be unended, their choice untold (a resumed run)
                        trackers.follow(c for c in earlier if (session.dir / c).is_dir())  # refused: no cell
                else:
                    summary.busy.append(s.cell.id)
            costs: dict[str, float] = {}  # in parallel: what the trials share built first, the dearest started first
            if executor.parallel and opened:
                prepared = executor.prepare([s.cell for s in opened], session.dir, progress, options.listings)
                costs, noted["prepared"] = prepared.costs, prepared.note()
            session.note_run(planned, tune=tuned, **noted)
            width, total, count = _wave_width(executor, len(opened)), len(opened) * tune.trials, 0
            fresh: set[str] = set()  # trial cells trained by this run: a repeat of one is told its result
            title = f"{suite.suite.name}: {len(opened)} contender(s), {tune.trials} trials each over " \
                    f"{', '.join(tune.space)}"
            # in parallel, a live view of each wave (read from the cell folders) shows the trials, as run_suite's
            with contextlib.nullcontext() if executor.parallel else progress:
                if executor.parallel:
                    progress.say(f"[bench] {title}")
                else:
                    progress.start_run(total, title)
                while wave := _next_wave(opened, width):
                    to_run, later = _sort_wave(wave, session.dir, options.force, fresh)
                    planned.update(dict.fromkeys(p.cell.id for p in wave))
                    if trackers is not None:
                        trackers.follow(p.cell.id for p in wave)
                    session.note_run(planned, tune=tuned, **noted)
                    count = _run_wave(to_run, later, fresh, session, executor, progress, options, count, total,
                                      summary, costs)
            for s in opened:
                s.finish(session.dir, session.device, options.listings)
                summary.contenders.append(_row(s))
                if s.test_error:
                    summary.failed.append((s.cell.id, f"test evaluation of the chosen trial: {s.test_error}"))
        finally:
            for s in studies:
                s.close()
    return summary


def _run_wave(to_run: dict[str, Pending], later: list[Pending], fresh: set[str], session: Any, executor: Any,
              progress: LogProgress, options: RunOptions, count: int, total: int, summary: TuneSummary,
              costs: dict[str, float]) -> int:
    """One wave: its new trial cells through the executor (the dearest contender's first; the studies are
    asked in suite order, so the estimates never change which trials are proposed), each study told what
    became of its trials; returns how many trials the run has shown so far."""
    for p in later:
        if p.cell.id not in to_run and p.cell.id not in fresh:  # finished before this run
            summary.skipped.append(p.cell.id)
            shown = _Numbered(progress, count, total)
            shown.start_cell(1, 1, p.cell.label, p.cell.id, 1, 1)
            shown.end_cell("skipped", "finished earlier")
            count += 1
    outcomes = {}
    if to_run:
        cells = sorted((p.cell for p in to_run.values()), key=lambda c: -costs.get(c.contender or "", 0.0))
        wave_options = replace(options, trials={cid: p.spec for cid, p in to_run.items()})
        view = LiveView(session.dir, cells, getattr(progress, "console", None), progress.stream) \
            if executor.parallel else contextlib.nullcontext(_Numbered(progress, count, total))
        with view as shown:
            for outcome in executor.run(cells, session.dir, session.device, shown, wave_options):
                outcomes[outcome.cell] = outcome
        count += len(cells)
    _settle(to_run, later, outcomes, session.dir, fresh, summary)
    return count


def _row(s: Contender) -> dict[str, Any]:
    best = s.best() if s.finished() else None
    record = s.record()
    return {"id": s.cell.id, "label": s.cell.label, "state": "tuned" if s.finished() else "unfinished",
            "trials": record["cost"]["trials"], "budget": s.tune.trials, "metric": s.tune.metric,
            "chosen": s.chosen, "number": best.number if best else None,
            "params": best.user_attrs.get("params") if best else None, "value": best.value if best else None,
            "test": s.test, "test_looks": record["test_looks"], "cost": record["cost"]}


def describe(row: dict[str, Any]) -> str:
    """One line per contender for the console: what was chosen, on what validation figure."""
    head = f"{row['label']} ({row['id']}): "
    if row["state"] != "tuned":
        return head + f"unfinished, {row['trials']} of {row['budget']} trials done; run again to go on"
    if row["chosen"] is None and row["params"] is None:
        return head + f"no trial of {row['budget']} completed (see results/<suite>/tune/{row['id']}.json)"
    params = " ".join(f"{k.split('.', 1)[1]}={value_text(v, 4)}" for k, v in (row["params"] or {}).items())
    test = (row["test"] or {}).get("top1_error")
    cost = row["cost"]
    return (head + f"chose trial {row['number']} ({row['chosen']}) {params}: {row['metric']} {row['value']:.4f}"
            + (f", test_error {test:.4f}" if isinstance(test, float) else "")
            + (f" (test split seen {row['test_looks']} times: an earlier choice's figures withdrawn)"
               if row["test_looks"] > 1 else "")
            + f"; {cost['trials']} trials ({cost['pruned']} pruned, {cost['failed']} failed), "
              f"{cost['train_time_s']:.1f} s training, {cost['tuning_overhead_s']:.2f} s tuning")


