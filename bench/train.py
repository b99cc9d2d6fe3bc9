"""The one training loop: an epoch of steps, evaluation, and `fit` (validation picks the best epoch;
test is evaluated once, with the best weights)."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.config import TrainConfig
from bench.metrics import classification_metrics
from bench.models import set_train_mode
from bench.techniques import OPTIMIZERS, SCHEDULES

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class Preprocess:
    """uint8 NCHW batch -> normalised float on the device; done there so the loader ships 4x fewer bytes."""

    def __init__(self, device: torch.device):
        self.device = device
        self.mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1) * 255

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x.to(self.device, non_blocking=True).float() - self.mean) / self.std


def train_one_epoch(model: nn.Module, batches, optimizer: torch.optim.Optimizer, scheduler, loss_fn: Callable,
                    prep: Callable, *, max_steps: int | None = None, on_step: Callable[[], None] | None = None
                    ) -> dict[str, float]:
    """One pass over `batches`; returns mean loss, accuracy, images seen and seconds."""
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
        logits = model(x)
        loss = loss_fn(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
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
def predict(model: nn.Module, batches, prep: Callable) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Logits (float32, on the CPU) and labels for every batch, and the seconds it took."""
    model.eval()
    start = time.perf_counter()
    logits, labels = [], []
    for x, y in batches:
        logits.append(model(prep(x)).float().cpu())
        labels.append(y)
    seconds = time.perf_counter() - start
    return torch.cat(logits), torch.cat(labels), seconds


@dataclass
class FitResult:
    history: list[dict[str, Any]]
    best_epoch: int
    best_state: dict[str, torch.Tensor]
    predictions: dict[str, tuple[torch.Tensor, torch.Tensor]]  # split -> (logits, labels), best weights
    metrics: dict[str, dict[str, float]]  # split -> metrics, best weights
    timing: dict[str, float] = field(default_factory=dict)


def build_optimizer(model: nn.Module, cfg: TrainConfig, steps_per_epoch: int):
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: every parameter is frozen")
    optimizer = OPTIMIZERS[cfg.optimizer](params, cfg)
    total = max(1, steps_per_epoch * cfg.epochs)
    multiplier = SCHEDULES[cfg.schedule](cfg, max(1, steps_per_epoch), total)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)


def fit(model: nn.Module, loaders: dict, cfg: TrainConfig, device: torch.device,
        on_epoch: Callable[[dict[str, Any]], None] | None = None,
        on_step: Callable[[], None] | None = None) -> FitResult:
    prep = Preprocess(device)
    steps = len(loaders["train"]) if cfg.max_steps is None else min(cfg.max_steps, len(loaders["train"]))
    optimizer, scheduler = build_optimizer(model, cfg, steps)

    def loss_fn(logits, y):
        return F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)

    history: list[dict[str, Any]] = []
    best: tuple[float, float] | None = None
    best_epoch, best_state = 0, copy.deepcopy(model.state_dict())
    eval_seconds, eval_images = 0.0, 0
    for epoch in range(1, cfg.epochs + 1):
        lr = optimizer.param_groups[0]["lr"]
        tr = train_one_epoch(model, loaders["train"], optimizer, scheduler, loss_fn, prep,
                             max_steps=cfg.max_steps, on_step=on_step)
        logits, labels, sec = predict(model, loaders["val"], prep)
        eval_seconds, eval_images = eval_seconds + sec, eval_images + len(labels)
        val = classification_metrics(logits, labels)
        row = {"epoch": epoch, "lr": lr, "train_loss": tr["loss"], "train_error": 1 - tr["accuracy"],
               "val_loss": val["loss"], "val_error": val["top1_error"], "val_top5_error": val["top5_error"],
               "train_seconds": tr["seconds"], "train_images": tr["images"], "val_seconds": sec}
        history.append(row)
        if not torch.isfinite(torch.tensor(tr["loss"])):
            raise FloatingPointError(f"training diverged at epoch {epoch} (loss {tr['loss']}); lower train.lr")
        score = (val["top1_error"], val["loss"])
        if best is None or score < best:  # validation only decides; ties keep the earlier epoch
            best, best_epoch, best_state = score, epoch, copy.deepcopy(model.state_dict())
        if on_epoch is not None:
            on_epoch(row)
    model.load_state_dict(best_state)
    predictions, metrics = {}, {}
    for split in ("val", "test"):
        if len(loaders[split].dataset) == 0:
            continue
        logits, labels, sec = predict(model, loaders[split], prep)
        if split == "test":  # the one and only look at test
            eval_seconds, eval_images = eval_seconds + sec, eval_images + len(labels)
        predictions[split] = (logits, labels)
        metrics[split] = classification_metrics(logits, labels)
    train_seconds = sum(r["train_seconds"] for r in history)
    train_images = sum(r["train_images"] for r in history)
    timing = {
        "train_time_s": train_seconds,
        "time_per_epoch_s": train_seconds / len(history),
        "train_images_per_s": train_images / train_seconds if train_seconds else 0.0,
        "eval_images_per_s": eval_images / eval_seconds if eval_seconds else 0.0,
    }
    return FitResult(history, best_epoch, best_state, predictions, metrics, timing)
