"""Curation: the studies' data-cleaning steps as suite keys, applied in one fixed, documented order.

    candidates  classes that class pruning cannot keep, by the source's counts  min_per_class / top_classes
                (their headers are never read; not with prune_splits or modal_size)
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

import dataclasses
from collections import Counter
from pathlib import Path

import numpy as np

from bench.config import DataConfig, SyntheticConfig
from bench.data.cache import Probe
from bench.data.sources import Samples
from bench.errors import UserError

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
    if cfg.prune_splits is None:  # else after the split, from the listed splits: prune_after_split
        for name, detail, kept_classes in class_pruning(lambda: _counts(samples, keep), cfg):
            step(name, kept_classes[samples.labels], detail)
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


def probed(samples: Samples, cfg: DataConfig) -> tuple[Samples, Probe, list[dict]]:
    """(the images whose headers curation needs, their probe, the step that left the others) — with class
    pruning before the split, only the classes it can keep: iNat 2021's 100 most frequent species are 3% of
    its 2.7 M images. A step only drops images, so a class whose listed images are too few for
    min_per_class cannot survive it; for top_classes the classes are probed from the most listed down until
    no unprobed class lists as many images as the K-th largest probed one keeps (those below it cannot reach
    the top K, not even tied), a few rounds at most. What curation then keeps is exactly what it would keep
    of every image: the same images, classes and splits."""
    from bench.data.cache import probe as probe_headers
    from bench.hashing import stable_hash

    pruning = cfg.min_per_class or cfg.top_classes is not None
    # modal_size counts every image's size; generated data's headers are known without reading them (preview)
    if not pruning or cfg.prune_splits is not None or cfg.modal_size or cfg.source == "synthetic":
        return samples, probe_headers(samples.root, samples.paths, samples.stats), []
    listed = _counts(samples, np.ones(len(samples.paths), dtype=bool))
    floor = max(cfg.min_per_class, 1)
    threshold = floor
    if cfg.top_classes is not None and (listed >= floor).sum() > cfg.top_classes:
        threshold = max(floor, int(np.sort(listed)[::-1][cfg.top_classes - 1]))
    n = len(samples.paths)  # every image's header as the rounds read them; `read`: which were
    heads = Probe(np.full(n, "", dtype=object), np.zeros(n, np.int64), np.zeros(n, np.int64), np.full(n, "", dtype=object))
    read, keys = np.zeros(n, dtype=bool), []
    while True:
        rows = np.flatnonzero((listed >= threshold)[samples.labels])
        new = rows[~read[rows]]
        if len(new):
            got = probe_headers(samples.root, [samples.paths[i] for i in new],
                                None if samples.stats is None else samples.stats[new])
            keys.append(got.key)
            heads.modes[new], heads.width[new], heads.height[new], heads.bad[new] = got.modes, got.width, got.height, got.bad
            read[new] = True
        candidates = samples.subset(rows)
        probe = Probe(heads.modes[rows], heads.width[rows], heads.height[rows], heads.bad[rows],
                      keys[0] if len(keys) == 1 else stable_hash(keys, 16))
        if cfg.top_classes is None or threshold == floor:
            break
        ranked = cfg.model_copy(update={"top_classes": None, "max_per_class": None, "fraction": 1.0})
        kept, _, _ = curate(candidates, probe, ranked)  # what each probed class keeps before top_classes
        kth = np.sort(_counts(candidates, kept))[::-1]
        reach = max(floor, int(kth[cfg.top_classes - 1])) if len(kth) >= cfg.top_classes else floor
        if not (listed[listed < threshold] >= reach).any():
            break
        threshold = reach
    step = {"step": "candidates", "detail": "classes class pruning cannot keep, left unprobed",
            "images": [len(samples.paths), len(candidates.paths)],
            "classes": [len(np.unique(samples.labels)), len(candidates.classes)]}
    return candidates, probe, [step]


def class_pruning(counts, cfg: DataConfig):
    """(step, detail, kept classes mask) for min_per_class, then top_classes, each judged on `counts()`, the
    training images per class that the step before left."""
    if cfg.min_per_class:
        yield "min_per_class", f">= {cfg.min_per_class}", counts() >= cfg.min_per_class
    if cfg.top_classes is not None:
        c = counts()
        # most frequent first; ties broken by class order, so the choice is stable
        top = np.argsort(-c, kind="stable")[: cfg.top_classes]
        yield "top_classes", f"{cfg.top_classes}", np.isin(np.arange(len(c)), top[c[top] > 0])


def prune_after_split(labels: np.ndarray, parts: dict[str, np.ndarray], cfg: DataConfig
                      ) -> tuple[dict[str, np.ndarray], list[dict]]:
    """data.prune_splits: classes pruned by their training images in the split, their images taken from the
    listed splits only, so two cells that prune differently are evaluated on the very same images (study 001,
    Table 2). Every class stays an output of the model."""
    parts = dict(parts)
    steps = []
    n_classes = int(labels.max()) + 1 if len(labels) else 0

    def counts():
        return np.bincount(labels[parts["train"]], minlength=n_classes)

    for name, detail, kept in class_pruning(counts, cfg):
        before = {s: len(parts[s]) for s in cfg.prune_splits}
        classes_before = int((counts() > 0).sum())
        for s in cfg.prune_splits:
            parts[s] = parts[s][kept[labels[parts[s]]]]
        steps.append({"step": name, "detail": f"{detail}, from {', '.join(cfg.prune_splits)}",
                      "images": [sum(before.values()), sum(len(parts[s]) for s in cfg.prune_splits)],
                      "classes": [classes_before, int((counts() > 0).sum())]})
    return parts, steps


# The suite key that names the data itself, by source: where a data set too small to train on comes from.
SOURCE_KEY = {"folder": "data.root", "synthetic": "data.synthetic", "csv": "data.manifest", "inat": "data.annotations"}


def preview(cfg: DataConfig, source: Samples | None = None) -> tuple[Samples, np.ndarray, list[dict], str, Probe]:
    """(the images whose headers were read (`probed`), the mask curation keeps, its steps,
    bench.data.cache.files_key, their probe) from image headers alone, nothing decoded: what
    `require_trainable` judges before a cell starts; `source`: the source as listed (else listed now).
    Synthetic data is not generated for it: its class sizes and image size follow from the config, as
    bench.data.synthetic.generate draws them."""
    from bench.data.cache import files_key
    from bench.data.listing import listed

    if cfg.source == "synthetic":
        samples, probe = _synthetic_index(cfg.synthetic)
        first = []
    else:
        samples, probe, first = probed(source if source is not None else listed(cfg), cfg)
    keep, steps, _ = curate(samples, probe, cfg)
    return samples, keep, first + steps, files_key(cfg, probe), probe


def _synthetic_index(sc: SyntheticConfig) -> tuple[Samples, Probe]:
    from bench.data.synthetic import class_name, class_sizes

    sizes = [(class_name(c), n) for c, n in enumerate(class_sizes(sc)) if n]  # generate leaves 0-image folders empty
    paths = [f"{name}/{i:05d}.jpg" for name, n in sizes for i in range(n)]
    labels = np.repeat(np.arange(len(sizes)), [n for _, n in sizes]).astype(np.int64)
    n = len(paths)
    full = np.full(n, sc.size, dtype=np.int64)
    return (Samples(Path("."), paths, labels, [name for name, _ in sizes]),
            Probe(np.full(n, "RGB", dtype=object), full, full.copy(), np.full(n, "", dtype=object)))


def require_trainable(samples: Samples, keep: np.ndarray, steps: list[dict], cfg: DataConfig) -> None:
    """UserError unless what curation keeps can train and be validated: two classes or more, every class with
    two images or more (one image cannot be in train and val) and, where the source gives its own splits, a
    training image; and a validation split that is not empty. Checked on the images' headers: a file that
    later fails to decode can still take a class below this, and is listed among the bad images."""
    from bench.data.split import make as make_split

    kept = samples.subset(keep)
    if len(kept.classes) < 2:
        left = f"one class ('{kept.classes[0]}')" if kept.classes else "no images"
        for s in steps:  # the curation step that left fewer than two classes, if one did
            if s["classes"][1] < 2 <= s["classes"][0]:
                if s["step"] == "unreadable":
                    raise UserError(f"{s['images'][0] - s['images'][1]} of {s['images'][0]} images cannot be read, "
                                    f"which leaves {left}", key=SOURCE_KEY[cfg.source],
                                    hint=f"`bench data inspect {samples.root}` says why, file by file")
                name, detail = s["step"], s["detail"]
                if name == "candidates":  # classes left unread: the class pruning's doing
                    name, detail = ("min_per_class", f">= {cfg.min_per_class}") if cfg.min_per_class else \
                        ("top_classes", f"{cfg.top_classes}")
                setting = f"data.{name}" + (f" ({detail})" if detail else "")
                raise UserError(f"curation leaves {left}: {setting} keeps {s['images'][1]} of {s['images'][0]} "
                                "images", key=f"data.{name}",
                                hint="a classifier needs two classes or more: relax it, or add images")
        raise UserError(f"the data has {left}", key=SOURCE_KEY[cfg.source],
                        hint="a classifier needs two classes or more: add images of another class")
    own = cfg.source_split and kept.given is not None and (kept.given == "train").any()
    if not own:  # as prepare splits it: pooled, then stratified by data.split
        kept = dataclasses.replace(kept, given=None)
    few = np.bincount(kept.labels, minlength=len(kept.classes)) < 2
    no_train = ~np.isin(np.arange(len(kept.classes)), kept.labels[kept.given == "train"]) if own else np.zeros_like(few)
    for bad, problem, drop in ((few, "one image, so it cannot be in both train and val", 2),
                               (no_train, "no training image (all are in val or test)", 1)):
        if bad.any():
            names = [kept.classes[i] for i in np.flatnonzero(bad)]
            shown = ", ".join(f"'{c}'" for c in names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            has = "class {} has" if len(names) == 1 else "classes {} have"
            raise UserError(f"{has.format(shown)} {problem}", key=SOURCE_KEY[cfg.source],
                            hint=f"add images, or set data.min_per_class = {drop} to drop such classes")
    if not len(make_split(kept, cfg.split, 0)["val"]):  # how many land in val does not depend on the seed
        raise UserError(f"no image lands in the validation split: {len(kept.paths)} images in {len(kept.classes)} "
                        f"classes are too few for data.split = {list(cfg.split)}", key="data.split",
                        hint="add images (3 or more per class), or raise the val share of data.split")
