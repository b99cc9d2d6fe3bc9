"""`[train]`: how a cell trains; every technique is one key."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from bench.config.base import Strict

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
