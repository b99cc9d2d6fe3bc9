"""The results folder: its layout (every file name below is defined here and nowhere else), atomic writes,
and the one reader and writer of cell records, histories, predictions and best weights.

results/                  mlflow.db, mlartifacts/, tensorboard/, wandb/: the trackers' default destinations
results/<suite>/
  suite.toml              copy of what was run
  run.json                the cells the last `bench run` set out to run (a report of fewer says "partial")
  init/<key>.safetensors  shared initial weights
  splits/<key>.json       the split used
  tune/                   a tuned suite's studies and contenders' records (bench.tune)
  .submitit/              Slurm job folders (bench.executors)
  <cell-id>/
    cell.json             the cell as its suite expanded it
    result.json           its record (status ok marks it done), written last
    history.csv           one row per epoch, rewritten as each ends
    trackers.json         its run in each tracker [log] sends it to, and how many epochs went (bench.trackers)
    plots/                its figures, made for the trackers to attach
    predictions.npz       logits and labels per split, the test confusion matrix
    best.safetensors      the weights validation selected
    checkpoint.pt/.json   the last epoch's state, while it runs
    claim.json, .lock     who runs it (bench.claims); .trackers.lock: who sends it to the trackers
    stderr.log, job.json  its process's output; its queued job (bench.executors)
"""

from __future__ import annotations

import errno
import fnmatch
import io
import json
import os
import shutil
import tempfile
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench import SCHEMA_VERSION
from bench.errors import UserError, first_line

# The permissions a plain open() would give: mkstemp's 0600 would hide results from the user's group.
_UMASK = os.umask(0)
os.umask(_UMASK)

SUITE_FILE, RUN, INIT, SPLITS, TUNE, SUBMITIT = "suite.toml", "run.json", "init", "splits", "tune", ".submitit"
CELL, RESULT, HISTORY, PREDICTIONS, BEST = "cell.json", "result.json", "history.csv", "predictions.npz", "best.safetensors"
CHECKPOINT, CHECKPOINT_INFO, CLAIM, LOCK, LOG, JOB = "checkpoint.pt", "checkpoint.json", "claim.json", ".lock", \
    "stderr.log", "job.json"
TRACKER_STATE, TRACKER_LOCK, MLFLOW_DB, MLFLOW_ARTIFACTS = "trackers.json", ".trackers.lock", "mlflow.db", "mlartifacts"
TENSORBOARD_DIR, WANDB_DIR, CELL_PLOTS = "tensorboard", "wandb", "plots"


def disk_full(path: Path | str) -> OSError:
    """The one error of a write that a full disk stopped: ENOSPC naming `path`, the file or folder that
    could not be written (the CLI says which folder that is and what its disk has free)."""
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def full_disk_path(error: BaseException) -> str | None:
    """The file or folder a full disk kept from being written, when `error` is disk_full's (or another
    ENOSPC that names its path); None for any other error."""
    if isinstance(error, OSError) and error.errno == errno.ENOSPC and error.filename:
        return str(error.filename)
    return None


def _chain(error: BaseException | None) -> Iterator[BaseException]:
    """`error` and the exceptions it was raised from or while handling, as a traceback shows them."""
    while error is not None:
        yield error
        error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)


def _ran_out_of_space(error: BaseException, folder: Path) -> bool:
    """Whether a write into `folder` failed for want of space, asked while the failed write's partial output
    still takes its space. Not every writer says so: Python's own file writes raise ENOSPC without a file
    name, safetensors' error says it in its text only, torch.save's says "iostream error". So, failing those,
    the file system is asked for one block there (a full disk has none)."""
    said = os.strerror(errno.ENOSPC)  # what Rust's io errors (safetensors') print for it too
    if any((isinstance(e, OSError) and e.errno == errno.ENOSPC) or said in str(e) for e in _chain(error)):
        return True
    if not isinstance(error, Exception) or isinstance(error, UserError):  # Ctrl-C; or bench said why already
        return False
    try:
        with tempfile.TemporaryFile(dir=folder) as probe:
            os.posix_fallocate(probe.fileno(), 0, os.fstatvfs(probe.fileno()).f_bsize)
    except OSError as e:
        return e.errno == errno.ENOSPC
    return False


@contextmanager
def _named_when_full(path: Path) -> Iterator[None]:
    """An ENOSPC from creating `path` (or its folder, or a temporary beside it) as disk_full(path)."""
    try:
        yield
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        raise disk_full(path) from None


def _failed_write(error: BaseException, tmp: Path, remove) -> bool:
    """Clean up after a writer failed on `tmp`; True when the disk was full. The writer's frames are cleared
    so that an open file they held (torch.save's) goes now, and with it the space it took."""
    full = _ran_out_of_space(error, tmp.parent)
    remove(tmp)
    if full:
        for e in _chain(error):
            traceback.clear_frames(e.__traceback__)
    return full


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """A unique temporary file beside `path` for a writer that wants a file name (safetensors, numpy);
    renamed onto `path` when the block succeeds, removed when it fails. A reader never sees half a file, and
    two processes writing the same file never share a temporary name. A full disk, whatever the writer
    says of it, raises disk_full(path)."""
    path = Path(path)
    with _named_when_full(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException as e:
        if _failed_write(e, Path(tmp), lambda p: p.unlink(missing_ok=True)):
            raise disk_full(path) from e  # the writer's own error stays in the traceback
        raise


@contextmanager
def atomic_dir(folder: Path | str) -> Iterator[Path]:
    """A unique temporary folder beside `folder`, published by one rename when the block succeeds. If another
    process published `folder` first, theirs is kept and ours removed; on failure ours is removed. A full
    disk raises disk_full(folder)."""
    folder = Path(folder)
    with _named_when_full(folder):
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{folder.name}.partial-", dir=folder.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_UMASK)
        try:
            tmp.rename(folder)
        except OSError:  # published meanwhile by another process: same key, same content
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException as e:
        if _failed_write(e, tmp, lambda p: shutil.rmtree(p, ignore_errors=True)):
            raise disk_full(folder) from e  # the writer's own error stays in the traceback
        raise


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    """Uncompressed, streamed to the file: logits, most of the bytes, compress to ~93% of their size at ~2% of
    the speed (20,000 x 1,000 float32 logits: 4.1 s compressed against 0.08 s), and a buffer in memory
    would hold them twice."""
    with atomic_path(path) as tmp:
        np.savez(tmp, **arrays)


def read_json(path: Path | str) -> Any:
    with open(path, "rb") as f:
        return json.loads(f.read())


def is_suite_dir(path: Path) -> bool:
    return (Path(path) / SUITE_FILE).is_file()


def latest_suite_dir(results: Path) -> Path | None:
    """The suite folder under `results` whose last run is most recent."""
    runs = [d for d in Path(results).iterdir() if d.is_dir() and is_suite_dir(d)] if Path(results).is_dir() else []
    return max(runs, key=lambda d: (d / SUITE_FILE).stat().st_mtime, default=None)


def init_file(init_dir: Path, key: str) -> Path:
    """Shared initial weights in results/<suite>/init/ (INIT)."""
    return Path(init_dir) / f"{key}.safetensors"


def split_file(split_dir: Path, key: str) -> Path:
    """A split in results/<suite>/splits/ (SPLITS)."""
    return Path(split_dir) / f"{key}.json"


def tune_files(tune_dir: Path, contender: str) -> tuple[Path, Path, Path]:
    """A contender's study journal, its record and its lock in results/<suite>/tune/ (TUNE)."""
    return tuple(Path(tune_dir) / f"{contender}{suffix}" for suffix in (".journal", ".json", ".lock"))


def read_result(cell_dir: Path | str) -> dict[str, Any] | None:
    """A cell's result.json as it stands, None when it has none or it does not parse: for a runner deciding
    what to do (a report reads records through load_records, which refuses what it cannot trust)."""
    try:
        result = read_json(Path(cell_dir) / RESULT)
    except (OSError, ValueError):
        return None
    return result if isinstance(result, dict) else None


def is_done(cell_dir: Path | str) -> bool:
    return (read_result(cell_dir) or {}).get("status") == "ok"


def write_cell(cell_dir: Path, record: dict[str, Any]) -> None:
    write_json(Path(cell_dir) / CELL, record)


def write_result(cell_dir: Path, record: dict[str, Any]) -> None:
    """Last of a cell's files: its presence with status ok marks the cell done."""
    write_json(Path(cell_dir) / RESULT, record)


def forget_result(cell_dir: Path, history: bool = False) -> None:
    """A rerun is not done until it writes a new result; one that starts anew (`history`) has no epochs yet."""
    (Path(cell_dir) / RESULT).unlink(missing_ok=True)
    if history:
        (Path(cell_dir) / HISTORY).unlink(missing_ok=True)


def write_history(cell_dir: Path, history: list[dict[str, Any]]) -> None:
    import pandas as pd

    buf = io.StringIO()
    pd.DataFrame(history).to_csv(buf, index=False)
    atomic_write_text(Path(cell_dir) / HISTORY, buf.getvalue())


def read_history(cell_dir: Path | str) -> list[dict[str, str]]:
    """The cell's per-epoch history as csv rows (values as text), [] when it has none."""
    import csv

    path = Path(cell_dir) / HISTORY
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def add_predictions(cell_dir: Path, arrays: dict[str, np.ndarray]) -> None:
    """`arrays` into the cell's predictions.npz, beside those it holds (a later test evaluation's)."""
    path = Path(cell_dir) / PREDICTIONS
    saved = {}
    if path.is_file():
        with np.load(path) as npz:
            saved = {k: npz[k] for k in npz.files}
    write_npz(path, **saved, **arrays)


def drop_predictions(cell_dir: Path, prefix: str) -> None:
    """The arrays named `prefix`... out of the cell's predictions.npz (a withdrawn test look's)."""
    path = Path(cell_dir) / PREDICTIONS
    if path.is_file():
        with np.load(path) as npz:
            kept = {k: npz[k] for k in npz.files if not k.startswith(prefix)}
        write_npz(path, **kept)


def save_best(model, cell_dir: Path) -> None:
    from safetensors.torch import save_model

    with atomic_path(Path(cell_dir) / BEST) as tmp:
        save_model(model.cpu(), str(tmp))


def load_best(model, cell_dir: Path | str, *, key: str | None = None, what: str = "cell") -> str:
    """A finished cell's best weights into `model`, in place; returns their sha256. A cell trained on cached
    features (freeze = "features") saved its head only: that goes into the model's head, and the backbone
    stays what the caller built (the shared initial weights, which the features came from). `key` and `what`
    say in the errors who asked (model.init_from, "parent cell", for a staged start). safetensors' own loader
    restores the aliases of tied weights that saving dropped."""
    from safetensors import safe_open
    from safetensors.torch import load_model

    from bench.hashing import file_digest
    from bench.models.heads import head_module

    cell_dir = Path(cell_dir)
    path = cell_dir / BEST
    if not path.is_file():
        raise UserError(f"{what} {cell_dir.name} has no best weights (it has not finished)", key=key,
                        hint=f"run the {what} first; `bench plan` shows the order")
    with safe_open(str(path), "pt") as f:
        names = set(f.keys())
    head = head_module(model)
    target = head if names == set(head.state_dict()) else model
    try:
        load_model(target, str(path))
    except RuntimeError as e:
        raise UserError(f"{what} {cell_dir.name}'s weights do not fit this cell ({first_line(e)})", key=key,
                        hint="both need the same model.arch and head") from None
    return file_digest(path)

CELL_KEYS = {"id", "group", "label", "axes"}  # with config: what reports and comparisons read from cell.json


@dataclass(frozen=True)
class Record:
    """One cell as the runner left it: its folder, cell.json and result.json (of this bench's schema)."""
    dir: Path
    cell: dict[str, Any]
    result: dict[str, Any]


def load_records(suite_dir: Path | str) -> Iterator[Record]:
    """Every cell of `suite_dir` that has written a result, in name order.

    One scandir and two reads per cell, no stat calls: a report over 10,000 cells is mostly JSON parsing."""
    try:
        with os.scandir(suite_dir) as entries:
            names = sorted(e.name for e in entries if not e.name.startswith("."))
    except (FileNotFoundError, NotADirectoryError):
        raise UserError(f"no results folder at '{suite_dir}'",
                        hint="name a results/<suite> folder, e.g. --suite results/quickstart") from None
    for name in names:
        record = _read(os.path.join(suite_dir, name))
        if record is not None:  # not init/, splits/, suite.toml or an unfinished cell
            yield record


def load_record(cell_dir: Path | str) -> Record:
    """One cell folder's record; UserError when it has no result."""
    record = _read(str(cell_dir))
    if record is None:
        raise UserError(f"'{cell_dir}' is not a cell folder (no result.json)",
                        hint="name results/<suite>/<cell id>, "
                             "or pass --suite results/<suite> and an id or label")
    return record


def find_cell(name: str, suite_dir: Path | str | None = None) -> Record:
    """A cell's record from its folder, or from a cell id or label (a glob) within `suite_dir`."""
    if suite_dir is None or os.path.isfile(os.path.join(name, RESULT)):
        return load_record(name)
    matches = [r for r in load_records(suite_dir)
               if r.cell["id"] == name or fnmatch.fnmatchcase(r.cell["label"], name)]
    if len(matches) != 1:
        found = "; ".join(f"{r.cell['id']} {r.cell['label']} seed {r.cell['config'].get('seed')}"
                          for r in matches[:5])
        where = f"'{name}' matches {len(matches)} cells in '{suite_dir}'"
        raise UserError(where + (f": {found}" if found else ""),
                        hint="name one cell by its id (see `bench report --format csv` or the folder names)")
    return matches[0]


def _read(cell_dir: str) -> Record | None:
    """The folder's record, None when it has no result; refuses a record of another schema, so no report or
    comparison ever mixes results that mean different things."""
    try:
        result = _parse(os.path.join(cell_dir, RESULT))
        cell = _parse(os.path.join(cell_dir, CELL))
    except (FileNotFoundError, NotADirectoryError):
        return None
    version = result.get("schema_version") if isinstance(result, dict) else None
    if version != SCHEMA_VERSION:
        found = "no schema_version" if version is None else f"schema_version {version}"
        raise UserError(f"its result.json has {found}, this bench reads {SCHEMA_VERSION}", file=cell_dir,
                        hint="rerun the suite with this version of bench (bench run SUITE --force), "
                             "or report it with the bench version that wrote it")
    # every reader indexes these without a guard: a hand-edited cell.json is refused here, once
    if not isinstance(cell, dict) or not isinstance(cell.get("config"), dict) or not CELL_KEYS <= cell.keys():
        raise UserError(f"not a bench cell record (needs {', '.join(sorted(CELL_KEYS))} and config)",
                        file=os.path.join(cell_dir, CELL),
                        hint=f"rerun the cell: bench run SUITE --only {os.path.basename(cell_dir)} --force")
    return Record(Path(cell_dir), cell, result)


def _parse(path: str) -> Any:
    cell_id = os.path.basename(os.path.dirname(path))
    try:
        return read_json(path)
    except ValueError as e:  # not JSON or not UTF-8; bench writes atomically, so an edit or a damaged disk
        raise UserError(f"not valid JSON ({e})", file=path,
                        hint=f"rerun the cell: bench run SUITE --only {cell_id} --force") from None
    except (FileNotFoundError, NotADirectoryError):
        raise  # no record here: the caller decides
    except OSError as e:  # unreadable (permissions, a folder named result.json, an I/O error)
        raise UserError(f"cannot read it ({e.strerror or type(e).__name__})", file=path) from None
