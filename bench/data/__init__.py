"""Data: read a source's index, curate it, decode the kept images once, split, and serve uint8 batches.

`prepare` is the one entry point the runner uses; each step lives in the module named for it.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.config import DataConfig
from bench.config.data import VIEW_KEYS
from bench.data import cache, curate, split
from bench.data.cache import files_key
from bench.data.listing import listed
from bench.data.loaders import ArrayDataset, FileDataset
from bench.data.sources import Samples
from bench.hashing import stable_hash
from bench.store import split_file

__all__ = ["Curated", "Prepared", "curated", "prepare", "split_key"]


@dataclass
class Curated:
    source: Samples  # everything the source lists
    probed: Samples  # the images whose headers were read: every one, or the classes pruning can keep
    probe: cache.Probe  # per probed image: mode, size, why unreadable
    samples: Samples  # what is left after every curation step, decodable
    decoded: cache.Decoded
    rows: np.ndarray  # row of each kept sample in the decoded cache
    steps: list[dict]
    bad: dict[str, str]  # relative path -> why it was excluded
    files: str  # the source's files as listed (see files_key)

    @property
    def modes(self) -> dict[str, int]:
        """Image modes among the readable images whose headers were read (with class pruning, of the classes
        it can keep)."""
        return dict(sorted(Counter(m for m in self.probe.modes.tolist() if m).items()))


def curated(cfg: DataConfig, listings: Path | str | None = None) -> Curated:
    """Source -> probe -> curation -> decoded cache (undecodable images dropped), all cached on disk; the
    source as the run listed it (`listings`: bench.data.listing), or listed now."""
    source = listed(cfg, listings)
    samples, probe, steps = curate.probed(source, cfg)
    keep, curation, bad = curate.curate(samples, probe, cfg)
    steps += curation
    kept = samples.subset(keep)
    # the cache's images, or (data.cache = "none") the files and which of them cannot be decoded
    build = cache.decoded if cfg.cache == "decoded" else cache.undecoded
    dec = build(kept.root, kept.paths, probe.width[keep], probe.height[keep], cfg.stored_size, kept.stats)
    ok = np.ones(len(kept.paths), dtype=bool)
    ok[list(dec.bad)] = False
    before = (len(kept.paths), len(kept.classes))
    final = kept.subset(ok)
    steps.append({"step": "undecodable", "detail": "", "images": [before[0], len(final.paths)],
                  "classes": [before[1], len(final.classes)]})
    bad_paths = {samples.paths[i]: why for i, why in bad.items()}
    bad_paths.update({kept.paths[i]: why for i, why in dec.bad.items()})
    return Curated(source, samples, probe, final, dec, np.flatnonzero(ok), steps, bad_paths, files_key(cfg, probe))


@dataclass
class Prepared:
    datasets: dict[str, ArrayDataset]  # FileDataset with data.cache = "none"
    classes: list[str]
    split_key: str
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def split_key(cfg: DataConfig, seed: int, files: str) -> str:
    """Everything that decides which image lands in which split, and nothing else (not sizes or workers)."""
    spec = cfg.model_dump(mode="json", exclude={*VIEW_KEYS, "cache", "workers", "prune_splits"})
    if cfg.prune_splits is not None:  # pruned after the split: the split itself does not depend on it
        spec.pop("min_per_class"), spec.pop("top_classes")
    return stable_hash({**spec, "seed": seed, "files": files}, 16)


def prepare(cfg: DataConfig, seed: int, split_dir: Path, augment_transform=None,
            listings: Path | str | None = None) -> Prepared:
    cur = curated(cfg, listings)
    s = cur.samples
    key = split_key(cfg, seed, cur.files)
    if not cfg.source_split:  # study 001 pooled iNat's train and val, then split 90/10 itself
        s = dataclasses.replace(s, given=None)
    parts = split.load_or_make(s, cfg.split, seed, split_file(split_dir, key))
    steps = cur.steps
    if cfg.prune_splits is not None:
        parts, pruned = curate.prune_after_split(s.labels, parts, cfg)
        steps = [*steps, *pruned]
    def dataset(name: str, idx: np.ndarray) -> ArrayDataset:
        common = (cur.rows[idx], s.labels[idx], cfg.image_size, cfg.scale_size,
                  augment_transform if name == "train" else None)
        if cfg.cache == "decoded":
            return ArrayDataset(cur.decoded.folder, *common, seed=seed)
        return FileDataset(cur.decoded.files, cfg.stored_size, *common, seed=seed,
                           shapes=cur.decoded.index[:, 1:] if cfg.decode == "device" else None,
                           stats=cur.decoded.stats)

    datasets = {name: dataset(name, idx) for name, idx in parts.items()}
    info = {"source": cfg.source, "root": str(s.root), "files": cur.files, "images": {k: len(v) for k, v in parts.items()},
            "origin": split.origins(s.given, cfg.split),
            "classes": len(s.classes), "curation": steps, "modes": cur.modes,
            "bad_images": {"count": len(cur.bad), "files": dict(list(sorted(cur.bad.items()))[:100])},
            "train_class_counts": np.bincount(s.labels[parts["train"]], minlength=len(s.classes)).tolist()}
    return Prepared(datasets, s.classes, key, info)
