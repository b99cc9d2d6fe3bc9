"""The one training loop: an epoch of steps, evaluation, and `fit` (validation picks the best epoch and
may stop training early; test is evaluated once, with the best weights)."""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.config import TrainConfig
from bench.data.loaders import Preprocess
from bench.errors import UserError
from bench.metrics import classification_metrics, full_metrics
from bench.models.freeze import set_train_mode
from bench.models.heads import head_name
from bench.techniques import LOSSES, MIXES, OPTIMIZERS, SCHEDULES, build_tta
from bench.techniques.schedules import with_warmup


def train_one_epoch(model: nn.Module, batches, optimizer: torch.optim.Optimizer, scheduler, loss_fn: Callable,
                    prep: Callable, *, max_steps: int | None = None, on_step: Callable[[], None] | None = None,
                    mix: Callable | None = None, autocast: Callable | None = None, scaler=None,
                    penalty: Callable[[], torch.Tensor] | None = None) -> dict[str, float]:
    """One pass over `batches`; returns mean loss, accuracy (against the unmixed labels), images and seconds.

    mix(x, y) -> (x, soft targets); autocast() -> a context for the forward pass; scaler: a GradScaler;
    penalty() -> a term added to the loss. All optional: without them this is the plain loop.
    """
    set_train_mode(model)
    device = prep.device if isinstance(prep, Preprocess) else None
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
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
        optimizer.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        if scheduler is not None:
            scheduler.step()
        # accumulate on the device: no host sync per step
        loss_sum += loss.detach() * len(y)
        correct += (logits.detach().argmax(1) == y).sum()
        seen += len(y)
        if on_step is not None:
            on_step()
    seconds = time.perf_counter() - start
    return {"loss": float(loss_sum) / max(1, seen), "accuracy": float(correct) / max(1, seen),
            "images": seen, "seconds": seconds}


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


@dataclass
class FitResult:
    history: list[dict[str, Any]]
    best_epoch: int
    best_state: dict[str, torch.Tensor]
    predictions: dict[str, tuple[torch.Tensor, torch.Tensor]]  # split -> (logits, labels), best weights
    metrics: dict[str, dict[str, float]]  # split -> full_metrics, best weights ("val_tta", "test_tta" with TTA)
    timing: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)  # how it trained: precision, param groups, stopping


# ----------------------------------------------------------------------------------------- set-up
def steps_per_epoch(loader, max_steps: int | None) -> int:
    """Training steps an epoch takes: the loader's batches, or train.max_steps where that is fewer."""
    return len(loader) if max_steps is None else min(max_steps, len(loader))


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


def build_optimizer(model: nn.Module, cfg: TrainConfig, steps_per_epoch: int):
    """Optimizer over the trainable parameters (the head in its own group when backbone_lr is set) and a
    LambdaLR that applies the schedule's multiplier, with warmup, to every group."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: every parameter is frozen")
    groups: list[dict[str, Any]] = [{"params": params, "lr": cfg.lr, "name": "all"}]
    if cfg.backbone_lr is not None:
        head = {id(p) for p in _head_params(model)}
        groups = [{"params": [p for p in params if id(p) not in head], "lr": cfg.backbone_lr, "name": "backbone"},
                  {"params": [p for p in params if id(p) in head], "lr": cfg.lr, "name": "head"}]
        groups = [g for g in groups if g["params"]]
    optimizer = OPTIMIZERS[cfg.optimizer](groups, cfg)
    steps_per_epoch = max(1, steps_per_epoch)
    total = steps_per_epoch * cfg.epochs
    multiplier = SCHEDULES[cfg.schedule](cfg, steps_per_epoch, total)
    multiplier = with_warmup(multiplier, round(cfg.warmup_epochs * steps_per_epoch))
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)


def head_penalty(model: nn.Module, l1: float, l2: float) -> Callable[[], torch.Tensor] | None:
    """l1 * sum|W| + l2 * sum W^2 over the head's weight tensors (not biases), as Keras' kernel_regularizer."""
    if not (l1 or l2):
        return None
    weights = [p for n, p in model.get_submodule(head_name(model)).named_parameters() if n.endswith("weight")]

    def penalty() -> torch.Tensor:
        total = sum(l1 * w.abs().sum() + l2 * w.pow(2).sum() for w in weights)
        return total

    return penalty


class EarlyStopping:
    """Tracks the monitored validation figure: which epoch is best, and when to stop (after `patience`
    epochs without an improvement larger than min_delta). Ties on the monitor go to the lower val_loss,
    then to the earlier epoch."""

    def __init__(self, monitor: str, mode: str, patience: int | None, min_delta: float):
        self.monitor, self.patience, self.min_delta = monitor, patience, min_delta
        self.sign = -1.0 if (mode == "max" or (mode == "auto" and monitor == "val_accuracy")) else 1.0
        self.best: tuple[float, float] | None = None
        self.since_best = 0

    def update(self, row: dict[str, Any]) -> bool:
        """True when this epoch is the new best."""
        value = self.sign * (1 - row["val_error"] if self.monitor == "val_accuracy" else row[self.monitor])
        if self.best is None or value < self.best[0] - self.min_delta or (
                self.min_delta == 0 and value == self.best[0] and row["val_loss"] < self.best[1]):
            self.best, self.since_best = (value, row["val_loss"]), 0
            return True
        self.since_best += 1
        return False

    @property
    def stop(self) -> bool:
        return self.patience is not None and self.since_best >= self.patience


# ----------------------------------------------------------------------------------------- fit
def fit(model: nn.Module, loaders: dict, cfg: TrainConfig, device: torch.device, class_counts: list[int],
        on_epoch: Callable[[dict[str, Any]], None] | None = None,
        on_step: Callable[[], None] | None = None) -> FitResult:
    """Train `model` in place. `class_counts`, the training images per class, come from the data: their
    length is the class count (for mixing), their values feed class-weighted losses."""
    autocast, scaler = precision_setup(cfg.precision, device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    net = torch.compile(model) if cfg.compile else model  # weights are shared: state_dicts come from `model`
    prep = Preprocess(device, cfg.channels_last)
    optimizer, scheduler = build_optimizer(model, cfg, steps_per_epoch(loaders["train"], cfg.max_steps))
    loss_fn = LOSSES[cfg.loss](cfg, class_counts)
    mix = MIXES[cfg.mix](cfg, len(class_counts))
    penalty = head_penalty(model, cfg.head_l1, cfg.head_l2)
    views = build_tta(cfg.tta)
    stopper = EarlyStopping(cfg.monitor, cfg.mode, cfg.patience, cfg.min_delta)

    history: list[dict[str, Any]] = []
    best_epoch, best_state = 0, copy.deepcopy(model.state_dict())
    eval_seconds, eval_images = 0.0, 0
    for epoch in range(1, cfg.epochs + 1):
        lr = optimizer.param_groups[-1]["lr"]  # the head's when backbone and head differ
        tr = train_one_epoch(net, loaders["train"], optimizer, scheduler, loss_fn, prep, max_steps=cfg.max_steps,
                             on_step=on_step, mix=mix, autocast=autocast, scaler=scaler, penalty=penalty)
        if not torch.isfinite(torch.tensor(tr["loss"])):
            raise FloatingPointError(f"training diverged at epoch {epoch} (loss {tr['loss']}); lower train.lr")
        logits, labels, sec = predict(net, loaders["val"], prep, autocast=autocast)
        eval_seconds, eval_images = eval_seconds + sec, eval_images + len(labels)
        val = classification_metrics(logits, labels)
        row = {"epoch": epoch, "lr": lr, "train_loss": tr["loss"], "train_error": 1 - tr["accuracy"],
               "val_loss": val["loss"], "val_error": val["top1_error"], "val_top5_error": val["top5_error"],
               "train_seconds": tr["seconds"], "train_images": tr["images"], "val_seconds": sec}
        if stopper.update(row):  # validation only decides
            best_epoch, best_state = epoch, copy.deepcopy(model.state_dict())
        row["epochs_since_best"] = stopper.since_best
        history.append(row)
        if on_epoch is not None:
            on_epoch(row)
        if stopper.stop:
            break
    model.load_state_dict(best_state)
    predictions, metrics = {}, {}
    tta_seconds = 0.0
    for split in ("val", "test"):
        if len(loaders[split].dataset) == 0:
            continue
        logits, labels, sec = predict(net, loaders[split], prep, autocast=autocast)
        if split == "test":  # the one and only look at test (with TTA: two looks, reported apart)
            eval_seconds, eval_images = eval_seconds + sec, eval_images + len(labels)
        predictions[split] = (logits, labels)
        metrics[split] = full_metrics(logits, labels)
        if views:
            logits, labels, sec = predict(net, loaders[split], prep, autocast=autocast, views=views)
            predictions[f"{split}_tta"] = (logits, labels)
            metrics[f"{split}_tta"] = full_metrics(logits, labels)
            tta_seconds += sec
    train_seconds = sum(r["train_seconds"] for r in history)
    train_images = sum(r["train_images"] for r in history)
    timing = {
        "train_time_s": train_seconds,
        "time_per_epoch_s": train_seconds / len(history),
        "train_images_per_s": train_images / train_seconds if train_seconds else 0.0,
        "eval_images_per_s": eval_images / eval_seconds if eval_seconds else 0.0,
    }
    if views:
        timing["tta_time_s"] = tta_seconds
    info = {
        "precision": cfg.precision, "autocast": str(autocast.keywords["dtype"]) if autocast else None,
        "grad_scaler": scaler is not None, "channels_last": cfg.channels_last, "compiled": cfg.compile,
        "param_groups": [{"name": g["name"], "lr": g["initial_lr"], "params": sum(p.numel() for p in g["params"])}
                         for g in optimizer.param_groups],
        "train_images_per_epoch": len(loaders["train"].dataset),
        "tta_views": len(views),
        "early_stopping": {"monitor": cfg.monitor, "patience": cfg.patience,
                           "stopped_at_epoch": len(history) if len(history) < cfg.epochs else None},
    }
    return FitResult(history, best_epoch, best_state, predictions, metrics, timing, info)
