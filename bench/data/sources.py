"""Data sources: each reads a dataset's index (never the pixels) into `Samples`.

A source is a function in SOURCES, keyed by the name a suite writes in `data.source`. Paths are kept
relative to the data root; any path that would leave the root is refused, so a manifest cannot make
bench read arbitrary files.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.config import DataConfig
from bench.errors import UserError, first_line
from bench.registry import register

SOURCES: dict = {}
SPLITS = ("train", "val", "test")
# split folder names as other tools write them: timm's default is validation/, Kaggle and Roboflow use valid/
SPLIT_FOLDERS = {"train": ("train",), "val": ("val", "validation", "valid"), "test": ("test",)}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}


@dataclass
class Samples:
    root: Path
    paths: list[str]  # relative to root, '/'-separated
    labels: np.ndarray  # int64 index into classes
    classes: list[str]
    given: np.ndarray | None = None  # split name per image where the source defines splits
    class_meta: dict[str, dict] = field(default_factory=dict)  # e.g. iNat supercategory per class
    stats: np.ndarray | None = None  # (N, 2) int64 size and mtime ns per file, as listed (file_stats)

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
                       {c: self.class_meta[c] for c in classes if c in self.class_meta},
                       None if self.stats is None else self.stats[idx])


def _inside(root: Path, rel: str, where: str) -> str:
    """`rel` normalised, or a UserError if it is absolute or climbs out of root."""
    norm = os.path.normpath(rel.replace("\\", "/"))
    if os.path.isabs(norm) or norm == ".." or norm.startswith("../"):
        raise UserError(f"path '{rel}' in {where} points outside the data root '{root}'", key="data.root",
                        hint="paths in manifests and annotations must be relative and stay inside data.root")
    return norm.replace(os.sep, "/")


def _from_names(root: Path, paths: list[str], names: list[str], given: list[str] | None, stats: np.ndarray,
                class_meta: dict | None = None, order: list[str] | None = None) -> Samples:
    classes = order if order is not None else sorted(set(names))
    index = {c: i for i, c in enumerate(classes)}
    return Samples(root, paths, np.array([index[n] for n in names], dtype=np.int64), classes,
                   None if given is None else np.array(given, dtype=object), class_meta or {}, stats)


def image_files(folder: Path) -> list[Path]:
    """The image files under `folder`, sorted, as Path.rglob finds them (no symlinked folder entered, an
    unreadable one skipped, a suffix as Path.suffix reads it), but without a stat per file: a directory's
    entries say which are folders and files."""
    found, folders = [], [str(folder)]
    while folders:
        try:
            entries = list(os.scandir(folders.pop()))
        except OSError:
            continue
        for e in entries:
            dot = e.name.rfind(".")
            if e.is_dir() and not e.is_symlink():
                folders.append(e.path)
            elif 0 < dot < len(e.name) - 1 and e.name[dot:].lower() in IMAGE_SUFFIXES and e.is_file():
                found.append(Path(e.path))
    return sorted(found)


def file_stats(root: Path, paths: list[str]) -> np.ndarray:
    """(N, 2) int64: each file's size and mtime in ns, (-1, 0) where it is not a file (missing, a folder):
    what the caches' keys name the files by, and what their readers hold them to (bench.data.listing)."""
    base = str(root)  # os.path.join, not pathlib: 10x faster over millions of paths
    out = np.full((len(paths), 2), (-1, 0), dtype=np.int64)
    for i, p in enumerate(paths):
        try:
            st = os.stat(os.path.join(base, p))
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            out[i] = st.st_size, st.st_mtime_ns
    return out


def _data_root(root: str | Path) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"data folder '{root}' does not exist", key="data.root",
                        hint="put the data there (see docs/data.md), fix the path, or try --smoke")
    return root


def _listed_stats(root: Path, paths: list[str], rows: list[str], key: str) -> np.ndarray:
    """The files' stats (file_stats); a listed image that is not on disk is a wrong root or a stale list:
    refused, naming the first, rather than dropped as a bad file and trained on silently without it."""
    stats = file_stats(root, paths)
    missing = np.flatnonzero(stats[:, 0] < 0).tolist()
    if missing:
        first = missing[0]
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserError(f"{rows[first]} names image '{paths[first]}', which does not exist in '{root}'{more}",
                        key=key,
                        hint="paths are relative to data.root: fix data.root or the paths, or remove those rows")
    return stats


def _duplicates(paths: list[str], rows: list[str], key: str) -> None:
    """One image listed twice would be counted twice, or land in two splits (a test image trained on)."""
    seen: dict[str, int] = {}
    for i, p in enumerate(paths):
        if p in seen:
            raise UserError(f"{rows[i]} lists image '{p}' again (first at {rows[seen[p]]})", key=key,
                            hint="list each image once, with one label and one split")
        seen[p] = i


def scan_folder(root: str | Path) -> Samples:
    """ImageFolder layout, `root/<class>/*.jpg`, or with split folders, `root/{train,val,test}/<class>/*`
    (val/ may be named validation/ or valid/)."""
    root = _data_root(root)
    found = {s: [n for n in names if (root / n).is_dir()] for s, names in SPLIT_FOLDERS.items()}
    if len(found["val"]) > 1:
        raise UserError(f"'{root}' has {' and '.join(f + '/' for f in found['val'])}: which one is the validation "
                        "split is ambiguous", key="data.root", hint="keep one of them (or merge them)")
    parts = [(s, root / found[s][0]) for s in SPLITS if found[s]] if found["train"] else [(None, root)]
    paths, names, given = [], [], []
    for split, base in parts:
        for cls in sorted(d for d in base.iterdir() if d.is_dir()):
            for f in image_files(cls):
                paths.append(f.relative_to(root).as_posix())
                names.append(cls.name)
                given.append(split)
    if not paths:
        raise UserError(f"no class subfolders with images in '{root}'", key="data.root",
                        hint="lay it out as <root>/<class>/<image>.jpg, optionally under train/ val/ test/ "
                             "(val/ may be validation/ or valid/)")
    return _from_names(root, paths, names, given if parts[0][0] else None, file_stats(root, paths))


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

    root = _data_root(cfg.root)
    file = root / cfg.manifest
    key = "data.manifest"
    if not file.is_file():
        raise UserError(f"manifest '{file}' does not exist", key=key,
                        hint="write a CSV with columns path,label[,split] inside data.root")
    try:
        df = pd.read_csv(file, dtype=str, keep_default_na=False, encoding="utf-8")
    except pd.errors.EmptyDataError:
        raise UserError(f"manifest '{file}' is empty", key=key, hint="its first line must be path,label[,split]") from None
    except UnicodeDecodeError as e:
        raise UserError(f"manifest '{file}' is not UTF-8 text (byte {e.start})", key=key,
                        hint="save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None
    except Exception as e:  # pandas raises several parser error types
        raise UserError(f"cannot read manifest '{file}' ({first_line(e, typed=True)})", key=key) from None
    missing = {"path", "label"} - set(df.columns)
    if missing:
        raise UserError(f"manifest '{file}' lacks column(s) {sorted(missing)} (has {list(df.columns)})",
                        key=key, hint="the header must be path,label[,split]")
    if df.empty:
        raise UserError(f"manifest '{file}' has no rows", key=key)
    rows = [f"line {i + 2} of manifest '{file}'" for i in range(len(df))]  # the header is line 1
    for column in [c for c in ("path", "label", "split") if c in df.columns]:
        blank = [i for i, v in enumerate(df[column]) if not v.strip()]
        if blank:
            raise UserError(f"{rows[blank[0]]} has an empty {column}", key=key,
                            hint=f"give every row a {column}" + (" (train, val or test)" if column == "split" else ""))
    given = None
    if "split" in df.columns:
        bad = [i for i, v in enumerate(df["split"]) if v not in SPLITS]
        if bad:
            raise UserError(f"{rows[bad[0]]} has split '{df['split'].iloc[bad[0]]}'", key=key,
                            hint="split must be train, val or test")
        given = df["split"].tolist()
    paths = [_inside(root, p, str(file)) for p in df["path"]]
    _duplicates(paths, rows, key)
    stats = _listed_stats(root, paths, rows, key)
    return _from_names(root, paths, df["label"].tolist(), given, stats)


def _inat_file(file: Path, key: str) -> tuple[list[tuple[str, int | str, str]], list[dict]]:
    """([(file name, category id, which annotation)], categories) of one COCO-style file, every field
    checked: a damaged or hand-made file fails here, naming the entry, not later with a KeyError."""
    def bad(reason: str) -> UserError:
        return UserError(f"'{file}' is not COCO-style iNat JSON: {reason}", key=key,
                         hint="use the official annotation files, or fix that entry")

    try:
        doc = json.loads(file.read_bytes())
    except ValueError as e:  # not JSON, or not UTF-8
        raise UserError(f"'{file}' is not valid JSON ({first_line(e, typed=True)})", key=key,
                        hint="download it again (see docs/data.md, 'iNaturalist')") from None
    if not isinstance(doc, dict):
        raise bad(f"the top level is a {type(doc).__name__}, not an object with images, annotations, categories")
    for part in ("images", "annotations"):
        if part in doc and not isinstance(doc[part], list):
            raise bad(f"'{part}' is a {type(doc[part]).__name__}, not a list")
    if "images" not in doc:
        raise bad("it has no 'images' list")
    images: dict = {}
    for i, im in enumerate(doc["images"]):
        if not isinstance(im, dict) or not _scalar(im.get("id")) or not isinstance(im.get("file_name"), str):
            raise bad(f"images[{i}] needs an id and a file_name string (got {str(im)[:80]})")
        images[im["id"]] = im["file_name"]
    anns = []
    for i, a in enumerate(doc.get("annotations") or []):
        if not isinstance(a, dict) or not _scalar(a.get("image_id")) or not _scalar(a.get("category_id")):
            raise bad(f"annotations[{i}] needs an image_id and a category_id (got {str(a)[:80]})")
        if a["image_id"] not in images:
            raise bad(f"annotations[{i}] names image_id {a['image_id']!r}, which is not in its images")
        anns.append((images[a["image_id"]], a["category_id"], f"annotations[{i}]"))
    categories = doc.get("categories", [])
    if not isinstance(categories, list) or not all(isinstance(c, dict) and _scalar(c.get("id")) for c in categories):
        raise bad("'categories' must be a list of objects with an id")
    return anns, categories


def _scalar(value: object) -> bool:
    """An id JSON can hold and a dict can key: a number or a string (not a list, an object, null or a bool)."""
    return isinstance(value, int | str) and not isinstance(value, bool)


@register(SOURCES, "inat")
def inat(cfg: DataConfig) -> Samples:
    """iNaturalist 2017/2018/2019/2021 COCO-style annotations: one JSON per split, file_name under root."""
    root = _data_root(cfg.root)
    paths, cat_ids, given, rows, categories, stats = [], [], [], [], {}, []
    for split, name in cfg.annotations.items():
        file, key = root / name, f"data.annotations.{split}"
        if not file.is_file():
            raise UserError(f"annotation file '{file}' does not exist", key=key,
                            hint="download it next to the images (see docs/data.md, 'iNaturalist')")
        anns, cats = _inat_file(file, key)
        for c in cats:
            categories.setdefault(c["id"], c)
        if not anns:
            raise UserError(f"'{file}' has no annotations (an unlabelled test set?)", key=key,
                            hint="leave it out: bench carves a labelled test split from train")
        start = len(paths)
        for file_name, category, where in anns:
            paths.append(_inside(root, file_name, str(file)))
            cat_ids.append(category)
            given.append(split)
            rows.append(f"{where} of '{file}'")
        stats.append(_listed_stats(root, paths[start:], rows[start:], key))
    _duplicates(paths, rows, "data.annotations")
    ids = sorted(set(cat_ids), key=lambda i: (isinstance(i, str), i))
    names = {}
    for i in ids:  # 2019's names are bare numbers and may repeat across levels: fall back to the id
        c = categories.get(i, {})
        names[i] = str(c.get("name", i))
    if len(set(names.values())) < len(names):
        names = {i: f"{i}:{names[i]}" for i in ids}
    meta = {names[i]: {k: v for k, v in categories.get(i, {}).items() if k not in ("id", "name")} for i in ids}
    return _from_names(root, paths, [names[i] for i in cat_ids], given, np.concatenate([np.empty((0, 2), np.int64), *stats]), meta,
                       [names[i] for i in ids])


def read_source(cfg: DataConfig) -> Samples:
    return SOURCES[cfg.source](cfg)
