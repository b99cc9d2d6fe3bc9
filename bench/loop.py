"""What `bench.train.fit` works with: the parts it builds from train.* before the first epoch (`Loop`), what
it carries from epoch to epoch and a checkpoint keeps (`Progress`), and what its result records of how it
trained (`timing_record`, `info_record`)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bench import distributed
from bench.checkpoint import Checkpoint, loader_generators, rng_state, set_rng_state
from bench.config import TrainConfig
from bench.data.loaders import Preprocess
from bench.techniques import LOSSES, MIXES, build_tta
from bench.techniques.backends import in_force
from bench.techniques.compile import compile_warm_up
from bench.techniques.ema import EmaUpdate
from bench.techniques.optimizers import build_optimizer, optimizer_record
from bench.techniques.regularise import grad_clipper, head_penalty
from bench.techniques.stopping import EarlyStopping


class Loop:
    """What fit builds from train.* before the first epoch: everything an epoch steps, reads or saves.
    `precision`: (autocast, scaler) from precision_setup; `steps`: optimizer steps per epoch
    (bench.train.steps_per_epoch), which the schedule counts."""

    def __init__(self, model: nn.Module, loaders: dict, cfg: TrainConfig, device: torch.device,
                 class_counts: list[int], *, precision: tuple[Callable | None, Any], steps: int):
        self.model, self.steps = model, steps
        self.autocast, self.scaler = precision
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        ranks = distributed.world()
        if ranks > 1 and cfg.sync_bn:  # in place, before the optimizer and EMA see the parameters
            distributed.sync_batchnorm(model, device)
        # weights are shared: state_dicts come from `model`; evaluation runs `eval_net`, which is no DDP (the
        # ranks' shards of a split may differ by a batch, and DDP's forward is a collective)
        self.eval_net = torch.compile(model) if cfg.compile else model
        self.prep = Preprocess(device, cfg.channels_last)
        self.compile_seconds = compile_warm_up(self.eval_net, model, loaders, self.prep, self.autocast,
                                               cfg.batch_size) if cfg.compile else None
        self.net = distributed.data_parallel(self.eval_net, device) if ranks > 1 else self.eval_net
        # a rank's loss weight per step: its share of each global batch (None in one process)
        self.weight = getattr(loaders["train"].batch_sampler, "weight", None) if ranks > 1 else None
        self.optimizer, self.scheduler = build_optimizer(model, cfg, steps)
        self.loss_fn = LOSSES[cfg.loss](cfg, class_counts)
        self.mix = MIXES[cfg.mix](cfg, len(class_counts))
        self.penalty = head_penalty(model, cfg.head_l1, cfg.head_l2)
        self.views = build_tta(cfg.tta)
        self.stopper = EarlyStopping(cfg.monitor, cfg.mode, cfg.patience, cfg.min_delta)
        self.clip, self.clipped = grad_clipper(model, cfg.clip_grad, cfg.clip_mode)
        self.ema = EmaUpdate(model, cfg) if cfg.ema else None  # of `model`, not `net`: the same state_dict keys
        self.selected = cfg.ema_select if self.ema else "raw"  # whose validation decides, whose weights result
        self.generators = loader_generators(loaders["train"])  # their states go into every checkpoint


@dataclass
class Progress:
    """What fit carries from epoch to epoch, and a checkpoint keeps: the history rows, the best epoch's
    weights (and its EMA's), evaluation time, and the first loss (the divergence rule's yardstick)."""
    history: list[dict[str, Any]]
    best_epoch: int
    best_state: dict[str, torch.Tensor]
    best_ema: dict[str, torch.Tensor] | None
    eval_seconds: float = 0.0
    eval_images: int = 0
    start_loss: float | None = None
    resumed_at: int | None = None  # the checkpoint's epoch training went on after

    @classmethod
    def start(cls, loop: Loop, checkpoint: Checkpoint | None) -> Progress:
        """From scratch, or from `checkpoint`, with every state (`loop`'s too) as it was after its epoch."""
        saved = checkpoint.load() if checkpoint is not None else None
        if len(set(distributed.gather_objects(saved["epoch"] if saved else None))) > 1:
            raise RuntimeError("the cell's ranks found different checkpoints: the results folder must look the "
                               "same from every node (a shared file system without stale caches)")
        if saved is None:  # the initial weights are the best so far (a resumed cell's come from its checkpoint)
            return cls([], 0, copy.deepcopy(loop.model.state_dict()),
                       copy.deepcopy(loop.ema.module.state_dict()) if loop.ema else None)
        progress = cls([], 0, saved["best_state"], saved["best_ema"] if loop.ema is not None else None)
        loop.model.load_state_dict(saved["model"])
        loop.optimizer.load_state_dict(saved["optimizer"])
        loop.scheduler.load_state_dict(saved["scheduler"])
        if loop.scaler is not None:
            loop.scaler.load_state_dict(saved["scaler"])
        if loop.ema is not None:
            loop.ema.module.load_state_dict(saved["ema"])
            loop.ema.updates = saved["ema_updates"]
        loop.stopper.best, loop.stopper.since_best = saved["stopper"]
        progress.best_epoch = saved["best_epoch"]
        progress.history, progress.start_loss = saved["history"], saved["start_loss"]
        progress.eval_seconds, progress.eval_images = saved["eval_seconds"], saved["eval_images"]
        progress.resumed_at = saved["epoch"]
        rng = saved["rng"]  # a list, one per rank, from a cell trained as several ranks
        set_rng_state(rng[min(distributed.rank(), len(rng) - 1)] if isinstance(rng, list) else rng, loop.generators)
        return progress

    def checkpoint_state(self, loop: Loop) -> dict[str, Any]:
        """Everything `start` needs to go on after this epoch as if training had never stopped."""
        ema, stopper = loop.ema, loop.stopper
        return {
            "model": loop.model.state_dict(), "optimizer": loop.optimizer.state_dict(),
            "scheduler": loop.scheduler.state_dict(), "scaler": loop.scaler.state_dict() if loop.scaler else None,
            "ema": ema.module.state_dict() if ema else None, "ema_updates": ema.updates if ema else 0,
            "best_ema": self.best_ema, "stopper": (stopper.best, stopper.since_best),
            "best_epoch": self.best_epoch, "best_state": self.best_state, "history": self.history,
            "eval_seconds": self.eval_seconds, "eval_images": self.eval_images, "start_loss": self.start_loss,
            "rng": rng_state(loop.generators)}

    def evaluated(self, seconds: float, images: int) -> None:
        """Adds a pass to evaluation time (eval_images_per_s)."""
        self.eval_seconds, self.eval_images = self.eval_seconds + seconds, self.eval_images + images

    def keep_best(self, epoch: int, loop: Loop) -> None:
        self.best_epoch, self.best_state = epoch, copy.deepcopy(loop.model.state_dict())
        if loop.ema is not None:
            self.best_ema = copy.deepcopy(loop.ema.module.state_dict())


def timing_record(loop: Loop, progress: Progress, tta_seconds: float, checkpoint: Checkpoint | None
                  ) -> dict[str, float]:
    """FitResult.timing: training and evaluation speed, compile and TTA time, what checkpoints cost."""
    history = progress.history
    train_seconds = sum(r["train_seconds"] for r in history)
    train_images = sum(r["train_images"] for r in history)
    timing = {
        "train_time_s": train_seconds,
        **({"compile_time_s": loop.compile_seconds} if loop.compile_seconds is not None else {}),
        "time_per_epoch_s": train_seconds / len(history),
        "train_images_per_s": train_images / train_seconds if train_seconds else 0.0,
        "eval_images_per_s": progress.eval_images / progress.eval_seconds if progress.eval_seconds else 0.0,
    }
    if loop.views:
        timing["tta_time_s"] = tta_seconds
    if checkpoint is not None:  # what surviving a kill cost this run of the cell (outside train_time_s)
        timing.update(checkpoint_time_s=checkpoint.seconds, checkpoints=checkpoint.saves)
    return timing


def info_record(cfg: TrainConfig, loop: Loop, progress: Progress) -> dict[str, Any]:
    """FitResult.info, how it trained: precision, param groups, stopping, clipping, mixing, EMA."""
    epochs_run = len(progress.history)
    return {
        "resumed_at_epoch": progress.resumed_at,
        "backends": in_force(),  # deterministic algorithms, cuDNN's benchmark, TF32: as torch has them now
        "precision": cfg.precision, "autocast": str(loop.autocast.keywords["dtype"]) if loop.autocast else None,
        "grad_scaler": loop.scaler is not None, "channels_last": cfg.channels_last, "compiled": cfg.compile,
        **optimizer_record(loop.optimizer, cfg.optimizer),  # its class and settings, each group's lr and decay
        # what an epoch's steps took in, as history.csv counts it: max_steps' share, aug_splits' views
        "train_images_per_epoch": progress.history[-1]["train_images"],
        "tta_views": len(loop.views),
        "early_stopping": {"monitor": cfg.monitor, "patience": cfg.patience,
                           "stopped_at_epoch": epochs_run if epochs_run < cfg.epochs else None},
        "accumulate": cfg.accumulate, "effective_batch_size": cfg.batch_size * cfg.accumulate,
        "optimizer_steps_per_epoch": loop.steps,
        "clip_grad": {"threshold": cfg.clip_grad, "mode": cfg.clip_mode, "tensors": loop.clipped}
        if loop.clip else None,
        "aug_splits": max(1, cfg.aug_splits),
        "mix": loop.mix.record() if loop.mix is not None else None,
        "ema": {"decay": cfg.ema_decay, "warmup": cfg.ema_warmup, "select": cfg.ema_select,
                "updates": loop.ema.updates} if loop.ema else None,
    }
