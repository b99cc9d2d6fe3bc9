"""Curation: the studies' data-cleaning steps as suite keys, applied in one fixed, documented order.

    unreadable  files whose header cannot be read (zero bytes, not an image)   always
    modes       non-RGB images converted or dropped                            data.modes
    sizes       shorter side, aspect ratio, only the modal size                data.min_side / max_aspect / modal_size
    min_per_class, top_classes, max_per_class, fraction                       data.*
    undecodable files that fail full decoding (truncated, corrupt)            always, when the cache is built

Every step records images and classes before and after; the list goes into each cell's result and is
printed by `bench plan`. Counting steps count training images where the source defines a train split,
else all images. Random subsets use a fixed generator, not the suite seed: every cell sees the same images.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from bench.config import DataConfig
from bench.data.cache import Probe
from bench.data.sources import Samples

CURATION_SEED = 20190611  # fixed: curation defines the data set, it is not a source of seed variance


def _counts(samples: Samples, keep: np.ndarray) -> np.ndarray:
    """Images per class among kept ones (training images only, where the source has a train split)."""
    mask = keep if samples.given is None or not (samples.given == "train").any() else keep & (samples.given == "train")
    return np.bincount(samples.labels[mask], minlength=len(samples.classes))


def curate(samples: Samples, probe: Probe, cfg: DataConfig) -> tuple[np.ndarray, list[dict], dict[int, str]]:
    """(kept mask, step records, bad image index -> reason) for the steps that need no decoding."""
    keep = np.ones(len(samples.paths), dtype=bool)
    steps: list[dict] = []

    def step(name: str, new_keep: np.ndarray, detail: str = "") -> None:
        nonlocal keep
        before_i, before_c = int(keep.sum()), len(np.unique(samples.labels[keep]))
        keep = keep & new_keep
        steps.append({"step": name, "detail": detail, "images": [before_i, int(keep.sum())],
                      "classes": [before_c, len(np.unique(samples.labels[keep]))]})

    bad = probe.bad != ""
    step("unreadable", ~bad)
    rgb = probe.modes == "RGB"
    modes = Counter(probe.modes[keep & ~rgb].tolist())
    detail = ", ".join(f"{m}: {n}" for m, n in sorted(modes.items()))
    step("modes", rgb | (cfg.modes == "convert"), f"{cfg.modes} {detail or 'none non-RGB'}")
    short, long = np.minimum(probe.width, probe.height), np.maximum(probe.width, probe.height)
    if cfg.min_side:
        step("min_side", short >= cfg.min_side, f">= {cfg.min_side}px")
    if cfg.max_aspect is not None:
        step("max_aspect", long <= cfg.max_aspect * np.maximum(short, 1), f"<= {cfg.max_aspect}")
    if cfg.modal_size and keep.any():
        sizes = Counter(zip(probe.width[keep].tolist(), probe.height[keep].tolist(), strict=True))
        (w, h), _ = sizes.most_common(1)[0]
        step("modal_size", (probe.width == w) & (probe.height == h), f"{w}x{h}")
    if cfg.min_per_class:
        counts = _counts(samples, keep)
        step("min_per_class", counts[samples.labels] >= cfg.min_per_class, f">= {cfg.min_per_class}")
    if cfg.top_classes is not None:
        counts = _counts(samples, keep)
        # most frequent first; ties broken by class order, so the choice is stable
        top = np.argsort(-counts, kind="stable")[: cfg.top_classes]
        top = top[counts[top] > 0]
        step("top_classes", np.isin(samples.labels, top), f"{cfg.top_classes}")
    rng = np.random.default_rng(CURATION_SEED)
    if cfg.max_per_class is not None:
        cap = np.zeros_like(keep)
        for c in np.unique(samples.labels[keep]):
            idx = np.flatnonzero(keep & (samples.labels == c))
            cap[rng.permutation(idx)[: cfg.max_per_class]] = True
        step("max_per_class", cap, f"<= {cfg.max_per_class}")
    if cfg.fraction < 1.0:
        frac = np.zeros_like(keep)
        for c in np.unique(samples.labels[keep]):
            idx = np.flatnonzero(keep & (samples.labels == c))
            frac[rng.permutation(idx)[: max(1, int(round(len(idx) * cfg.fraction)))]] = True
        step("fraction", frac, f"{cfg.fraction}")
    return keep, steps, {int(i): str(probe.bad[i]) for i in np.flatnonzero(bad)}
