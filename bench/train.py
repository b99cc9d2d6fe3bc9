"""The one training loop: an epoch of steps, evaluation, and `fit` (validation picks the best epoch and
may stop training early; test is evaluated once, with the best weights)."""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from timm.utils import ModelEmaV3, dispatch_clip_grad
from torch import nn

from bench.cell import Diverged, Pruned
from bench.checkpoint import Checkpoint, rng_state, set_rng_state
from bench.config import TrainConfig
from bench.data.loaders import Preprocess
from bench.errors import UserError
from bench.metrics import classification_metrics, full_metrics, maximises, monitored
from bench.models.freeze import set_train_mode
from bench.models.heads import head_name
from bench.techniques import LOSSES, MIXES, OPTIMIZERS, SCHEDULES, build_tta
from bench.techniques.optimizers import layer_decay_groups, no_decay_split, optimizer_record
from bench.techniques.schedules import BatchSchedule


def train_one_epoch(model: nn.Module, batches, optimizer: torch.optim.Optimizer, scheduler, loss_fn: Callable,
                    prep: Callable, *, max_steps: int | None = None, on_step: Callable[[], None] | None = None,
                    mix: Callable | None = None, autocast: Callable | None = None, scaler=None,
                    penalty: Callable[[], torch.Tensor] | None = None, accumulate: int = 1,
                    clip: Callable[[], None] | None = None,
                    after_step: Callable[[], None] | None = None) -> dict[str, float]:
    """One pass over `batches`; returns mean loss, accuracy (against the unmixed labels), images and seconds.

    mix(x, y) -> (x, soft targets); autocast() -> a context for the forward pass; scaler: a GradScaler;
    penalty() -> a term added to the loss; accumulate: batches per optimizer step; clip() clips the
    gradients (unscaled) before each optimizer step; after_step() runs after each (the weight EMA).
    All optional: without them this is the plain loop, one optimizer and schedule step per batch.
    """
    set_train_mode(model)
    device = prep.device if isinstance(prep, Preprocess) else None
    loss_sum = torch.zeros((), device=device)
    first = None
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    # the epoch's batch count sizes its last accumulation group, which may be shorter than the others
    total = steps_per_epoch(batches, max_steps) if accumulate > 1 else None
    group = 1
    start = time.perf_counter()
    for step, (x, y) in enumerate(batches):
        if max_steps is not None and step >= max_steps:
            break
        x, y = prep(x), y.to(x.device if device is None else device, non_blocking=True)
        target = y
        if mix is not None:
            x, target = mix(x, y)
        if autocast is None:
            logits = model(x)
        else:
            with autocast():
                logits = model(x)
            logits = logits.float()  # the loss in fp32, as torch's AMP recipe
        loss = loss_fn(logits, target)
        if penalty is not None:
            loss = loss + penalty()
        if step % accumulate == 0:
            optimizer.zero_grad(set_to_none=True)
            if total is not None:
                group = min(accumulate, total - step)
        # each batch's share of the group's mean gradient (timm divides the remainder group by its own size)
        if scaler is None:
            (loss / group if group > 1 else loss).backward()
        else:
            scaler.scale(loss / group if group > 1 else loss).backward()
        if total is None or (step + 1) % accumulate == 0 or step + 1 == total:
            if clip is not None:
                if scaler is not None:
                    scaler.unscale_(optimizer)  # the threshold is for the true gradients (timm's NativeScaler)
                clip()
            if scaler is None:
                optimizer.step()
            else:
                scaler.step(optimizer)
                scaler.update()
            if scheduler is not None:
                scheduler.step()
            if after_step is not None:
                after_step()
        if first is None:  # the loss before any update of this epoch: the divergence rule's yardstick
            first = loss.detach()
        # accumulate on the device: no host sync per step
        loss_sum += loss.detach() * len(y)
        correct += (logits.detach().argmax(1) == y).sum()
        seen += len(y)
        if on_step is not None:
            on_step()
    seconds = time.perf_counter() - start
    return {"loss": float(loss_sum) / max(1, seen), "accuracy": float(correct) / max(1, seen),
            "images": seen, "seconds": seconds, "first_loss": float(first) if first is not None else float("nan")}


@torch.no_grad()
def predict(model: nn.Module, batches, prep: Callable, *, autocast: Callable | None = None,
            views: list[Callable] | None = None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Logits (float32, on the CPU) and labels for every batch, and the seconds it took.

    With test-time `views`, the softmax of every view is averaged and its log returned in place of the
    logits, so argmax, top-k and cross-entropy of the result are those of the averaged prediction.
    """
    model.eval()
    start = time.perf_counter()
    logits, labels = [], []
    for x, y in batches:
        x = prep(x)
        with autocast() if autocast is not None else contextlib.nullcontext():
            if views:
                probs = torch.stack([F.softmax(model(view(x)).float(), 1) for view in views]).mean(0)
                out = probs.clamp_min(1e-30).log()
            else:
                out = model(x)
        logits.append(out.float().cpu())
        labels.append(y)
    seconds = time.perf_counter() - start
    return torch.cat(logits), torch.cat(labels), seconds


DIVERGENCE_FACTOR = 100.0


def _generators(loader) -> dict[str, torch.Generator]:
    """The training loader's own random generators: its shuffle and worker seeds, and a sampler's draws."""
    found = {"loader": loader.generator}
    sampler = getattr(loader.sampler, "generator", None)
    if sampler is not None and sampler is not loader.generator:
        found["sampler"] = sampler
    return {k: g for k, g in found.items() if g is not None}


@dataclass
class FitResult:
    history: list[dict[str, Any]]
    best_epoch: int
    best_state: dict[str, torch.Tensor]  # the selected weights: the EMA's with train.ema and ema_select "ema"
    predictions: dict[str, tuple[torch.Tensor, torch.Tensor]]  # split -> (logits, labels), best weights
    # split -> full_metrics, best weights ("val_tta", "test_tta" with TTA; "val_raw"/"val_ema"... with EMA)
    metrics: dict[str, dict[str, float]]
    timing: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)  # how it trained: precision, param groups, stopping


# ----------------------------------------------------------------------------------------- set-up
def steps_per_epoch(loader, max_steps: int | None, accumulate: int = 1) -> int:
    """Training steps an epoch takes: the loader's batches, or train.max_steps where that is fewer. With
    `accumulate`, optimizer steps (what the schedule counts): one per `accumulate` batches, and one for the
    remainder."""
    batches = len(loader) if max_steps is None else min(max_steps, len(loader))
    return -(-batches // accumulate)


def precision_setup(precision: str, device: torch.device) -> tuple[Callable | None, Any]:
    """(autocast factory or None, GradScaler or None) for train.precision on `device`."""
    if precision == "fp32":
        return None, None
    if precision == "fp16":
        if device.type != "cuda":
            raise UserError(f"fp16 training needs a CUDA device, not {device.type}", key="train.precision",
                            hint="use bf16 or fp32")
        return partial(torch.autocast, "cuda", dtype=torch.float16), torch.amp.GradScaler("cuda")
    supported = {
        "cuda": lambda: torch.cuda.is_bf16_supported(),
        "cpu": lambda: torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported(),
    }.get(device.type, lambda: False)()
    if not supported:
        raise UserError(f"this {device.type} has no native bf16 (autocast would emulate it, many times slower "
                        "than fp32)", key="train.precision", hint="use fp32 here")
    return partial(torch.autocast, device.type, dtype=torch.bfloat16), None


def _head_params(model: nn.Module) -> list[nn.Parameter]:
    return list(model.get_submodule(head_name(model)).parameters())


def build_optimizer(model: nn.Module, cfg: TrainConfig, steps_per_epoch: int
                    ) -> tuple[torch.optim.Optimizer, BatchSchedule]:
    """Optimizer over the trainable parameters, by timm's factory, and a BatchSchedule (a LambdaLR stepped
    per optimizer step) that applies the schedule's multiplier, with warmup, to every group's lr.

    Groups: one ("all"); with backbone_lr the head at lr and the rest ("backbone") at backbone_lr; with
    layer_decay timm's per-layer groups ("depth_<d>", lr x layer_decay^d). wd_norm_bias = false moves
    biases, norm weights and the model's no_weight_decay() into "/no_decay" groups at weight_decay 0."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: every parameter is frozen")
    groups: list[dict[str, Any]] = [{"params": params, "lr": cfg.lr, "name": "all"}]
    if cfg.layer_decay is not None:
        groups = layer_decay_groups(model, cfg)
    elif cfg.backbone_lr is not None:
        head = {id(p) for p in _head_params(model)}
        groups = [{"params": [p for p in params if id(p) not in head], "lr": cfg.backbone_lr, "name": "backbone"},
                  {"params": [p for p in params if id(p) in head], "lr": cfg.lr, "name": "head"}]
        groups = [g for g in groups if g["params"]]
    if not cfg.wd_norm_bias and cfg.layer_decay is None:  # timm's layer groups already split by decay
        groups = no_decay_split(model, groups, cfg.weight_decay)
    optimizer = OPTIMIZERS[cfg.optimizer](groups, cfg)
    steps_per_epoch = max(1, steps_per_epoch)
    total = steps_per_epoch * cfg.epochs
    schedule = SCHEDULES[cfg.schedule](cfg, steps_per_epoch, total)
    return optimizer, BatchSchedule(optimizer, schedule, round(cfg.warmup_epochs * steps_per_epoch))


def head_penalty(model: nn.Module, l1: float, l2: float) -> Callable[[], torch.Tensor] | None:
    """l1 * sum|W| + l2 * sum W^2 over the head's weight tensors (not biases), as Keras' kernel_regularizer."""
    if not (l1 or l2):
        return None
    weights = [p for n, p in model.get_submodule(head_name(model)).named_parameters() if n.endswith("weight")]

    def penalty() -> torch.Tensor:
        total = sum(l1 * w.abs().sum() + l2 * w.pow(2).sum() for w in weights)
        return total

    return penalty


def grad_clipper(model: nn.Module, threshold: float | None, mode: str) -> tuple[Callable[[], None] | None, int]:
    """(clip() for train_one_epoch or None, parameter tensors it clips) through timm's dispatch_clip_grad.

    AGC skips the classifier head, as timm's train.py and the NFNet paper do (the final layer's
    unit-wise ratios are not what AGC is for), unless the head is all that trains."""
    if threshold is None:
        return None, 0
    params = [p for p in model.parameters() if p.requires_grad]
    if mode == "agc":
        head = {id(p) for p in _head_params(model)}
        params = [p for p in params if id(p) not in head] or params
    return partial(dispatch_clip_grad, params, threshold, mode=mode), len(params)


class EmaUpdate:
    """after_step for train_one_epoch: one timm ModelEmaV3 update per optimizer step, counted across epochs
    as timm's train.py counts them (update 1 copies the weights; warmup, if on, ramps from there)."""

    def __init__(self, model: nn.Module, cfg: TrainConfig):
        self.model, self.updates = model, 0
        self.ema = ModelEmaV3(model, decay=cfg.ema_decay, use_warmup=cfg.ema_warmup)

    def __call__(self) -> None:
        self.updates += 1
        self.ema.update(self.model, step=self.updates)

    @property
    def module(self) -> nn.Module:
        """The averaged network (eval mode), keyed like the model's state_dict."""
        return self.ema.module


class EarlyStopping:
    """Tracks the monitored validation figure: which epoch is best, and when to stop (after `patience`
    epochs without an improvement larger than min_delta). Ties on the monitor go to the lower val_loss,
    then to the earlier epoch."""

    def __init__(self, monitor: str, mode: str, patience: int | None, min_delta: float):
        self.monitor, self.patience, self.min_delta = monitor, patience, min_delta
        self.sign = -1.0 if maximises(monitor, mode) else 1.0
        self.best: tuple[float, float] | None = None
        self.since_best = 0

    def update(self, row: dict[str, Any]) -> bool:
        """True when this epoch is the new best."""
        value = self.sign * monitored(row, self.monitor)
        if self.best is None or value < self.best[0] - self.min_delta or (
                self.min_delta == 0 and value == self.best[0] and row["val_loss"] < self.best[1]):
            self.best, self.since_best = (value, row["val_loss"]), 0
            return True
        self.since_best += 1
        return False

    @property
    def stop(self) -> bool:
        return self.patience is not None and self.since_best >= self.patience


def _as_selected(row: dict[str, Any], variant: str) -> dict[str, Any]:
    """The epoch's row as the stopper reads it: val_* of the selected weights (history keeps val_* raw)."""
    if variant == "raw":
        return row
    return {**row, **{k: row[f"{k}_{variant}"] for k in ("val_loss", "val_error", "val_top5_error")}}


def compile_warm_up(net: nn.Module, model: nn.Module, loaders: dict, prep: Preprocess, autocast: Callable | None,
                    batch_size: int) -> float:
    """torch.compile compiles on first use; left there, the compilation would count as training time (and
    evaluation time) and make a compiled cell look slower than it trains. So the graphs are built here, on a
    validation batch at the training batch size and one image less (which makes the shape dynamic, as the
    last, shorter batch would), forward and backward in training mode and forward in eval mode, and timed
    apart (cost.compile_time_s). Every state it touches is put back: the weights and running statistics,
    the gradients, and the random generators (dropout draws), so the run trains as it would without it."""
    x, _ = next(iter(loaders["val"]))
    device = prep.device
    state = copy.deepcopy(model.state_dict())
    start = time.perf_counter()
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        for n in sorted({min(batch_size, len(x)), max(1, min(batch_size, len(x)) - 1)}, reverse=True):
            batch = prep(x[:n])
            set_train_mode(model)
            with autocast() if autocast is not None else contextlib.nullcontext():
                out = net(batch)
            out.float().sum().backward()
            model.eval()
            with torch.no_grad(), autocast() if autocast is not None else contextlib.nullcontext():
                net(batch)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    model.load_state_dict(state)
    return seconds


# ----------------------------------------------------------------------------------------- fit
def fit(model: nn.Module, loaders: dict, cfg: TrainConfig, device: torch.device, class_counts: list[int],
        on_epoch: Callable[[dict[str, Any]], None] | None = None,
        on_step: Callable[[], None] | None = None, checkpoint: Checkpoint | None = None,
        test: bool = True) -> FitResult:
    """Train `model` in place. `class_counts`, the training images per class, come from the data: their
    length is the class count (for mixing), their values feed class-weighted losses. With `checkpoint`,
    training goes on after the epoch it holds, and every epoch is saved to it.

    Raises Diverged when an epoch's mean training loss is not finite or exceeds DIVERGENCE_FACTOR times
    the larger of the first batch's loss and ln(classes) (the loss of a uniform guess); on_epoch may raise
    Pruned. `test = False` never looks at the test split (a tuning trial: only the chosen one is tested)."""
    autocast, scaler = precision_setup(cfg.precision, device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    net = torch.compile(model) if cfg.compile else model  # weights are shared: state_dicts come from `model`
    prep = Preprocess(device, cfg.channels_last)
    compile_seconds = compile_warm_up(net, model, loaders, prep, autocast, cfg.batch_size) if cfg.compile else None
    steps = steps_per_epoch(loaders["train"], cfg.max_steps, cfg.accumulate)  # optimizer steps
    optimizer, scheduler = build_optimizer(model, cfg, steps)
    loss_fn = LOSSES[cfg.loss](cfg, class_counts)
    mix = MIXES[cfg.mix](cfg, len(class_counts))
    penalty = head_penalty(model, cfg.head_l1, cfg.head_l2)
    views = build_tta(cfg.tta)
    stopper = EarlyStopping(cfg.monitor, cfg.mode, cfg.patience, cfg.min_delta)
    clip, clipped = grad_clipper(model, cfg.clip_grad, cfg.clip_mode)
    ema = EmaUpdate(model, cfg) if cfg.ema else None  # of `model`, not `net`: the same state_dict keys
    selected = cfg.ema_select if ema else "raw"  # whose validation decides, and whose weights are the result

    history: list[dict[str, Any]] = []
    best_epoch, best_state = 0, copy.deepcopy(model.state_dict())
    best_ema = copy.deepcopy(ema.module.state_dict()) if ema else None
    eval_seconds, eval_images = 0.0, 0
    start_loss, resumed_at = None, None
    generators = _generators(loaders["train"])
    saved = checkpoint.load() if checkpoint is not None else None
    if saved is not None:  # go on after the last complete epoch, every state as it was then
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        if scaler is not None:
            scaler.load_state_dict(saved["scaler"])
        if ema is not None:
            ema.module.load_state_dict(saved["ema"])
            ema.updates = saved["ema_updates"]
            best_ema = saved["best_ema"]
        stopper.best, stopper.since_best = saved["stopper"]
        best_epoch, best_state, history = saved["best_epoch"], saved["best_state"], saved["history"]
        eval_seconds, eval_images, start_loss = saved["eval_seconds"], saved["eval_images"], saved["start_loss"]
        resumed_at = saved["epoch"]
        set_rng_state(saved["rng"], generators)
    for epoch in range(len(history) + 1, cfg.epochs + 1):
        if stopper.stop:  # a checkpoint taken at the epoch early stopping ended on
            break
        lr = optimizer.param_groups[-1]["lr"]  # the head's when backbone and head differ
        if mix is not None:
            mix.set_epoch(epoch)
        tr = train_one_epoch(net, loaders["train"], optimizer, scheduler, loss_fn, prep, max_steps=cfg.max_steps,
                             on_step=on_step, mix=mix, autocast=autocast, scaler=scaler, penalty=penalty,
                             accumulate=cfg.accumulate, clip=clip, after_step=ema)
        if start_loss is None:
            start_loss = tr["first_loss"]
        limit = DIVERGENCE_FACTOR * max(start_loss, math.log(len(class_counts)))
        if not math.isfinite(tr["loss"]) or tr["loss"] > limit:
            history.append({"epoch": epoch, "lr": lr, "train_loss": tr["loss"], "train_error": 1 - tr["accuracy"],
                            "train_seconds": tr["seconds"], "train_images": tr["images"]})
            raise Diverged(epoch, tr["loss"], limit, history)
        logits, labels, sec = predict(net, loaders["val"], prep, autocast=autocast)
        eval_seconds, eval_images = eval_seconds + sec, eval_images + len(labels)
        val = classification_metrics(logits, labels)
        row = {"epoch": epoch, "lr": lr, "train_loss": tr["loss"], "train_error": 1 - tr["accuracy"],
               "val_loss": val["loss"], "val_error": val["top1_error"], "val_top5_error": val["top5_error"],
               "train_seconds": tr["seconds"], "train_images": tr["images"], "val_seconds": sec}
        if ema is not None:  # the averaged weights are validated every epoch too, in columns of their own
            logits, labels, sec = predict(ema.module, loaders["val"], prep, autocast=autocast)
            eval_seconds, eval_images = eval_seconds + sec, eval_images + len(labels)
            val = classification_metrics(logits, labels)
            row.update(val_loss_ema=val["loss"], val_error_ema=val["top1_error"],
                       val_top5_error_ema=val["top5_error"])
        if stopper.update(_as_selected(row, selected)):  # validation only decides
            best_epoch, best_state = epoch, copy.deepcopy(model.state_dict())
            if ema is not None:
                best_ema = copy.deepcopy(ema.module.state_dict())
        row["epochs_since_best"] = stopper.since_best
        scheduler.epoch_end(_as_selected(row, selected))  # a plateau schedule hears what early stopping reads
        history.append(row)
        if on_epoch is not None:
            try:
                on_epoch(row)
            except Pruned as e:
                e.history = history
                raise
        if checkpoint is not None and checkpoint.due():
            checkpoint.save(epoch, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                "ema": ema.module.state_dict() if ema else None, "ema_updates": ema.updates if ema else 0,
                "best_ema": best_ema, "stopper": (stopper.best, stopper.since_best), "best_epoch": best_epoch,
                "best_state": best_state, "history": history, "eval_seconds": eval_seconds,
                "eval_images": eval_images, "start_loss": start_loss, "rng": rng_state(generators)})
    # the best epoch's weights: the selected ones are "val"/"test"; with EMA, the other variant's follow as
    # "val_raw"/"test_raw" or "val_ema"/"test_ema" (and "_tta" after each name with TTA), reported apart
    states = {"raw": best_state, "ema": best_ema}
    best_state = states[selected]
    variants = [("", best_state)]
    if ema is not None:
        other = "raw" if selected == "ema" else "ema"
        variants.append((f"_{other}", states[other]))
    predictions, metrics = {}, {}
    tta_seconds = 0.0
    for suffix, state in variants:
        model.load_state_dict(state)
        for split in ("val", "test") if test else ("val",):
            if len(loaders[split].dataset) == 0:
                continue
            name = split + suffix
            logits, labels, sec = predict(net, loaders[split], prep, autocast=autocast)
            if split == "test" and not suffix:  # the one look at test (TTA and the other weights: reported apart)
                eval_seconds, eval_images = eval_seconds + sec, eval_images + len(labels)
            predictions[name] = (logits, labels)
            metrics[name] = full_metrics(logits, labels)
            if views:
                logits, labels, sec = predict(net, loaders[split], prep, autocast=autocast, views=views)
                predictions[f"{name}_tta"] = (logits, labels)
                metrics[f"{name}_tta"] = full_metrics(logits, labels)
                if not suffix:  # what TTA costs, once
                    tta_seconds += sec
    if len(variants) > 1:
        model.load_state_dict(best_state)
    train_seconds = sum(r["train_seconds"] for r in history)
    train_images = sum(r["train_images"] for r in history)
    timing = {
        "train_time_s": train_seconds,
        **({"compile_time_s": compile_seconds} if compile_seconds is not None else {}),
        "time_per_epoch_s": train_seconds / len(history),
        "train_images_per_s": train_images / train_seconds if train_seconds else 0.0,
        "eval_images_per_s": eval_images / eval_seconds if eval_seconds else 0.0,
    }
    if views:
        timing["tta_time_s"] = tta_seconds
    if checkpoint is not None:  # what surviving a kill cost this run of the cell (outside train_time_s)
        timing.update(checkpoint_time_s=checkpoint.seconds, checkpoints=checkpoint.saves)
    info = {
        "resumed_at_epoch": resumed_at,
        "precision": cfg.precision, "autocast": str(autocast.keywords["dtype"]) if autocast else None,
        "grad_scaler": scaler is not None, "channels_last": cfg.channels_last, "compiled": cfg.compile,
        **optimizer_record(optimizer, cfg.optimizer),  # its class and settings, each group's lr and decay
        "train_images_per_epoch": len(loaders["train"].dataset),
        "tta_views": len(views),
        "early_stopping": {"monitor": cfg.monitor, "patience": cfg.patience,
                           "stopped_at_epoch": len(history) if len(history) < cfg.epochs else None},
        "accumulate": cfg.accumulate, "effective_batch_size": cfg.batch_size * cfg.accumulate,
        "optimizer_steps_per_epoch": steps,
        "clip_grad": {"threshold": cfg.clip_grad, "mode": cfg.clip_mode, "tensors": clipped} if clip else None,
        "aug_splits": max(1, cfg.aug_splits),
        "mix": mix.record() if mix is not None else None,
        "ema": {"decay": cfg.ema_decay, "warmup": cfg.ema_warmup, "select": cfg.ema_select,
                "updates": ema.updates} if ema else None,
    }
    return FitResult(history, best_epoch, best_state, predictions, metrics, timing, info)
