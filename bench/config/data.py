"""`[data]`: where the images come from, how they are curated, split and sized."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, NonNegativeInt, field_validator, model_validator

from bench.config.base import Strict

# how each image is shown to the model and kept in the cache, not which images there are: left out of what
# names a split (bench.data.split_key) and a data set's files and curation (bench.suite.preflight)
VIEW_KEYS = frozenset({"image_size", "crop_pct", "cache_size", "decode"})


class SyntheticConfig(Strict):
    """The embedded generator: species-like classes that differ by shape and texture, long-tailed."""

    classes: int = Field(10, ge=2, le=200, description="classes of the generated data, each a shape filled with "
                         "a texture (see *Suites*, \"The embedded data\")")
    images: int = Field(1500, ge=10, description="images in all classes together")
    imbalance: float = Field(6.0, ge=1.0, description="images in the largest class / in the smallest: a "
                             "geometric long tail, as in iNaturalist")
    size: int = Field(64, ge=16, le=1024, description="side of the generated JPEGs, px")
    seed: int = Field(0, description="seeds the images themselves; the suite's seeds (split, initial weights, "
                      "training) do not change the data")


class DataConfig(Strict):
    """Where the images come from, how they are curated (in the order of the fields below), split and sized."""

    source: Literal["synthetic", "folder", "csv", "inat"] = Field(
        "synthetic", description="`synthetic`: the embedded generator; `folder`: an image folder "
        "(`ROOT/<class>/<image>`, or `train/` with optional `val/` and `test/` beside it); `csv`: a manifest; "
        "`inat`: iNaturalist's JSON annotations (see *Data*); every source but `synthetic` needs `root`")
    root: str | None = Field(None, description="the dataset folder, relative to where you run bench; every path "
                             "a manifest or annotation file names must stay inside it. `synthetic`: where to write "
                             "the generated images; unset: the cache (`~/.cache/bench`, or `$BENCH_CACHE`)")
    manifest: str = Field("labels.csv", description="`csv`: the manifest, relative to `root`, with a header "
                          "`path,label` and optionally `split` (`train`, `val`, `test`)")
    annotations: dict[Literal["train", "val", "test"], str] = Field(
        default_factory=dict, description="`inat`: split → JSON file relative to `root`, e.g. "
        '`{train = "train2019.json", val = "val2019.json"}`; `inat` needs `train`')
    image_size: int = Field(32, ge=8, le=1024, description="pixels the model sees, a square: evaluation resizes "
                            "the shorter side to `image_size / crop_pct` and centre-crops `image_size`; training "
                            "crops as `train.augment` says")
    crop_pct: float = Field(0.875, gt=0, le=1, description="evaluation's centre crop as a share of the resized "
                            "shorter side, timm's `crop_pct`: the shorter side goes to floor(`image_size` / "
                            "`crop_pct`) (0.875: 256 for 224), then `image_size` is cut from its centre; 1.0: "
                            "resize to `image_size` and cut the centre square (bench before schema 4, and the "
                            "studies, which resized whole images)")
    cache_size: int | None = Field(None, ge=8, le=2048, description="shorter side of the whole images kept in "
                                   "the decoded cache, px (a smaller image is kept as it is); `rrc` draws its "
                                   "crops from them, so a larger cache keeps more detail in small crops; at least "
                                   "`image_size` (below floor(`image_size` / `crop_pct`) evaluation enlarges the "
                                   "stored image); unset: floor(`image_size` / `crop_pct`), the size evaluation "
                                   "resizes to (then it only crops)")
    cache: Literal["decoded", "none"] = Field("decoded", description="`decoded`: every kept image decoded once "
                                              "into the decoded-image cache, whole (height × width × 3 bytes an "
                                              "image), reading one then a memory copy; `none`: no cache, each image decoded "
                                              "from its file whenever a batch needs it, to the same pixels (so "
                                              "neither the cell's id nor its numbers change), for data too big to "
                                              "cache: give it loader workers. `bench plan` says what the cache "
                                              "needs and refuses one that the disk cannot hold")
    decode: Literal["host", "device"] = Field("host", description="with `cache = \"none\"`: `host` decodes each "
                                             "file in the loader (reduced-scale JPEG decoding, the cache's very "
                                             "pixels); `device` ships the file's bytes and decodes them on the "
                                             "training device (nvJPEG on a GPU, libjpeg-turbo on a CPU) at full "
                                             "scale, then resizes there, so pixels differ from the cache's by a "
                                             "grey level or so; training augmentation must then run there too "
                                             "(`train.augment_on = \"device\"`, else the suite is refused), and "
                                             "`train.offline` and `aug_splits` are refused")
    split: tuple[float, float, float] = Field((0.7, 0.15, 0.15), description="train/val/test ratios, stratified "
                                              "per class; a source's own splits win, and a missing split is "
                                              "carved from train with its ratio; each ≥ 0, train and val > 0, "
                                              "summing to 1")
    source_split: bool = Field(True, description="use the source's own splits (iNat's val file, `val/` folders, "
                               "a `split` column); `false` pools all images and splits them by `data.split` "
                               "(study 001)")
    workers: NonNegativeInt | Literal["auto"] = Field("auto", description="DataLoader worker processes (they "
                                                      "persist from epoch to epoch); 0: load in the main process (a cached batch is one "
                                           "memory copy; workers pay off with heavy augmentation); `auto`: on a "
                                           "GPU the cell's share of the CPUs (per rank) less the one that "
                                           "trains, at most 8; on the CPU 0, since its cores train. Changes "
                                           "neither the cell's id nor its numbers: each draw's augmentation is "
                                           "seeded by (seed, epoch, place in the epoch)")
    # curation, applied in this order (see the docs' *Data* page)
    modes: Literal["convert", "drop"] = Field("convert", description="non-RGB images (L, P, RGBA, CMYK, ...): "
                                              "`convert` them to RGB or `drop` them (study 000 dropped 89 L and "
                                              "2 CMYK images)")
    min_side: int = Field(0, ge=0, description="drop images whose shorter side is below this many pixels")
    max_aspect: float | None = Field(None, ge=1.0, description="drop images whose long side / short side exceeds "
                                     "this; unset: keep every aspect")
    modal_size: bool = Field(False, description="keep only images of the most common width × height (study 004 "
                             "kept its 300×300 images)")
    min_per_class: int = Field(0, ge=0, description="prune classes with fewer training images (study 001: 100)")
    prune_splits: list[Literal["train", "val", "test"]] | None = Field(
        None, description="the splits that class pruning (`min_per_class`, `top_classes`) takes images from, "
        'e.g. `["train"]` (study 001): classes are counted on the training split after splitting, and val and '
        "test keep every class, so cells that prune differently share their split and `bench compare` pairs "
        "them; it lists `train`; unset: pruned before splitting")
    top_classes: int | None = Field(None, ge=2, description="keep the K most frequent classes (study 000: 100 of "
                                    "1,003); unset: every class")
    max_per_class: int | None = Field(None, ge=1, description="keep at most this many images per class (a fixed "
                                      "random subset); unset: no cap")
    fraction: float = Field(1.0, gt=0, le=1, description="keep a stratified random fraction of what is left, for "
                            "quick subsets")
    synthetic: SyntheticConfig = Field(SyntheticConfig(), description="the embedded generator's settings "
                                       "(`source = \"synthetic\"`)")

    @field_validator("split")
    @classmethod
    def _split_sums_to_one(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(r < 0 for r in v) or v[0] <= 0 or v[1] <= 0 or abs(sum(v) - 1.0) > 1e-6:
            raise ValueError("train, val and test ratios must be >= 0 (train and val > 0) and sum to 1")
        return v

    @model_validator(mode="after")
    def _source_needs(self) -> DataConfig:
        if self.source != "synthetic" and not self.root:
            raise ValueError(f"source '{self.source}' needs data.root, the folder that holds the images")
        if self.source == "inat" and "train" not in self.annotations:
            raise ValueError('source "inat" needs data.annotations.train (e.g. "train2019.json") and usually .val')
        if self.prune_splits is not None and (not self.prune_splits or "train" not in self.prune_splits):
            raise ValueError('prune_splits lists the splits pruned classes leave, train among them, e.g. ["train"]')
        if self.decode == "device" and self.cache != "none":
            raise ValueError('decode = "device" decodes files per batch, which data.cache = "none" does: the decoded '
                             'cache decodes each image once, on the host; set cache = "none" or decode = "host"')
        if self.cache_size is not None and self.cache_size < self.image_size:
            raise ValueError(f"cache_size ({self.cache_size}) must be >= image_size ({self.image_size})")
        return self

    @property
    def scale_size(self) -> int:
        """The shorter side evaluation resizes to before its centre crop (timm's rule: floor, not round)."""
        return math.floor(self.image_size / self.crop_pct)

    @property
    def stored_size(self) -> int:
        """The shorter side of the images in the decoded cache."""
        return self.cache_size or self.scale_size
