"""A cell's saved predictions as a Kaggle-style submission CSV (iNaturalist 2019: `id,predicted`)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import torch

from bench.compare import read_predictions
from bench.errors import UserError
from bench.store import Record, atomic_write_text, read_json


def class_ids(class_names: list[str]) -> list[str]:
    """What goes in `predicted`: the class folder names when all are numbers (iNat's category ids), else
    the class index (the position in the sorted class list)."""
    return class_names if class_names and all(n.isdigit() for n in class_names) else [
        str(i) for i in range(len(class_names))]


def submission_rows(record: Record, split: str = "test", k: int = 5) -> list[tuple[str, str]]:
    """(image id, top-k class ids space-separated, best first) per image, in the split's order."""
    if k < 1:
        raise UserError(f"--k must be at least 1, not {k}")
    data = record.result.get("data", {})
    split_file = record.dir.parent / "splits" / f"{data.get('split_key')}.json"
    if not split_file.is_file():
        raise UserError(f"the split file '{split_file}' is missing", hint="export reads the image list from it")
    try:
        files = read_json(split_file)[split]
    except (ValueError, KeyError, TypeError) as e:  # an edit or a damaged disk: the runner writes it atomically
        raise UserError(f"not a bench split file ({type(e).__name__})", file=split_file,
                        hint=f"rerun the cell: bench run SUITE --only {record.dir.name} --force") from None
    logits, _ = read_predictions(record.dir, split)
    if len(files) != len(logits):
        raise UserError(f"'{split_file}' lists {len(files)} {split} images but the predictions hold {len(logits)}")
    names = class_ids(data.get("class_names") or [str(i) for i in range(logits.shape[1])])
    top = torch.topk(logits, min(k, logits.shape[1]), dim=1).indices.tolist()
    ids = [Path(f).stem for f in files]
    if len(set(ids)) < len(ids):  # stems repeat across class folders: keep the folder to stay unique
        ids = [str(Path(f).with_suffix("")) for f in files]
    return [(i, " ".join(names[c] for c in row)) for i, row in zip(ids, top, strict=True)]


def export_submission(record: Record, out: Path, split: str = "test", k: int = 5) -> int:
    """Write the CSV atomically; returns the number of images."""
    rows = submission_rows(record, split, k)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["id", "predicted"])
    writer.writerows(rows)
    atomic_write_text(Path(out), buf.getvalue())
    return len(rows)
