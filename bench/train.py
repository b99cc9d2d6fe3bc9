"""The one training loop: an epoch of steps, and `fit` (validation picks the best epoch and may stop
training early; test is evaluated once, with the best weights, by bench.evaluate).

What fit builds, carries and records is bench.loop's (`Loop`, `Progress`); the techniques it applies are
bench.techniques' (precision, compile, optimizers with the schedule, ema, stopping, regularise: clipping and
the head penalty, and the registries of losses, mixes and TTA views)."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from bench import distributed
from bench.cell import Diverged, Pruned
from bench.checkpoint import Checkpoint, rng_state
from bench.config import TrainConfig
from bench.data.loaders import Preprocess, set_epoch
from bench.device import synchronize
from bench.evaluate import evaluate, score
from bench.loop import Loop, Progress, info_record, timing_record
from bench.models.freeze import set_train_mode
from bench.techniques.precision import precision_setup
from bench.techniques.stopping import as_selected


def train_one_epoch(model: nn.Module, batches, optimizer: torch.optim.Optimizer, scheduler, loss_fn: Callable,
                    prep: Callable, *, max_steps: int | None = None, on_step: Callable[[], None] | None = None,
                    mix: Callable | None = None, autocast: Callable | None = None, scaler=None,
                    penalty: Callable[[], torch.Tensor] | None = None, accumulate: int = 1,
                    clip: Callable[[], None] | None = None,
                    after_step: Callable[[], None] | None = None,
                    weight: Callable[[int], float] | None = None) -> dict[str, float]:
    """One pass over `batches`; returns mean loss, accuracy (against the unmixed labels), images and seconds.

    mix(x, y) -> (x, soft targets); autocast() -> a context for the forward pass; scaler: a GradScaler;
    penalty() -> a term added to the loss; accumulate: batches per optimizer step; clip() clips the
    gradients (unscaled) before each optimizer step; after_step() runs after each (the weight EMA).
    weight(step) -> this rank's loss weight when the batch is one rank's share of a global batch
    (bench.distributed.RankBatches): the figures returned are then the global batch's, summed over the ranks.
    All optional: without them this is the plain loop, one optimizer and schedule step per batch.
    """
    set_train_mode(model)
    device = prep.device if isinstance(prep, Preprocess) else None
    loss_sum = torch.zeros((), device=device)
    first, first_images = None, 0
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    # the epoch's batch count sizes its last accumulation group, which may be shorter than the others
    total = steps_per_epoch(batches, max_steps) if accumulate > 1 else None
    group = 1
    synchronize(device)  # on a GPU the clock times the epoch's work, not the queueing of its kernels
    start = time.perf_counter()
    for step, (x, y) in enumerate(batches):
        if max_steps is not None and step >= max_steps:
            break
        x, y = prep(x), y.to(x.device if device is None else device, non_blocking=True)
        target = y
        if mix is not None:
            x, target = mix(x, y)
        if step % accumulate == 0:
            optimizer.zero_grad(set_to_none=True)
            if total is not None:
                group = min(accumulate, total - step)
        steps = total is None or (step + 1) % accumulate == 0 or step + 1 == total
        # DDP averages gradients once per optimizer step, not per accumulated batch
        with contextlib.nullcontext() if steps or not hasattr(model, "no_sync") else model.no_sync():
            if autocast is None:
                logits = model(x)
            else:
                with autocast():
                    logits = model(x)
                logits = logits.float()  # the loss in fp32, as torch's AMP recipe
            loss = loss_fn(logits, target)
            if penalty is not None:
                loss = loss + penalty()
            # each batch's share of the group's mean gradient (timm divides the remainder group by its own size)
            scaled = loss / group if group > 1 else loss
            if weight is not None:  # this rank's share of the global batch (bench.distributed)
                scaled = scaled * weight(step)
            if scaler is None:
                scaled.backward()
            else:
                scaler.scale(scaled).backward()
        if steps:
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
        if on_step is not None:
            on_step()
        if weight is not None and weight(step) == 0:
            continue  # a stand-in image for a rank that the last batch left empty: not counted
        if first is None:  # the loss before any update of this epoch: the divergence rule's yardstick
            first, first_images = loss.detach(), len(y)
        # accumulate on the device: no host sync per step
        loss_sum += loss.detach() * len(y)
        correct += (logits.detach().argmax(1) == y).sum()
        seen += len(y)
    synchronize(device)
    seconds = time.perf_counter() - start
    loss_total, right, first_loss = float(loss_sum), float(correct), float(first) if first is not None else float("nan")
    if distributed.world() > 1:  # the global batch's figures: every rank's sums
        loss_total, right, seen, first_sum, first_images = distributed.all_sum(
            [loss_total, right, seen, first_loss * first_images, first_images])
        seen, first_loss = int(seen), first_sum / first_images
    return {"loss": loss_total / max(1, seen), "accuracy": right / max(1, seen), "images": seen,
            "seconds": seconds, "first_loss": first_loss}


DIVERGENCE_FACTOR = 100.0


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


def steps_per_epoch(loader, max_steps: int | None, accumulate: int = 1) -> int:
    """Training steps an epoch takes: the loader's batches, or train.max_steps where that is fewer. With
    `accumulate`, optimizer steps (what the schedule counts): one per `accumulate` batches, and one for the
    remainder."""
    batches = len(loader) if max_steps is None else min(max_steps, len(loader))
    return -(-batches // accumulate)


# ----------------------------------------------------------------------------------------- fit's steps
def _check_divergence(epoch: int, lr: float, tr: dict[str, float], progress: Progress, classes: int) -> None:
    """Raises Diverged (the epoch's training figures added to the history) when the mean training loss is
    not finite or exceeds DIVERGENCE_FACTOR times the larger of the first batch's loss and ln(classes)."""
    if progress.start_loss is None:
        progress.start_loss = tr["first_loss"]
    limit = DIVERGENCE_FACTOR * max(progress.start_loss, math.log(classes))
    if not math.isfinite(tr["loss"]) or tr["loss"] > limit:
        progress.history.append({"epoch": epoch, "lr": lr, "train_loss": tr["loss"],
                                 "train_error": 1 - tr["accuracy"], "train_seconds": tr["seconds"],
                                 "train_images": tr["images"]})
        raise Diverged(epoch, tr["loss"], limit, progress.history)


def _epoch_row(epoch: int, lr: float, tr: dict[str, float], loop: Loop, val_loader, progress: Progress
               ) -> dict[str, Any]:
    """The epoch's history row: its training figures and its validation (cheap metrics), of the weights
    and, with EMA, of the averaged weights in columns of their own; validation counts as evaluation time."""
    def validate(net: nn.Module) -> tuple[dict[str, float], float]:
        metrics, images, sec = score(net, val_loader, loop.prep, autocast=loop.autocast)
        progress.evaluated(sec, images)
        return metrics, sec

    val, sec = validate(loop.eval_net)
    row = {"epoch": epoch, "lr": lr, "train_loss": tr["loss"], "train_error": 1 - tr["accuracy"],
           "val_loss": val["loss"], "val_error": val["top1_error"], "val_top5_error": val["top5_error"],
           "train_seconds": tr["seconds"], "train_images": tr["images"], "val_seconds": sec}
    if loop.ema is not None:
        val, _ = validate(loop.ema.module)
        row.update(val_loss_ema=val["loss"], val_error_ema=val["top1_error"],
                   val_top5_error_ema=val["top5_error"])
    return row


def _final_evaluation(loop: Loop, loaders: dict, progress: Progress, test: bool
                      ) -> tuple[dict[str, torch.Tensor], dict, dict, float]:
    """(selected weights, predictions, metrics, TTA seconds) of the best epoch. The selected weights are
    "val"/"test"; with EMA, the other variant's follow as "val_raw"/"test_raw" or "val_ema"/"test_ema" (and
    "_tta" after each name with TTA), reported apart. The plain test pass of the selected weights is the one
    look at test that counts as evaluation time; TTA seconds are the selected weights' alone."""
    states = {"raw": progress.best_state, "ema": progress.best_ema}
    variants = [("", states[loop.selected])]
    if loop.ema is not None:
        other = "raw" if loop.selected == "ema" else "ema"
        variants.append((f"_{other}", states[other]))
    predictions, metrics, tta_seconds = {}, {}, 0.0
    for suffix, state in variants:
        loop.model.load_state_dict(state)
        for split in ("val", "test") if test else ("val",):
            if len(loaders[split].dataset) == 0:
                continue
            done = evaluate(loop.eval_net, loaders[split], loop.prep, split + suffix, autocast=loop.autocast,
                            views=loop.views)
            predictions.update(done.predictions)
            metrics.update(done.metrics)
            if split == "test" and not suffix:  # the one look at test (TTA, the other weights: apart)
                progress.evaluated(done.seconds, done.images)
            if not suffix:  # what TTA costs, once
                tta_seconds += done.tta_seconds
    if len(variants) > 1:
        loop.model.load_state_dict(variants[0][1])
    return variants[0][1], predictions, metrics, tta_seconds


# ----------------------------------------------------------------------------------------- fit
def fit(model: nn.Module, loaders: dict, cfg: TrainConfig, device: torch.device, class_counts: list[int],
        on_epoch: Callable[[list[dict[str, Any]]], None] | None = None,
        on_step: Callable[[], None] | None = None, checkpoint: Checkpoint | None = None,
        test: bool = True) -> FitResult:
    """Train `model` in place. `class_counts`, the training images per class, come from the data: their
    length is the class count (for mixing), their values feed class-weighted losses. With `checkpoint`,
    training goes on after the epoch it holds, and an epoch is saved to it when checkpoint.due() (saves are
    held to a share of the training time).

    Raises Diverged when an epoch's mean training loss is not finite or exceeds DIVERGENCE_FACTOR times
    the larger of the first batch's loss and ln(classes) (the loss of a uniform guess); on_epoch may raise
    Pruned. `test = False` never looks at the test split (a tuning trial: only the chosen one is tested)."""
    loop = Loop(model, loaders, cfg, device, class_counts, precision=precision_setup(cfg.precision, device),
                steps=steps_per_epoch(loaders["train"], cfg.max_steps, cfg.accumulate))
    progress = Progress.start(loop, checkpoint)
    for epoch in range(len(progress.history) + 1, cfg.epochs + 1):
        if loop.stopper.stop:  # a checkpoint taken at the epoch early stopping ended on
            break
        lr = loop.optimizer.param_groups[-1]["lr"]  # the head's when backbone and head differ
        if loop.mix is not None:
            loop.mix.set_epoch(epoch)
        set_epoch(loaders["train"], epoch)  # each image's augmentation: (seed, epoch, place in the epoch)
        tr = train_one_epoch(loop.net, loaders["train"], loop.optimizer, loop.scheduler, loop.loss_fn, loop.prep,
                             max_steps=cfg.max_steps, on_step=on_step, mix=loop.mix, autocast=loop.autocast,
                             scaler=loop.scaler, penalty=loop.penalty, accumulate=cfg.accumulate, clip=loop.clip,
                             after_step=loop.ema, weight=loop.weight)
        distributed.same_buffers(loop.model, loop.ema.module if loop.ema else None)  # rank 0's statistics
        _check_divergence(epoch, lr, tr, progress, len(class_counts))
        row = _epoch_row(epoch, lr, tr, loop, loaders["val"], progress)
        selected = as_selected(row, loop.selected)
        if loop.stopper.update(selected):  # validation only decides
            progress.keep_best(epoch, loop)
        row["epochs_since_best"] = loop.stopper.since_best
        loop.scheduler.epoch_end(selected)  # a plateau schedule hears what stopping reads
        progress.history.append(row)
        stopped, rngs = None, None
        if checkpoint is not None and distributed.world() > 1:  # every rank's own draws, each resumed by its own
            rngs = distributed.gather_objects(rng_state(loop.generators))
        try:  # what rank 0 alone does: no collective in here
            if on_epoch is not None:
                on_epoch(progress.history)  # every row so far (a resumed cell's too): the new one last
            if checkpoint is not None and distributed.is_main() and checkpoint.due():
                checkpoint.save(epoch, {**progress.checkpoint_state(loop), **({"rng": rngs} if rngs else {})})
        except Pruned as e:
            e.history, stopped = progress.history, e
        except Exception as e:  # a full disk, a tracker: rank 0's record says it, the other ranks stop
            stopped = e
        # rank 0 alone hears the callbacks and writes: every rank goes on, or stops, with it
        if distributed.agree(stopped is not None):
            raise stopped or distributed.Stopped(f"rank 0 stopped the cell after epoch {epoch}")
    best_state, predictions, metrics, tta_seconds = _final_evaluation(loop, loaders, progress, test)
    return FitResult(progress.history, progress.best_epoch, best_state, predictions, metrics,
                     timing_record(loop, progress, tta_seconds, checkpoint),
                     info_record(cfg, loop, progress))
