"""`[train]`: how a cell trains; every technique is one key."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from bench.config.base import Strict

# the deterministic copies an offline list may hold (bench/techniques/offline.py builds them)
OfflineCopy = Literal["identity", "hflip", "vflip", "hvflip", "rot90", "rot180", "rot270"]


class TrainConfig(Strict):
    """How a cell trains; every technique is one key (see the docs' *Techniques and recipes* page)."""

    epochs: int = Field(10, ge=1, description="epochs at most; validation after each, and the best epoch (by "
                        "`monitor`, by default the lowest validation error) is kept")
    batch_size: int = Field(64, ge=1, description="training batch size")
    eval_batch_size: int = Field(256, ge=1, description="batch size for validation and test")
    # optimisation
    optimizer: str = Field("sgd", description="any optimizer timm's factory offers "
                           "(`timm.optim.list_optimizers()`, less its apex and bitsandbytes kernels and the "
                           "second-order `adahessian`), with timm's defaults except two: `sgd` is Nesterov only with "
                           "`nesterov = true` (and momentum), `rmsprop`'s decay is torch's 0.99 unless "
                           "`rmsprop_alpha` says otherwise (see *Techniques and recipes*)")
    lr: float = Field(0.01, gt=0, description="peak learning rate (the head's, when `backbone_lr` is set)")
    backbone_lr: float | None = Field(None, ge=0, description="learning rate of everything but the classifier "
                                      "head (study 000's low fine-tuning rate); unset: `lr` for all")
    layer_decay: float | None = Field(None, gt=0, le=1, description="layer-wise lr decay (BEiT's, through timm's "
                                      "param groups): the head at `lr`, each layer below it at `lr` × "
                                      "`layer_decay`^depth, layers as the timm model's `group_matcher` counts "
                                      "them; timm models only, exclusive with `backbone_lr`; unset: no decay")
    momentum: float = Field(0.9, ge=0, description="for optimizers that take one (`sgd`, `rmsprop`, `lars`, "
                            "`sgdp`, `madgrad`, ...); the others ignore it")
    nesterov: bool = Field(False, description="Nesterov momentum for `sgd` (timm's `nesterov`, `sgdp` and `sgdw` "
                           "are Nesterov by default)")
    betas: tuple[float, ...] | None = Field(None, description="the β pair of Adam-like optimizers, e.g. "
                                            "`[0.9, 0.95]` (`adan`: three), each in [0, 1); unset: each "
                                            "optimizer's default; optimizers without betas ignore it")
    eps: float | None = Field(None, gt=0, description="the optimizer's ε; unset: its default; optimizers without "
                              "one ignore it")
    rmsprop_alpha: float | None = Field(None, ge=0, lt=1, description="RMSprop's squared-gradient decay (torch's "
                                        "`alpha`, Keras' `rho`: study 000 used Keras' 0.9), for `rmsprop` and "
                                        "timm's `rmsproptf*`; unset: 0.99 for `rmsprop` (torch's default, "
                                        "bench's behaviour), 0.9 for `rmsproptf*` (timm's)")
    weight_decay: float = Field(0.0, ge=0, description="weight decay as the optimizer applies it: decoupled for "
                                "`adamw` and timm's `*w` variants, L2 for `sgd`, `adam`, `rmsprop`")
    wd_norm_bias: bool = Field(True, description="`true`: weight decay on every tensor (bench's behaviour); "
                               "`false`: none on biases, normalisation weights (every 1-d tensor) and the model's "
                               "own `no_weight_decay()` list (a ViT's `pos_embed`, `cls_token`), as timm's "
                               "`filter_bias_and_bn`")
    schedule: str = Field("constant", description="the learning-rate schedule, a multiplier of `lr` stepped every "
                          "optimizer step (every batch unless `accumulate`), not every epoch; the keys below set "
                          "it up, each naming the schedules it applies to (see *Techniques and recipes*)")
    step_size: int = Field(3, ge=1, description="`step`: epochs between decays")
    gamma: float = Field(0.1, gt=0, description="decay factor of `step`, `multistep` and `plateau` "
                        "(`plateau`: below 1)")
    milestones: list[int] = Field(default_factory=list, description="`multistep`: the epochs at which the lr is "
                                  "multiplied by `gamma`, e.g. `[5, 8]`; `multistep` needs them")
    min_lr: float = Field(0.0, ge=0, description="where `cosine`, `restarts` and `poly` end, `plateau`'s floor, "
                          "the bottom of `cyclical`")
    cycle_epochs: float = Field(4.0, gt=0, description="`cyclical`: epochs per full triangle, up and down; "
                                "`restarts`: epochs of the first cosine cycle")
    cycle_mode: Literal["triangular", "triangular2"] = Field(
        "triangular", description="`cyclical`: `triangular`, or `triangular2` (the height halved after every "
        "cycle)")
    restart_mult: float = Field(1.0, ge=1, description="`restarts`: each cycle this many times longer than the one "
                                "before (SGDR's T_mult, timm's `cycle_mul`)")
    restart_decay: float = Field(1.0, gt=0, le=1, description="`restarts`: each cycle's peak this many times the "
                                 "one before's (timm's `cycle_decay`)")
    poly_power: float = Field(1.0, gt=0, description="`poly`: the lr falls as (1 − t/T)^power from `lr` to "
                              "`min_lr`; 1 is linear")
    plateau_patience: int = Field(2, ge=1, description="`plateau`: epochs without an improvement of `monitor` (by "
                                  "more than `min_delta`) before the lr is multiplied by `gamma`")
    cooldown_epochs: float = Field(0.0, ge=0, description="`cosine`, `restarts`, `poly`: the schedule ends this "
                                   "many epochs early and the rest run at `min_lr` (timm's cooldown); less than "
                                   "`epochs`")
    pct_start: float = Field(0.3, gt=0, lt=1, description="`onecycle`: fraction of the run spent rising")
    warmup_epochs: float = Field(0.0, ge=0, description="linear warmup, multiplies any schedule (fractions of an "
                                 "epoch allowed)")
    # loss
    loss: str = Field("ce", description="the training loss; `bce` is timm's BinaryCrossEntropy, `jsd` timm's "
                      "JsdCrossEntropy (with `aug_splits`); the keys below set them up (see *Techniques and "
                      "recipes*)")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="label smoothing, for every loss")
    class_weights: Literal["inverse", "sqrt_inverse", "effective"] = Field(
        "inverse", description="`weighted_ce`'s class weights: `inverse` (1/n), `sqrt_inverse` (1/√n), "
        "`effective` ((1−β)/(1−βⁿ), β being `effective_beta`); scaled to sum to the class count")
    effective_beta: float = Field(0.999, ge=0, lt=1, description="β of `effective` class weights")
    focal_gamma: float = Field(2.0, ge=0, description="`focal`: γ (0 is cross-entropy)")
    focal_alpha: float | None = Field(None, gt=0, description="`focal`: a constant factor α, as Keras' categorical "
                                      "focal loss (study 002: 0.25); unset: none")
    complement_weight: float = Field(1.0, ge=0, description="`complement`: weight of the complement entropy term")
    bce_target_threshold: float | None = Field(None, ge=0, lt=1, description="`bce`: targets above it become 1, "
                                               "the rest 0, after mixing (timm's `--bce-target-thresh`; the RSB "
                                               "recipes: 0.2); unset: soft targets are kept")
    bce_pos_weight: float | None = Field(None, gt=0, description="`bce`: weight of the positive term (timm's "
                                         "`--bce-pos-weight`); unset: 1")
    bce_sum: bool = Field(False, description="`bce`: `true` sums over classes, then takes the mean over the batch "
                          "(timm's `--bce-sum`); `false`: the mean over both")
    jsd_alpha: float = Field(12.0, ge=0, description="`jsd`: weight of the Jensen–Shannon consistency term "
                             "(AugMix's 12)")
    head_l1: float = Field(0.0, ge=0, description="L1 penalty on the head's weights, added to the loss "
                           "(study 002)")
    head_l2: float = Field(0.0, ge=0, description="L2 penalty (sum of squares) on the head's weights, added to the "
                           "loss")
    # data seen in training
    augment: str | list[str | dict[str, Any]] = Field(
        "none", description='a preset, one op (`"rotate:15"`) or a list of ops and presets, applied to the '
        "training split only (see *Techniques and recipes*)")
    offline: int | list[OfflineCopy] = Field(
        0, description="offline augmentation (study 004): K ≥ 2 trains on a fixed set K times the size, the "
        "originals plus K−1 copies, each image augmented by `augment` from its own fixed seed; or a list of "
        "fixed copies (study 004: `identity`, `hflip`, `vflip`, `hvflip`), each then followed by "
        "`offline_random` augmented versions; 0: augment online")
    offline_random: int = Field(0, ge=0, description="with an `offline` list: each fixed copy is followed by this "
                                "many versions of itself augmented by `augment` (study 004: 1, so ×8)")
    augment_on: Literal["loader", "device"] = Field(
        "loader", description='where `augment` changes pixels: `loader`, image by image in the DataLoader\'s '
        'workers; `device`, the whole batch at once on the training device (a GPU), the loader only drawing each '
        "image's parameters and shipping its crop window (see *Where augmentation runs*); the same draws either "
        "way, and on a CPU the same pixels but for hue and blur (a grey level on a few), so a cell id of its own")
    aug_splits: int = Field(0, ge=0, description="K ≥ 2: every training image enters the batch K times, clean and "
                            "then K−1 views augmented by `augment` (timm's `--aug-splits`, for `loss = \"jsd\"`); "
                            "the batch holds K × `batch_size` images; it needs `augment` and excludes `mix` and "
                            "`offline`; 0: off")
    mix: str = Field("none", description="batch mixing (timm's Mixup): `mixup`, `cutmix`, or `cutmix_mixup` (one "
                     "of the two per batch, pair or image, see `mix_switch_prob`)")
    mix_alpha: float = Field(1.0, gt=0, description="MixUp's ratio ~ Beta(α, α) (timm's `--mixup`), and CutMix's "
                             "unless `cutmix_alpha` is set")
    cutmix_alpha: float | None = Field(None, gt=0, description="CutMix's Beta(α, α) (timm's `--cutmix`); unset: "
                                       "`mix_alpha`")
    cutmix_minmax: tuple[float, float] | None = Field(
        None, description="`[min, max]`: CutMix's box side drawn in this fraction of the image instead of from α "
        "(timm's `--cutmix-minmax`); unset: from α")
    mix_prob: float = Field(1.0, ge=0, le=1, description="fraction of batches (pairs, images) that are mixed "
                            "(timm's `--mixup-prob`)")
    mix_switch_prob: float = Field(0.5, ge=0, le=1, description="`cutmix_mixup`: probability of CutMix rather "
                                   "than MixUp (timm's `--mixup-switch-prob`)")
    mix_mode: Literal["batch", "pair", "elem"] = Field(
        "batch", description="`batch`: one ratio for the batch; `pair`: one per pair of images; `elem`: one per "
        "image (timm's `--mixup-mode`)")
    mix_off_epoch: int | None = Field(None, ge=1, description="mix epochs 1…N only, then train on clean images "
                                      "(timm's `--mixup-off-epoch`), with `mix` set; unset: mix every epoch")
    sampler: str = Field("uniform", description="how training batches draw images: `uniform` (each image once per "
                         "epoch, shuffled), `balanced` (every class equally likely, study 003), `sqrt` (a class's "
                         "chance ∝ √n)")
    # evaluation and stopping
    tta: list[str] = Field(default_factory=list, description="test-time augmentation views, e.g. "
                           '`["hflip", "rotate:10", "shift:3"]`; reported as `val_tta`/`test_tta` beside the plain '
                           "figures")
    patience: int | None = Field(None, ge=1, description="early stopping: stop after this many epochs without an "
                                 "improvement of `monitor` (study 004: 3); the best weights are kept; unset: run "
                                 "every epoch")
    monitor: Literal["val_error", "val_loss", "val_top5_error", "val_accuracy"] = Field(
        "val_error", description="the validation figure that picks the best epoch and drives early stopping and "
        "`plateau` (a tuning trial's is `tune.metric`)")
    mode: Literal["auto", "min", "max"] = Field("auto", description="whether `monitor` improves downwards or "
                                                "upwards; `auto`: max for `val_accuracy`, min otherwise")
    min_delta: float = Field(0.0, ge=0, description="smaller changes of `monitor` are not an improvement")
    # the step: gradient clipping and accumulation, weight EMA (timm's dispatch_clip_grad and ModelEmaV3)
    clip_grad: float | None = Field(None, gt=0, description="gradient clipping threshold (timm's "
                                    "`dispatch_clip_grad`, before every optimizer step, unscaled first under "
                                    "fp16): the total norm (`norm`), each value's magnitude (`value`), or AGC's "
                                    "clip factor, e.g. 0.01 (`agc`); unset: no clipping")
    clip_mode: Literal["norm", "value", "agc"] = Field(
        "norm", description="`norm`: the L2 norm of all gradients together; `value`: each element; `agc`: "
        "adaptive, unit-wise against the weights' norm (the classifier head is left alone, as timm's train.py "
        "does)")
    accumulate: int = Field(1, ge=1, description="gradient accumulation: K batches' gradients (each loss divided "
                            "by K) make one optimizer step, an effective batch of K × `batch_size`; schedules and "
                            "`warmup_epochs` count optimizer steps; an epoch's leftover batches make one last, "
                            "shorter step")
    ema: bool = Field(False, description="keep an exponential moving average of the weights (timm's `ModelEmaV3`, "
                      "parameters and buffers, updated after every optimizer step), validated every epoch beside "
                      "the raw weights (see *Techniques and recipes*)")
    ema_decay: float = Field(0.9998, gt=0, lt=1, description="EMA decay per optimizer step (timm's train.py "
                             "default); the average spans about 1/(1 − decay) steps, so short runs want a lower "
                             "decay or `ema_warmup`")
    ema_warmup: bool = Field(False, description="ramp the decay up as 1 − (1 + step)^(−2/3) until it reaches "
                             "`ema_decay` (timm's warmup)")
    ema_select: Literal["raw", "ema"] = Field(
        "ema", description="with `ema`: `ema` or `raw`, whose validation picks the best epoch (and drives early "
        "stopping) and whose weights are the cell's result (`val`/`test`, `best.safetensors`); the other's "
        "figures are reported beside them")
    # precision and layout
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="`fp32`; `bf16`: autocast (CPUs and GPUs with native bf16 only); `fp16`: autocast and "
        "a gradient scaler (CUDA only)")
    channels_last: bool = Field(False, description="channels-last memory layout for the model and batches")
    compile: bool = Field(False, description="`torch.compile` the model")
    sync_bn: bool = Field(False, description="with several ranks per cell (`[resources] processes`/`gpus`): "
                          "BatchNorm layers normalise over the global batch (SyncBatchNorm, timm's converter "
                          "on CUDA), not each rank's share of it; no effect in one process")
    deterministic: bool = Field(False, description="deterministic algorithms (torch's "
                                "`use_deterministic_algorithms`, cuDNN's deterministic mode, a fixed cuBLAS "
                                "workspace): the same bits on every run of a cell on the same GPU, slower; an op "
                                "without a deterministic implementation fails the cell, naming itself. Default: "
                                "the fast path, cuDNN benchmarking its algorithms per shape. Recorded in "
                                "`result.json` (`train.backends`)")
    tf32: bool | None = Field(None, description="TF32 on NVIDIA GPUs since Ampere: `true` for matrix products and "
                              "convolutions (timm's train.py), `false` for neither (full fp32); unset: torch's "
                              "own choice, TF32 convolutions and fp32 matrix products. Recorded in `result.json`")
    stored_logits: Literal["float32", "float16"] = Field(
        "float32", description="how `predictions.npz` keeps each split's logits: `float16` takes half the disk "
        "(100,000 × 10,000 logits: 2 GB, not 4 GB) to 3 significant digits, enough for every figure bench reads "
        "back (`bench compare`, `report --recompute`, plots, `export`; an argmax may differ where two logits "
        "agree to 3 digits). `result.json`'s figures come from the full-precision logits either way. Not part "
        "of the cell's id")
    max_steps: int | None = Field(None, ge=1, description="cap on training batches per epoch (what `--smoke` "
                                  "uses); unset: every batch")

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
        if self.augment_on == "device" and (self.offline or self.aug_splits):
            raise ValueError('augment_on = "device" augments the batches of online augmentation; offline copies '
                             'and aug_splits views are made in the loader: set augment_on = "loader"')
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
