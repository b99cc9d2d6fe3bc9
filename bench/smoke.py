"""--smoke: every cell of a suite on a tiny generated stand-in of its data, one short epoch, no download.

It proves that each cell runs end to end (model, head, freezing, data path, results) in CI, without
the real data. The stand-in keeps the suite's source type, and its image size is the smallest one that
every architecture of the suite accepts, found by trying them.
"""

from __future__ import annotations

import dataclasses
import json
from functools import cache
from pathlib import Path

import torch

from bench.config import DataConfig, SyntheticConfig
from bench.data import synthetic
from bench.data.cachedir import cache_root
from bench.data.sources import scan_folder
from bench.hashing import stable_hash
from bench.models import create_model
from bench.suite import Cell

SIZES = (32, 64, 96, 128, 160, 224)
CLASSES, IMAGES, STEPS, BATCH = 4, 64, 2, 8


@cache
def accepted_size(arch: str) -> int:
    """The smallest of SIZES a forward pass of `arch` accepts (AlexNet needs 63 px, Inception v3 75)."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        for size in SIZES:
            try:
                model = create_model(arch, CLASSES, size).eval()
                model(torch.zeros(2, 3, size, size))
                return size
            except (RuntimeError, ValueError):
                continue
    return SIZES[-1]


def stand_in_root(data: DataConfig, stand_in: SyntheticConfig) -> Path:
    """Generated images laid out in the suite's own source format: folder, csv manifest or iNat JSON."""
    root = cache_root() / "smoke" / data.source / stable_hash([stand_in.model_dump(), data.manifest, data.annotations], 16)
    synthetic.generate(stand_in, root)
    samples = scan_folder(root)
    if data.source == "csv":
        lines = ["path,label"] + [f"{p},{samples.classes[y]}" for p, y in zip(samples.paths, samples.labels, strict=True)]
        (root / data.manifest).parent.mkdir(parents=True, exist_ok=True)
        (root / data.manifest).write_text("\n".join(lines) + "\n")
    elif data.source == "inat":
        cats = [{"id": i, "name": c, "supercategory": "Synthetic"} for i, c in enumerate(samples.classes)]
        names = [n for n in ("train", "val") if n in data.annotations]
        for part, name in enumerate(names):  # every other image to val, when the suite reads a val file
            rows = [i for i in range(len(samples.paths)) if len(names) == 1 or i % 2 == part]
            doc = {"images": [{"id": i, "file_name": samples.paths[i]} for i in rows],
                   "annotations": [{"id": i, "image_id": i, "category_id": int(samples.labels[i])} for i in rows],
                   "categories": cats}
            (root / data.annotations[name]).parent.mkdir(parents=True, exist_ok=True)
            (root / data.annotations[name]).write_text(json.dumps(doc))
    return root


def smoke_cells(cells: list[Cell]) -> list[Cell]:
    size = max(accepted_size(c.config.model.arch) for c in cells)
    stand_in = SyntheticConfig(classes=CLASSES, images=IMAGES, imbalance=2.0, size=max(size, 32))
    out = []
    for cell in cells:
        cfg = cell.config
        data = {"image_size": size, "cache_size": None, "synthetic": stand_in, "workers": 0,
                # curation kept, but scaled to a stand-in of a few dozen images
                "min_per_class": min(cfg.data.min_per_class, 2), "min_side": 0, "fraction": 1.0,
                "root": None if cfg.data.source == "synthetic" else str(stand_in_root(cfg.data, stand_in))}
        new = cfg.model_copy(update={
            "data": cfg.data.model_copy(update=data),
            "model": cfg.model.model_copy(update={"pretrained": False}),
            "train": cfg.train.model_copy(update={"epochs": 1, "max_steps": STEPS,
                                                  "batch_size": min(cfg.train.batch_size, BATCH),
                                                  "eval_batch_size": 32}),
        })
        out.append(dataclasses.replace(cell, config=new))
    return out
