"""Data sources: each reads a dataset's index (never the pixels) into `Samples`.

A source is a function in SOURCES, keyed by the name a suite writes in `data.source`. Paths are kept
relative to the data root; any path that would leave the root is refused, so a manifest cannot make
bench read arbitrary files.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.config import DataConfig
from bench.errors import UserError
from bench.registry import register

SOURCES: dict = {}
SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}


@dataclass
class Samples:
    root: Path
    paths: list[str]  # relative to root, '/'-separated
    labels: np.ndarray  # int64 index into classes
    classes: list[str]
    given: np.ndarray | None = None  # split name per image where the source defines splits
    class_meta: dict[str, dict] = field(default_factory=dict)  # e.g. iNat supercategory per class

    def subset(self, keep: np.ndarray) -> Samples:
        """The images where `keep` (bool mask or indices); classes left empty are dropped and relabelled."""
        idx = np.flatnonzero(keep) if np.asarray(keep).dtype == bool else np.asarray(keep, dtype=np.int64)
        labels = self.labels[idx]
        used = np.unique(labels)
        remap = np.full(len(self.classes), -1, dtype=np.int64)
        remap[used] = np.arange(len(used))
        classes = [self.classes[i] for i in used]
        return Samples(self.root, [self.paths[i] for i in idx], remap[labels], classes,
                       None if self.given is None else self.given[idx],
                       {c: self.class_meta[c] for c in classes if c in self.class_meta})


def _inside(root: Path, rel: str, where: str) -> str:
    """`rel` normalised, or a UserError if it is absolute or climbs out of root."""
    norm = os.path.normpath(rel.replace("\\", "/"))
    if os.path.isabs(norm) or norm == ".." or norm.startswith("../"):
        raise UserError(f"path '{rel}' in {where} points outside the data root '{root}'", key="data.root",
                        hint="paths in manifests and annotations must be relative and stay inside data.root")
    return norm.replace(os.sep, "/")


def _from_names(root: Path, paths: list[str], names: list[str], given: list[str] | None,
                class_meta: dict | None = None, order: list[str] | None = None) -> Samples:
    classes = order if order is not None else sorted(set(names))
    index = {c: i for i, c in enumerate(classes)}
    return Samples(root, paths, np.array([index[n] for n in names], dtype=np.int64), classes,
                   None if given is None else np.array(given, dtype=object), class_meta or {})


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def scan_folder(root: str | Path) -> Samples:
    """ImageFolder layout, `root/<class>/*.jpg`, or with split folders, `root/{train,val,test}/<class>/*`."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"data folder '{root}' does not exist", key="data.root",
                        hint="put the data there (see README, 'Data'), fix the path, or try --smoke")
    split_dirs = [s for s in SPLITS if (root / s).is_dir()]
    parts = [(s, root / s) for s in split_dirs] if "train" in split_dirs else [(None, root)]
    paths, names, given = [], [], []
    for split, base in parts:
        for cls in sorted(d for d in base.iterdir() if d.is_dir()):
            for f in _image_files(cls):
                paths.append(f.relative_to(root).as_posix())
                names.append(cls.name)
                given.append(split)
    if not paths:
        raise UserError(f"no class subfolders with images in '{root}'", key="data.root",
                        hint="lay it out as <root>/<class>/<image>.jpg, optionally under train/ val/ test/")
    return _from_names(root, paths, names, given if parts[0][0] else None)


@register(SOURCES, "folder")
def folder(cfg: DataConfig) -> Samples:
    return scan_folder(cfg.root)


@register(SOURCES, "synthetic")
def synthetic_source(cfg: DataConfig) -> Samples:
    from bench.data.synthetic import generate

    return scan_folder(generate(cfg.synthetic, Path(cfg.root) if cfg.root else None))


@register(SOURCES, "csv")
def csv_manifest(cfg: DataConfig) -> Samples:
    """A manifest with columns path,label and optionally split (train/val/test), paths relative to root."""
    import pandas as pd

    root = Path(cfg.root)
    file = root / cfg.manifest
    if not file.is_file():
        raise UserError(f"manifest '{file}' does not exist", key="data.manifest",
                        hint="write a CSV with columns path,label[,split] inside data.root")
    try:
        df = pd.read_csv(file, dtype=str, keep_default_na=False)
    except Exception as e:  # pandas raises several parser error types
        raise UserError(f"cannot read manifest '{file}' ({e})", key="data.manifest") from None
    missing = {"path", "label"} - set(df.columns)
    if missing:
        raise UserError(f"manifest '{file}' lacks column(s) {sorted(missing)} (has {list(df.columns)})",
                        key="data.manifest", hint="the header must be path,label[,split]")
    if df.empty:
        raise UserError(f"manifest '{file}' has no rows", key="data.manifest")
    given = None
    if "split" in df.columns:
        bad = sorted(set(df["split"]) - set(SPLITS))
        if bad:
            raise UserError(f"manifest '{file}' has split value(s) {bad[:3]}", key="data.manifest",
                            hint="split must be train, val or test")
        given = df["split"].tolist()
    paths = [_inside(root, p, str(file)) for p in df["path"]]
    return _from_names(root, paths, df["label"].tolist(), given)


@register(SOURCES, "inat")
def inat(cfg: DataConfig) -> Samples:
    """iNaturalist 2017/2018/2019/2021 COCO-style annotations: one JSON per split, file_name under root."""
    root = Path(cfg.root)
    paths, cat_ids, given, categories = [], [], [], {}
    for split, name in cfg.annotations.items():
        file = root / name
        if not file.is_file():
            raise UserError(f"annotation file '{file}' does not exist", key=f"data.annotations.{split}",
                            hint="download it next to the images (see README, 'iNaturalist')")
        try:
            doc = json.loads(file.read_text())
            images = {im["id"]: im["file_name"] for im in doc["images"]}
            anns = doc.get("annotations") or []
            for c in doc.get("categories", []):
                categories.setdefault(c["id"], c)
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"'{file}' is not COCO-style iNat JSON ({type(e).__name__}: {e})",
                            key=f"data.annotations.{split}") from None
        if not anns:
            raise UserError(f"'{file}' has no annotations (an unlabelled test set?)", key=f"data.annotations.{split}",
                            hint="leave it out: bench carves a labelled test split from train")
        for a in anns:
            paths.append(_inside(root, images[a["image_id"]], str(file)))
            cat_ids.append(a["category_id"])
            given.append(split)
    ids = sorted(set(cat_ids))
    names = {}
    for i in ids:  # 2019's names are bare numbers and may repeat across levels: fall back to the id
        c = categories.get(i, {})
        names[i] = str(c.get("name", i))
    if len(set(names.values())) < len(names):
        names = {i: f"{i}:{names[i]}" for i in ids}
    meta = {names[i]: {k: v for k, v in categories.get(i, {}).items() if k not in ("id", "name")} for i in ids}
    return _from_names(root, paths, [names[i] for i in cat_ids], given, meta, [names[i] for i in ids])


def read_source(cfg: DataConfig) -> Samples:
    return SOURCES[cfg.source](cfg)
