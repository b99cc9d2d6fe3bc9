"""Kaggle-style submission CSVs (iNaturalist 2019: `id,predicted`): from a cell's saved predictions
(`bench export`), or from its best weights run over an unlabelled test set (`bench predict`)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import torch

from bench.compare import read_predictions
from bench.errors import UserError
from bench.store import SPLITS, Record, atomic_write_text, read_json, split_file


def class_ids(class_names: list[str]) -> list[str]:
    """What goes in `predicted`: the class folder names when all are numbers (iNat's category ids), else
    the class index (the position in the sorted class list)."""
    return class_names if class_names and all(n.isdigit() for n in class_names) else [
        str(i) for i in range(len(class_names))]


def submission_rows(record: Record, split: str = "test", k: int = 5) -> list[tuple[str, str]]:
    """(image id, top-k class ids space-separated, best first) per image, in the split's order."""
    data = record.result.get("data", {})
    split_path = split_file(record.dir.parent / SPLITS, str(data.get("split_key")))
    if not split_path.is_file():
        raise UserError(f"the split file '{split_path}' is missing", hint="export reads the image list from it")
    try:
        files = read_json(split_path)[split]
    except (ValueError, KeyError, TypeError) as e:  # an edit or a damaged disk: the runner writes it atomically
        raise UserError(f"not a bench split file ({type(e).__name__})", file=split_path,
                        hint=f"rerun the cell: bench run SUITE --only {record.dir.name} --force") from None
    logits, _ = read_predictions(record.dir, split)
    if len(files) != len(logits):
        raise UserError(f"'{split_path}' lists {len(files)} {split} images but the predictions hold {len(logits)}")
    return top_k_rows(image_ids(files), logits, data.get("class_names") or [str(i) for i in range(logits.shape[1])],
                      k)


def image_ids(files: list[str] | list[Path]) -> list[str]:
    """A submission's ids: the file stems, or the paths less their suffix where stems repeat (the same name
    in two class folders), so that every id stays unique."""
    ids = [Path(f).stem for f in files]
    return ids if len(set(ids)) == len(ids) else [str(Path(f).with_suffix("")) for f in files]


def top_k_rows(ids: list[str], logits: torch.Tensor, class_names: list[str], k: int) -> list[tuple[str, str]]:
    if k < 1:
        raise UserError(f"--k must be at least 1, not {k}")
    names = class_ids(class_names)
    top = torch.topk(logits, min(k, logits.shape[1]), dim=1).indices.tolist()
    return [(i, " ".join(names[c] for c in row)) for i, row in zip(ids, top, strict=True)]


def export_submission(record: Record, out: Path, split: str = "test", k: int = 5) -> int:
    """Write the CSV atomically; returns the number of images."""
    rows = submission_rows(record, split, k)
    _write_rows(rows, out)
    return len(rows)


def _write_rows(rows, out: Path) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["id", "predicted"])
    writer.writerows(rows)
    atomic_write_text(Path(out), buf.getvalue())


def unlabelled_images(images: Path, root: Path | None = None) -> list[tuple[str, Path]]:
    """(id, file) for an unlabelled test set: every image under a folder (id: the file stem, or the relative
    path where stems repeat), or an iNat-style JSON's `images` (id: its `id`; files relative to `root`,
    default the JSON's folder), e.g. iNat 2019's test2019.json."""
    from bench.data.sources import image_files

    images = Path(images)
    if images.is_dir():
        files = image_files(images)
        if not files:
            raise UserError(f"no images under '{images}'", key="--images", hint="give a folder of images or a JSON")
        return list(zip(image_ids([p.relative_to(images) for p in files]), files, strict=True))
    if not images.is_file():
        raise UserError(f"no such folder or file '{images}'", key="--images",
                        hint="a folder of images, or an iNat-style JSON such as test2019.json")
    try:
        doc = read_json(images)
        entries = [(str(im["id"]), im["file_name"]) for im in doc["images"]]
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"not an iNat-style JSON with images[].id and file_name ({type(e).__name__})",
                        file=images) from None
    base = Path(root) if root is not None else images.parent
    missing = [f for _, f in entries if not (base / f).is_file()]
    if missing:
        raise UserError(f"{len(missing)} of {len(entries)} images listed in '{images}' are missing under "
                        f"'{base}' (e.g. {missing[0]})", key="--root", hint="give the folder the file names are relative to")
    return [(i, base / f) for i, f in entries]


def predict_unlabelled(record: Record, files: list[Path], device: str = "auto", batch_size: int = 64) -> torch.Tensor:
    """A finished cell's best weights (with its test-time views, at its precision) over images it has never
    seen: the logits, in the order of `files`. Each image is read as the cell's evaluation reads it: RGB,
    whole, shorter side to data.cache_size, then bench.data.views.evaluation (shorter side to image_size /
    crop_pct, centre crop)."""
    from bench.config import CellConfig
    from bench.data.cache import load_image
    from bench.data.loaders import Preprocess
    from bench.data.views import batch, evaluation
    from bench.device import resolve_device
    from bench.evaluate import predict
    from bench.store import INIT, load_best
    from bench.techniques import build_tta
    from bench.techniques.precision import precision_setup
    from bench.weights import initial_model

    if record.result.get("status") != "ok":
        raise UserError(f"cell {record.dir.name} has not finished (status {record.result.get('status')})",
                        hint="run it first; only a finished cell has best weights")
    cfg = CellConfig.model_validate(record.cell["config"])
    classes = record.result["data"]["class_names"]
    dev = resolve_device(device)
    model, _ = initial_model(cfg, len(classes), record.dir.parent / INIT)  # the backbone a head-only cell used
    load_best(model, record.dir)
    model.to(dev)
    autocast, _ = precision_setup(cfg.train.precision, dev)
    d = cfg.data

    def batches():
        for start in range(0, len(files), batch_size):
            chunk = files[start:start + batch_size]
            try:
                x = batch([evaluation(load_image(f, d.stored_size), d.image_size, d.scale_size) for f in chunk])
            except OSError as e:
                raise UserError(f"cannot read an image of {chunk[0].parent} ({e})", key="--images") from None
            yield x, torch.zeros(len(chunk), dtype=torch.long)

    logits, _, _ = predict(model, batches(), Preprocess(dev, cfg.train.channels_last), autocast=autocast,
                           views=build_tta(cfg.train.tta))
    return logits


def write_submission(ids: list[str], logits: torch.Tensor, class_names: list[str], out: Path, k: int = 5) -> None:
    _write_rows(top_k_rows(ids, logits, class_names, k), out)
