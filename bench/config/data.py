"""`[data]`: where the images come from, how they are curated, split and sized."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from bench.config.base import Strict


class SyntheticConfig(Strict):
    """The embedded generator: species-like classes that differ by shape and texture, long-tailed."""

    classes: int = Field(10, ge=2, le=200)
    images: int = Field(1500, ge=10)  # in all classes together
    imbalance: float = Field(6.0, ge=1.0)  # images in the largest class / in the smallest (the long tail)
    size: int = Field(64, ge=16, le=1024)  # side of the generated JPEGs, px
    seed: int = 0  # seeds the data itself; the suite's seeds drive split, init and training


class DataConfig(Strict):
    """Where the images come from, how they are curated (in the order of the fields below), split and sized."""

    source: Literal["synthetic", "folder", "csv", "inat"] = "synthetic"
    root: str | None = None  # the dataset folder; synthetic: where to write it (default: the cache)
    manifest: str = "labels.csv"  # csv: path,label[,split] rows, relative to root
    annotations: dict[Literal["train", "val", "test"], str] = Field(default_factory=dict)  # inat: split -> JSON
    image_size: int = Field(32, ge=8, le=1024)  # px the model sees (shorter side resized, centre crop)
    cache_size: int | None = Field(None, ge=8, le=2048)  # px side kept in the decoded cache; > image_size leaves room for crops
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)  # train/val/test, stratified per class
    source_split: bool = True  # use the source's own splits; false pools everything and splits by ratio
    workers: int = Field(0, ge=0)  # DataLoader worker processes; 0 reads batches in the main process
    # curation, applied in this order (see README, "Curation")
    modes: Literal["convert", "drop"] = "convert"  # images that are not RGB (L, P, RGBA, CMYK, ...)
    min_side: int = Field(0, ge=0)  # drop images whose shorter side is below this, px
    max_aspect: float | None = Field(None, ge=1.0)  # drop images with long side / short side above this
    modal_size: bool = False  # keep only images of the most common width x height (study 004)
    min_per_class: int = Field(0, ge=0)  # prune classes with fewer training images (study 001: 100)
    # the splits class pruning (min_per_class, top_classes) takes images from, counted on the train split
    # after splitting (study 001: ["train"]: val and test keep every class); unset: pruned before splitting
    prune_splits: list[Literal["train", "val", "test"]] | None = None
    top_classes: int | None = Field(None, ge=2)  # keep the K most frequent classes (study 000: 100)
    max_per_class: int | None = Field(None, ge=1)  # cap each class, a random subset
    fraction: float = Field(1.0, gt=0, le=1)  # a stratified random fraction of what is left
    synthetic: SyntheticConfig = SyntheticConfig()

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
        if self.cache_size is not None and self.cache_size < self.image_size:
            raise ValueError(f"cache_size ({self.cache_size}) must be >= image_size ({self.image_size})")
        return self

    @property
    def stored_size(self) -> int:
        return self.cache_size or self.image_size
