"""The suite schema: frozen pydantic models with the defaults in code, loading, and one-line errors.

A suite file only overrides these defaults. Every key a suite may set is a field below; the README's
key reference is written from them. This module is pure data: it imports neither torch nor any registry,
so reading a suite is instant. Names checked against a registry (architectures, optimizers, augmentations,
...) are validated in one pass after parsing, by bench.suite, before anything trains.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bench.errors import UserError, did_you_mean


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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


FREEZE_PATTERN = re.compile(r"^(none|all_but_head|features|(first|last|last_conv):\d+)$")


class ModelConfig(Strict):
    """The network: architecture, starting weights, the classifier head, and what trains."""

    arch: str = "bench:small_cnn"  # prefix:name, see `bench models`
    pretrained: bool | str = False  # false | true (hub weights) | path to a .safetensors/.pt state dict
    # none | all_but_head | features | first:N | last:N (N layers with weights) | last_conv:N (convolutions)
    freeze: str = "none"
    init_from: str | None = None  # label of a [[cells]] entry whose best weights this cell starts from
    # keyword arguments of the architecture's constructor (timm.create_model, torchvision's builders, a
    # built-in), e.g. {drop_path_rate = 0.1}; a grid axis as "model.kwargs.drop_path_rate" = [0, 0.1]
    kwargs: dict[str, Any] = Field(default_factory=dict)
    # the head, replacing the architecture's classifier (README, "Models, heads, freezing and staged cells")
    pool: Literal["avg", "max", "avgmax"] | None = None  # global pooling; unset: the architecture's own
    head_hidden: tuple[int, ...] = ()  # widths of dense layers between the pooled features and the classes
    head_activation: Literal["relu", "gelu", "silu", "tanh", "elu", "leaky_relu"] = "relu"  # after each hidden
    head_dropout: float = Field(0.0, ge=0, lt=1)  # dropout before each linear layer of the head
    # what the head replaces: "last" (the class layer) or "classifier" (VGG's and AlexNet's whole dense
    # classifier and adaptive pooling: the head reads the convolutional base's flattened output, study 000)
    head_replaces: Literal["last", "classifier"] = "last"

    def head_options(self) -> dict[str, Any]:
        """bench.models.heads.build_head's keyword arguments."""
        return {"pool": self.pool, "hidden": self.head_hidden, "activation": self.head_activation,
                "dropout": self.head_dropout, "replaces": self.head_replaces}

    @field_validator("freeze")
    @classmethod
    def _freeze_syntax(cls, v: str) -> str:
        if not FREEZE_PATTERN.match(v):
            raise ValueError(f"'{v}' is not a freeze mode; use none, all_but_head, features, first:N, last:N "
                             "or last_conv:N")
        return v

    @field_validator("head_hidden")
    @classmethod
    def _positive_widths(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(w < 1 for w in v):
            raise ValueError("head_hidden widths must be >= 1, e.g. [256]")
        return v


# the deterministic copies an offline list may hold (bench/techniques/offline.py builds them)
OfflineCopy = Literal["identity", "hflip", "vflip", "hvflip", "rot90", "rot180", "rot270"]


class TrainConfig(Strict):
    """How a cell trains; every technique is one key (see README, "Techniques")."""

    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=1)
    eval_batch_size: int = Field(256, ge=1)
    # optimisation
    optimizer: str = "sgd"  # any of timm's: sgd, adam, adamw, rmsprop, lamb, lion, ... (README, "Techniques")
    lr: float = Field(0.01, gt=0)  # peak lr; the head's lr when backbone_lr is set
    backbone_lr: float | None = Field(None, ge=0)  # lr of everything but the classifier head (study 000)
    layer_decay: float | None = Field(None, gt=0, le=1)  # timm models: lr x layer_decay^depth below the head
    momentum: float = Field(0.9, ge=0)  # optimizers that take one (sgd, rmsprop, lars, ...)
    nesterov: bool = False  # sgd
    betas: tuple[float, ...] | None = None  # Adam-like optimizers (adan: three); unset: each one's default
    eps: float | None = Field(None, gt=0)  # the optimizer's epsilon; unset: its default
    # RMSprop's squared-gradient decay (torch's alpha, Keras' rho); unset: 0.99 (torch), rmsproptf* 0.9 (timm)
    rmsprop_alpha: float | None = Field(None, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    wd_norm_bias: bool = True  # false: no weight decay on biases and norm weights (timm's filter_bias_and_bn)
    # constant | step | multistep | cosine | restarts | poly | plateau | onecycle | cyclical; per batch
    schedule: str = "constant"
    step_size: int = Field(3, ge=1)  # epochs between decays, step schedule
    gamma: float = Field(0.1, gt=0)  # decay factor, step, multistep and plateau
    milestones: list[int] = Field(default_factory=list)  # epochs at which multistep multiplies by gamma
    min_lr: float = Field(0.0, ge=0)  # where cosine, restarts, poly end, plateau's floor, cyclical's bottom
    cycle_epochs: float = Field(4.0, gt=0)  # cyclical: epochs per full triangle; restarts: the first cycle
    cycle_mode: Literal["triangular", "triangular2"] = "triangular"  # triangular2 halves the height each cycle
    restart_mult: float = Field(1.0, ge=1)  # restarts: each cycle this many times longer than the last
    restart_decay: float = Field(1.0, gt=0, le=1)  # restarts: each cycle's peak this many times the last's
    poly_power: float = Field(1.0, gt=0)  # poly: (1 - t/T)^power; 1 is linear
    plateau_patience: int = Field(2, ge=1)  # plateau: epochs without improvement of monitor, then x gamma
    cooldown_epochs: float = Field(0.0, ge=0)  # cosine, restarts, poly: last epochs at min_lr (as timm)
    pct_start: float = Field(0.3, gt=0, lt=1)  # onecycle: fraction of the run spent rising
    warmup_epochs: float = Field(0.0, ge=0)  # linear warmup, multiplies any schedule
    # loss
    loss: str = "ce"  # ce | weighted_ce | focal | complement | bce | jsd
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    class_weights: Literal["inverse", "sqrt_inverse", "effective"] = "inverse"  # weighted_ce
    effective_beta: float = Field(0.999, ge=0, lt=1)  # class_weights = "effective"
    focal_gamma: float = Field(2.0, ge=0)
    focal_alpha: float | None = Field(None, gt=0)  # a constant factor, as Keras' categorical focal loss
    complement_weight: float = Field(1.0, ge=0)  # complement: weight of the complement entropy term
    bce_target_threshold: float | None = Field(None, ge=0, lt=1)  # bce: targets above it -> 1, the rest 0 (timm)
    bce_pos_weight: float | None = Field(None, gt=0)  # bce: weight of the positive term (timm's pos_weight)
    bce_sum: bool = False  # bce: sum over classes, then mean over the batch (timm's --bce-sum)
    jsd_alpha: float = Field(12.0, ge=0)  # jsd: weight of the Jensen-Shannon consistency term (AugMix)
    head_l1: float = Field(0.0, ge=0)  # penalty on the head's weights, added to the loss (study 002)
    head_l2: float = Field(0.0, ge=0)
    # data seen in training
    augment: str | list[str | dict[str, Any]] = "none"  # preset, op, or list (README, "Techniques")
    # K >= 2: a fixed K-times training set (the original + K-1 copies augmented by `augment`), or a list of
    # fixed copies, e.g. ["identity", "hflip", "vflip", "hvflip"] (study 004), each then augmented offline_random times
    offline: int | list[OfflineCopy] = 0
    offline_random: int = Field(0, ge=0)  # with a list: randomly augmented versions of every fixed copy
    # K >= 2: each image in the batch K times, clean then K-1 augmented views (timm's --aug-splits, for jsd)
    aug_splits: int = Field(0, ge=0)
    mix: str = "none"  # none | mixup | cutmix | cutmix_mixup, on the batch
    mix_alpha: float = Field(1.0, gt=0)  # Beta(alpha, alpha) for the mixing ratio (mixup's, and cutmix's if unset)
    cutmix_alpha: float | None = Field(None, gt=0)  # cutmix's Beta(alpha, alpha); unset: mix_alpha
    cutmix_minmax: tuple[float, float] | None = None  # cutmix box side as a fraction of the image, drawn in [min, max]
    mix_prob: float = Field(1.0, ge=0, le=1)  # fraction of batches (pairs, samples) mixed
    mix_switch_prob: float = Field(0.5, ge=0, le=1)  # cutmix_mixup: probability of cutmix rather than mixup
    mix_mode: Literal["batch", "pair", "elem"] = "batch"  # one ratio per batch, per pair of images, or per image
    mix_off_epoch: int | None = Field(None, ge=1)  # mix epochs 1..N only, then train on clean images (timm)
    sampler: str = "uniform"  # uniform | balanced | sqrt
    # evaluation and stopping
    tta: list[str] = Field(default_factory=list)  # test-time views, e.g. ["hflip", "rotate:10", "shift:3"]
    patience: int | None = Field(None, ge=1)  # early stopping: epochs without improvement (study 004: 3)
    monitor: Literal["val_error", "val_loss", "val_top5_error", "val_accuracy"] = "val_error"
    mode: Literal["auto", "min", "max"] = "auto"  # auto: max for val_accuracy, min otherwise
    min_delta: float = Field(0.0, ge=0)  # smaller changes of the monitor do not count as improvement
    # the step: gradient clipping and accumulation, weight EMA (timm's dispatch_clip_grad and ModelEmaV3)
    clip_grad: float | None = Field(None, gt=0)  # threshold: the norm, |value|, or AGC's clip factor
    clip_mode: Literal["norm", "value", "agc"] = "norm"  # agc leaves the head alone, as timm's train.py
    accumulate: int = Field(1, ge=1)  # batches whose gradients make one optimizer step (and schedule step)
    ema: bool = False  # keep an exponential moving average of the weights, validated every epoch too
    ema_decay: float = Field(0.9998, gt=0, lt=1)  # per optimizer step; timm's train.py default
    ema_warmup: bool = False  # decay ramps up as 1 - (1 + step)^(-2/3) to ema_decay (timm's warmup)
    ema_select: Literal["raw", "ema"] = "ema"  # whose validation picks the best epoch and is the result
    # precision and layout
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast; fp16 (with a GradScaler) on CUDA only
    channels_last: bool = False
    compile: bool = False  # torch.compile the model
    max_steps: int | None = Field(None, ge=1)  # cap on training batches per epoch (smoke runs)

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr ({self.min_lr}) must be <= lr ({self.lr})")
        if self.schedule == "multistep" and not self.milestones:
            raise ValueError("schedule 'multistep' needs milestones, e.g. milestones = [5, 8] (epochs)")
        if self.layer_decay is not None and self.backbone_lr is not None:
            raise ValueError("layer_decay and backbone_lr are exclusive: layer_decay already lowers every "
                             "layer below the head (lr x layer_decay^depth); set one of them")
        betas = self.betas or ()
        if self.betas is not None and (len(betas) not in (2, 3) or not all(0 <= b < 1 for b in betas)):
            raise ValueError(f"betas must be 2 (adan: 3) values in [0, 1), e.g. [0.9, 0.999]: {list(betas)}")
        if self.schedule == "plateau" and self.gamma >= 1:
            raise ValueError(f"schedule 'plateau' multiplies the lr by gamma < 1, not {self.gamma}")
        if self.cooldown_epochs and self.schedule not in ("cosine", "restarts", "poly"):
            raise ValueError(f"cooldown_epochs follow a schedule that ends at min_lr (cosine, restarts, "
                             f"poly), not '{self.schedule}'")
        if self.cooldown_epochs >= self.epochs:
            raise ValueError(f"cooldown_epochs ({self.cooldown_epochs}) must be < epochs ({self.epochs})")
        if self.cutmix_minmax is not None and not 0 < self.cutmix_minmax[0] < self.cutmix_minmax[1] <= 1:
            raise ValueError(f"cutmix_minmax must be [min, max] with 0 < min < max <= 1: {list(self.cutmix_minmax)}")
        if self.mix_off_epoch is not None and self.mix == "none":
            raise ValueError("mix_off_epoch switches train.mix off after an epoch; set train.mix too")
        if self.aug_splits == 1:
            raise ValueError("aug_splits = 1 is the clean image alone; use 0 (off) or K >= 2 (clean + K-1 views)")
        if self.loss == "jsd" and self.aug_splits < 2:
            raise ValueError('loss "jsd" compares a clean image with its augmented views: set aug_splits = 3 '
                             '(and an augment, e.g. "augmix-m3-w3")')
        if self.aug_splits:
            for key, used in (("augment", self.augment in ("none", [])), ("mix", self.mix != "none"),
                              ("offline", bool(self.offline))):
                if used:
                    raise ValueError(f"aug_splits {'needs' if key == 'augment' else 'excludes'} train.{key}: "
                                     + ("the views are augmented by it" if key == "augment" else
                                        "the clean and augmented views of an image must stay together"))
        if isinstance(self.offline, int) and self.offline < 0:
            raise ValueError(f"offline must be 0, K >= 2, or a list of copies (got {self.offline})")
        if self.offline == 1 or self.offline == ["identity"] and not self.offline_random:
            raise ValueError("offline = 1 is the original set alone; use 0 (online augmentation) or K >= 2")
        if self.offline == []:
            raise ValueError('offline needs copies, e.g. ["identity", "hflip", "vflip", "hvflip"]')
        if self.offline_random and not isinstance(self.offline, list):
            raise ValueError("offline_random augments each fixed copy of an offline list; with offline = K the "
                             "K-1 copies are already augmented")
        random_copies = self.offline_random if isinstance(self.offline, list) else self.offline
        if random_copies and self.augment in ("none", []):
            raise ValueError("offline augmentation needs train.augment, e.g. augment = [\"hflip\", \"rotate:15\"]")
        return self


class CellConfig(Strict):
    """Everything that decides a cell's numbers; its hash is the cell id."""

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    seed: int = 0


class SuiteMeta(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)


class Resources(Strict):
    """What one cell asks of an executor (`[resources]`): never part of a cell's id, since where a cell runs
    does not change what it computes. Unset values take each executor's default (see README, "Running at
    scale"); the Slurm keys are ignored by the other executors."""
    gpus: float | None = Field(None, ge=0)  # per cell; default 1 where the machine or cluster has GPUs, else 0
    cpus: float | None = Field(None, gt=0)  # per cell; default an even share of the cores among the jobs
    memory_gb: float | None = Field(None, gt=0)  # per cell (Ray's memory, Slurm's --mem)
    partition: str | None = None  # Slurm --partition
    account: str | None = None  # Slurm --account
    time_min: int | None = Field(None, gt=0)  # Slurm --time, in minutes; a timed-out cell resumes when requeued
    array_parallelism: int | None = Field(None, gt=0)  # at most this many array jobs at once (Slurm's %N)
    sbatch: dict[str, str | int | float | bool] = Field(default_factory=dict)  # any other sbatch option


class Dimension(Strict):
    """One tuned key's range: `{low, high[, log, step]}` (floats, or ints when both ends are ints) or
    `{choices = [...]}`, as Optuna's suggest_float / suggest_int / suggest_categorical take them."""
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False  # sample log-uniformly (learning rates, weight decays)
    step: float | int | None = Field(None, gt=0)  # a grid step between low and high
    choices: list[Any] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _range_or_choices(self) -> Dimension:
        if self.choices is not None:
            if self.low is not None or self.high is not None or self.log or self.step is not None:
                raise ValueError("give either choices = [...] or low/high (with log, step), not both")
            return self
        if self.low is None or self.high is None:
            raise ValueError("give low and high (e.g. {low = 1e-4, high = 1e-1, log = true}) or choices = [...]")
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be < high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"log = true needs low > 0 (got {self.low})")
        if self.log and self.step is not None:
            raise ValueError("log and step are exclusive (Optuna refuses a stepped log range)")
        return self

    @property
    def integer(self) -> bool:
        return self.choices is None and all(isinstance(v, int) and not isinstance(v, bool)
                                            for v in (self.low, self.high))


class Tune(Strict):
    """`[tune]`: every cell of the suite is a contender that gets the same search over `space`, `trials`
    trials each, chosen on validation only (see README, "Tuning")."""
    space: dict[str, Dimension] = Field(min_length=1)  # dotted train.* / model.* keys -> their range
    trials: int = Field(ge=1)  # the budget: trials per contender, the same for every one
    sampler: Literal["tpe", "random", "grid"] = "tpe"  # Optuna's TPESampler, RandomSampler, GridSampler
    startup_trials: int | None = Field(None, ge=1)  # tpe: random trials before TPE models; unset: Optuna's 10
    pruner: Literal["none", "median", "halving"] = "none"  # stop hopeless trials after an epoch (Optuna's)
    warmup_epochs: int = Field(1, ge=0)  # median: epochs a trial runs before it may be pruned
    pruner_startup_trials: int = Field(5, ge=0)  # median: finished trials before any is pruned (Optuna's 5)
    metric: Literal["val_error", "val_loss"] = "val_error"  # what a trial is judged on, per epoch and at the end
    seed: int = 0  # the sampler's seed (with the contender's id): the same proposals on a rerun

    @field_validator("space")
    @classmethod
    def _tunable_keys(cls, v: dict[str, Dimension]) -> dict[str, Dimension]:
        for key in v:
            if key.split(".")[0] not in ("train", "model") or "." not in key:
                raise ValueError(f"'{key}' is not tunable: tune train.* or model.* keys, e.g. \"train.lr\"")
        return v

    @model_validator(mode="after")
    def _grid_needs_choices(self) -> Tune:
        if self.sampler == "grid":
            for key, dim in self.space.items():
                if dim.choices is None and dim.step is None:
                    raise ValueError(f"sampler 'grid' needs choices (or a step) for every key; '{key}' has neither")
        return self


SECTIONS = ("data", "model", "train")


class Suite(Strict):
    path: Path
    suite: SuiteMeta
    base: dict[str, Any]  # the [data], [model], [train] tables as written
    grid: dict[str, list[Any]]
    cells: list[dict[str, Any]]
    resources: Resources = Field(default_factory=Resources)
    tune: Tune | None = None
    # [[datasets]]: name = "..." and data.* keys (relative to [data]) each; every cell runs on every one
    datasets: list[dict[str, Any]] = Field(default_factory=list)


def load_suite(path: str | Path) -> Suite:
    """Read and validate a suite file; every cell it expands to is validated too (see bench.suite)."""
    path = Path(path)
    if not path.is_file():
        raise UserError("no such suite file", file=path, hint="give the path to a .toml suite, e.g. suites/quickstart.toml")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"not valid TOML ({e})", file=path) from None
    known = ("suite", *SECTIONS, "grid", "cells", "resources", "tune", "datasets")
    for key in raw:
        if key not in known:
            raise UserError("unknown table", file=path, key=key, hint=did_you_mean(key, known))
    for key in ("suite", *SECTIONS, "grid", "resources", "tune"):
        if key in raw and not isinstance(raw[key], dict):
            raise UserError("must be a table", file=path, key=key, hint=f"write it as [{key}]")
    if "suite" not in raw:
        raise UserError("missing [suite] table", file=path, hint='add [suite] with name = "..."')
    try:
        meta = SuiteMeta.model_validate(raw["suite"])
    except ValidationError as e:
        raise validation_error(e, path, prefix="suite") from None
    grid = check_grid(flatten(raw.get("grid", {})), path)  # `model.arch = [...]` unquoted nests: same as quoted
    cells = raw.get("cells", [])
    if not isinstance(cells, list) or not all(isinstance(c, dict) for c in cells):
        raise UserError("must be an array of tables", file=path, key="cells", hint="write each as [[cells]]")
    try:
        resources = Resources.model_validate(raw.get("resources", {}))
    except ValidationError as e:
        raise validation_error(e, path, prefix="resources", model=Resources) from None
    tune = None
    if "tune" in raw:
        try:
            tune = Tune.model_validate(raw["tune"])
        except ValidationError as e:
            raise validation_error(e, path, prefix="tune", model=Tune) from None
    datasets = check_datasets(raw.get("datasets", []), path)
    return Suite(path=path, suite=meta, base={k: raw.get(k, {}) for k in SECTIONS}, grid=grid, cells=cells,
                 resources=resources, tune=tune, datasets=datasets)


def check_datasets(datasets: Any, path: Path) -> list[dict[str, Any]]:
    """[[datasets]]: an array of tables, each with a unique name; their data keys are validated with the cells."""
    if not isinstance(datasets, list) or not all(isinstance(d, dict) for d in datasets):
        raise UserError("must be an array of tables", file=path, key="datasets", hint="write each as [[datasets]]")
    names = []
    for i, d in enumerate(datasets):
        name = d.get("name")
        if not isinstance(name, str) or not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", name):
            raise UserError("needs name = \"...\" (letters, digits, _ . -)", file=path, key=f"datasets[{i}].name")
        if name in names:
            raise UserError(f"dataset name '{name}' is used twice", file=path, key=f"datasets[{i}].name",
                            hint="give each [[datasets]] entry its own name")
        names.append(name)
    return datasets


def check_grid(grid: dict[str, Any], path: Path | None) -> dict[str, Any]:
    """`grid`, once every axis is a non-empty list: a bare value is a likely slip for a one-value axis."""
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            example = f"[{values!r}]" if not isinstance(values, list) else "[value1, value2]"
            raise UserError("must be a non-empty list of values" + ("" if isinstance(values, list) else
                                                                     f", not {values!r}"),
                            file=path, key=f'grid."{key}"', hint=f'write "{key}" = {example}')
    return grid


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'model': {'arch': x}} and {'model.arch': x} both become {'model.arch': x}. An empty table stays a value:
    `"model.kwargs" = {}` in a [[cells]] entry clears the base's keyword arguments."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict) and v:
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def validation_error(e: ValidationError, path: Path, prefix: str = "", model: type[BaseModel] | None = None
                     ) -> UserError:
    """Turn pydantic's first error into one line: file, dotted key, reason, and a 'did you mean'."""
    err = e.errors()[0]
    loc = [str(p) for p in err["loc"] if not isinstance(p, int)]
    key = ".".join(([prefix] if prefix else []) + loc)
    hint = None
    if err["type"] == "extra_forbidden":
        reason = "unknown key"
        fields = _fields_at(model or SuiteMeta, loc[:-1]) if model or prefix == "suite" else []
        hint = did_you_mean(loc[-1], fields) if fields else None
    else:
        reason = err["msg"].removeprefix("Value error, ")
        if err["type"] not in ("value_error",) and "input" in err and not isinstance(err["input"], dict):
            reason += f" (got {err['input']!r})"
    return UserError(reason, file=path, key=key, hint=hint)


def _fields_at(model: type[BaseModel], loc: list[str]) -> list[str]:
    for part in loc:
        field = model.model_fields.get(part)
        if field is None or not isinstance(field.annotation, type) or not issubclass(field.annotation, BaseModel):
            return []
        model = field.annotation
    return list(model.model_fields)
