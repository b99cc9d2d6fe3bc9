"""train.ema: an exponential moving average of the weights, timm's ModelEmaV3, updated after every
optimizer step."""

from __future__ import annotations

from timm.utils import ModelEmaV3
from torch import nn

from bench.config import TrainConfig


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
