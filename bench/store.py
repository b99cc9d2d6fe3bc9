"""The results layout on disk, atomic writes, and loading records back for reports.

results/<suite>/
  suite.toml              copy of what was run
  init/<key>.safetensors  shared initial weights
  splits/<key>.json       the split used
  <cell-id>/cell.json, result.json, history.csv, predictions.npz, best.safetensors
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

# The permissions a plain open() would give: mkstemp's 0600 would hide results from the user's group.
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """A unique temporary file beside `path` for a writer that wants a file name (safetensors, numpy);
    renamed onto `path` when the block succeeds, removed when it fails. A reader never sees half a file, and
    two processes writing the same file never share a temporary name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(folder: Path | str) -> Iterator[Path]:
    """A unique temporary folder beside `folder`, published by one rename when the block succeeds. If another
    process published `folder` first, theirs is kept and ours removed; on failure ours is removed."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{folder.name}.partial-", dir=folder.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_UMASK)
        try:
            tmp.rename(folder)
        except OSError:  # published meanwhile by another process: same key, same content
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def read_json(path: Path | str) -> Any:
    with open(path, "rb") as f:
        return json.loads(f.read())


def is_suite_dir(path: Path) -> bool:
    return (Path(path) / "suite.toml").is_file()


def latest_suite_dir(results: Path) -> Path | None:
    """The suite folder under `results` whose last run is most recent."""
    runs = [d for d in Path(results).iterdir() if d.is_dir() and is_suite_dir(d)] if Path(results).is_dir() else []
    return max(runs, key=lambda d: (d / "suite.toml").stat().st_mtime, default=None)


def load_records(suite_dir: Path) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(cell folder, cell.json, result.json) for every cell that has written a result, in name order.

    One scandir and two reads per cell, no stat calls: a report over 10,000 cells is mostly JSON parsing."""
    with os.scandir(suite_dir) as entries:
        names = sorted(e.name for e in entries if not e.name.startswith("."))
    for name in names:
        cell_dir = os.path.join(suite_dir, name)
        try:
            result = read_json(os.path.join(cell_dir, "result.json"))
            cell = read_json(os.path.join(cell_dir, "cell.json"))
        except (FileNotFoundError, NotADirectoryError):  # init/, splits/, suite.toml, an unfinished cell
            continue
        yield cell_dir, cell, result
