"""TensorBoard: one event-file folder per cell, `<folder>/<suite>/<label>__<id>` (a tuning trial one level
down, under its contender's label), browsed with `tensorboard --logdir <folder>`. Epochs are scalars at
step = epoch; the end writes the cell's hparams session into the run's own folder, so that the HParams view
compares the cells of a suite."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path, PurePosixPath
from typing import Any

from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from bench.config.suite import Log
from bench.store import TENSORBOARD_DIR
from bench.trackers.base import CellRun, Ending, Run, Scalar, Tracker, tracker

SPLITS = ("train", "val", "test")  # history columns named <split>_<what> become <split>/<what>
FINAL = "final"  # the ending's figures, apart from the per-epoch tags they would otherwise sit among
NAME_CHARS = 80  # of a label in a folder name: the short id after it keeps names apart
ID_CHARS = 8


def safe_name(text: str) -> str:
    """`text` as one folder name: labels hold spaces, '/', ':' (hub model names); '=' and ',' read well."""
    return re.sub(r"[^A-Za-z0-9_.=,+-]+", "_", text).strip("._")[:NAME_CHARS] or "_"


def tag(column: str) -> str:
    """A history column's tag: TensorBoard groups tags by what precedes the first '/'."""
    split, _, what = column.partition("_")
    return f"{split}/{what}" if split in SPLITS and what else column


def _number(value: Any) -> float | None:
    if isinstance(value, str) and not value.strip():
        return None  # an empty CSV field: a column this epoch did not fill
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _hparam(value: Any) -> Scalar | None:
    if isinstance(value, bool):  # torch's hparams() tests int before bool and would show true as 1.0
        return "true" if value else "false"
    if value is None or isinstance(value, int | float | str):
        return value  # hparams() leaves None out
    return str(value)


def _session_end(ok: bool) -> Summary:
    """The hparams session's end with its real status: torch's hparams() always writes success."""
    status = api_pb2.Status.Value("STATUS_SUCCESS" if ok else "STATUS_FAILURE")
    info = plugin_data_pb2.SessionEndInfo(status=status, end_time_secs=time.time())
    data = plugin_data_pb2.HParamsPluginData(session_end_info=info)
    return Summary(value=[Summary.Value(tag=metadata.SESSION_END_INFO_TAG,
                                        metadata=metadata.create_summary_metadata(data))])


def _after_newest_file(folder: Path) -> None:
    """Wait, if need be, until a new event file sorts after the folder's others. Readers take a folder's files
    in name order, and the name is events.out.tfevents.<second>.<host>.<pid>.<counter>: within one second
    the counter compares as text (10 before 9), and the purge only drops what was read before it."""
    seconds = []
    for path in folder.glob("events.out.tfevents.*"):
        try:
            seconds.append(int(path.name.split(".")[3]))
        except (IndexError, ValueError):
            continue
    if seconds and max(seconds) == int(time.time()):
        time.sleep(max(0.0, max(seconds) + 1 - time.time()))


class TensorBoardRun(Run):
    def __init__(self, owner: TensorBoard, cell: CellRun, run_id: str, purge_step: int | None, step: int):
        self.id, self.cell, self.owner = run_id, cell, owner
        self.logged = step  # the last epoch sent: the ending's figures are written at it
        # flush_secs is moot: every call flushes, since people watch a running suite live
        self.writer: SummaryWriter | None = SummaryWriter(str(owner.folder / run_id), purge_step=purge_step)
        owner.runs.add(self)

    def _open(self) -> SummaryWriter:
        if self.writer is None:
            raise RuntimeError(f"TensorBoard run {self.id} is closed")
        return self.writer

    def log_epochs(self, rows: list[dict[str, float]]) -> None:
        writer = self._open()
        for row in rows:
            step = int(float(row["epoch"]))
            for column, value in row.items():
                number = _number(value)
                if column != "epoch" and number is not None:
                    writer.add_scalar(tag(column), number, step)
            self.logged = max(self.logged, step)
        writer.flush()

    def finish(self, ending: Ending) -> None:
        writer = self._open()
        for key, value in ending.summary.items():
            number = _number(value)
            if number is not None:  # as scalars of this run, the HParams view's metric columns
                writer.add_scalar(f"{FINAL}/{key}", number, self.logged)
        if ending.reason:
            writer.add_text("status", f"{ending.status}: {ending.reason}", self.logged)
        params = {key: _hparam(value) for key, value in self.cell.params.items()}
        params.update(seed=self.cell.seed, status=ending.status)
        # Only the session start of hparams(): its experiment summary lists this cell's hparams and metrics
        # alone, and TensorBoard shows ONE run's experiment for all (the first it finds), so a failed cell's
        # would hide every metric column. Without any, it takes the union over all runs' sessions.
        _, start, _ = hparams(params, {})
        writer.file_writer.add_summary(start, self.logged)  # in this folder: add_hparams() would make a sub-run
        writer.file_writer.add_summary(_session_end(ending.ok), self.logged)
        self.close()

    def suspend(self) -> None:
        self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()  # flushes
            self.writer = None
        self.owner.runs.discard(self)


@tracker("tensorboard")
class TensorBoard(Tracker):
    """Event files under `<results>/tensorboard` (target true) or the folder given (relative to the working
    directory). A run id is the run's folder relative to that folder."""

    def __init__(self, target: bool | str, log: Log, results: Path, suite: str):
        super().__init__(target, log, results, suite)
        folder = self.results / TENSORBOARD_DIR if target is True else Path(str(target)).expanduser()
        self.folder = Path(os.path.abspath(folder))
        self.runs: set[TensorBoardRun] = set()

    @property
    def destination(self) -> str:
        return f"tensorboard:{self.folder}"

    def start(self, cell: CellRun, run_id: str | None, logged: int) -> TensorBoardRun:
        if run_id is None:
            return TensorBoardRun(self, cell, self._new_run_id(cell), None, 0)
        parts = PurePosixPath(run_id).parts
        if not parts or PurePosixPath(run_id).is_absolute() or ".." in parts:
            raise ValueError(f"'{run_id}' is not a TensorBoard run id (a folder under {self.folder})")
        _after_newest_file(self.folder / run_id)
        # the reader drops this run's events at steps >= purge_step: epochs a killed writer sent unrecorded
        return TensorBoardRun(self, cell, run_id, logged + 1, logged)

    def _new_run_id(self, cell: CellRun) -> str:
        parent = PurePosixPath(safe_name(cell.suite))
        if cell.contender is not None:
            parent /= safe_name(cell.contender_label or cell.contender)
        name = f"{safe_name(cell.label)}__{cell.id[:ID_CHARS]}"
        run_id, n = str(parent / name), 1
        # a new run never adds to an old one's events (a cell run again after its folder was removed)
        while (self.folder / run_id).exists():
            n += 1
            run_id = str(parent / f"{name}-{n}")
        return run_id

    def close(self) -> None:
        for run in list(self.runs):
            run.close()
