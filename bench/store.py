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
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

RESULT_FILES = ("cell.json", "result.json", "history.csv", "predictions.npz", "best.safetensors")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, then rename: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def is_suite_dir(path: Path) -> bool:
    return (Path(path) / "suite.toml").is_file()


def latest_suite_dir(results: Path) -> Path | None:
    """The suite folder under `results` whose last run is most recent."""
    runs = [d for d in Path(results).iterdir() if d.is_dir() and is_suite_dir(d)] if Path(results).is_dir() else []
    return max(runs, key=lambda d: (d / "suite.toml").stat().st_mtime, default=None)


def load_records(suite_dir: Path) -> list[dict[str, Any]]:
    """One dict per cell folder that holds a result: cell.json and result.json merged."""
    records = []
    for cell_dir in sorted(Path(suite_dir).iterdir()):
        if (cell_dir / "result.json").is_file() and (cell_dir / "cell.json").is_file():
            records.append({"cell": read_json(cell_dir / "cell.json"), "result": read_json(cell_dir / "result.json")})
    return records
