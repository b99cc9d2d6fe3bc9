"""Batch mixing: name -> function(train_config, num_classes) -> BatchMix or None.

timm's Mixup (the implementation timm's train.py uses): MixUp and CutMix with separate alphas, per batch,
per pair or per sample, switched off after an epoch. It draws from numpy's global generator, which the
cell seed sets and a checkpoint restores. It acts on the normalised float batch on the device and returns
soft targets, which every loss accepts; label smoothing stays with the loss (train.label_smoothing), so it
is applied once whether a batch is mixed or not.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.data import Mixup

from bench.registry import register

MIXES: dict = {}


class BatchMix:
    """timm's Mixup over a batch of any size (timm's asserts an even one: its train.py drops the last
    batch; here an odd one's last image is passed on unmixed), on until `off_epoch`."""

    def __init__(self, mixup: Mixup, num_classes: int, off_epoch: int | None = None):
        self.mixup, self.num_classes, self.off_epoch = mixup, num_classes, off_epoch

    def record(self) -> dict:
        """What timm's Mixup was given, for the result record."""
        m = self.mixup
        return {"mixup_alpha": m.mixup_alpha, "cutmix_alpha": m.cutmix_alpha, "mode": m.mode, "prob": m.mix_prob,
                "switch_prob": m.switch_prob, "off_epoch": self.off_epoch}

    def set_epoch(self, epoch: int) -> None:
        """1-based epoch about to train: mixing stops after epoch `off_epoch` (timm's --mixup-off-epoch)."""
        self.mixup.mixup_enabled = self.off_epoch is None or epoch <= self.off_epoch

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        even = len(x) - len(x) % 2
        if not self.mixup.mixup_enabled or even == 0:
            return x, F.one_hot(y, self.num_classes).float()
        _, target = self.mixup(x[:even], y[:even])  # mixes the view, so x, in place
        if even < len(x):
            target = torch.cat([target, F.one_hot(y[even:], self.num_classes).float()])
        return x, target.float()


def _mixup(cfg, num_classes: int, mixup_alpha: float, cutmix_alpha: float) -> BatchMix:
    return BatchMix(Mixup(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, cutmix_minmax=cfg.cutmix_minmax,
                          prob=cfg.mix_prob, switch_prob=cfg.mix_switch_prob, mode=cfg.mix_mode,
                          label_smoothing=0.0, num_classes=num_classes),
                    num_classes, cfg.mix_off_epoch)


def cutmix_alpha(cfg) -> float:
    return cfg.mix_alpha if cfg.cutmix_alpha is None else cfg.cutmix_alpha


@register(MIXES, "none")
def none(cfg, num_classes: int):
    return None


@register(MIXES, "mixup")
def mixup(cfg, num_classes: int):
    """x = lam x + (1 - lam) x', lam ~ Beta(alpha, alpha) (Zhang et al. 2018), targets mixed alike."""
    return _mixup(cfg, num_classes, cfg.mix_alpha, 0.0)


@register(MIXES, "cutmix")
def cutmix(cfg, num_classes: int):
    """A box of another image pasted in (Yun et al. 2019); target weights are the pasted area (study 002)."""
    return _mixup(cfg, num_classes, 0.0, cutmix_alpha(cfg))


@register(MIXES, "cutmix_mixup")
def cutmix_mixup(cfg, num_classes: int):
    """Either, CutMix with probability mix_switch_prob (the timm / torchvision reference recipes)."""
    return _mixup(cfg, num_classes, cfg.mix_alpha, cutmix_alpha(cfg))
