"""Batch mixing: name -> function(train_config, num_classes) -> BatchMix or None.

torchvision.transforms.v2's CutMix and MixUp (torch's RNG, so seeded by the cell seed). They act on
the normalised float batch on the device and return soft targets, which every loss accepts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from bench.registry import register

MIXES: dict = {}


class BatchMix:
    """Mix a batch with probability `prob`; the targets are always distributions, mixed or not."""

    def __init__(self, mix, num_classes: int, prob: float):
        self.mix, self.num_classes, self.prob = mix, num_classes, prob

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.prob >= 1 or float(torch.rand(())) < self.prob:
            return self.mix(x, y)
        return x, F.one_hot(y, self.num_classes).float()


@register(MIXES, "none")
def none(cfg, num_classes: int):
    return None


@register(MIXES, "mixup")
def mixup(cfg, num_classes: int):
    """x = lam x + (1 - lam) x', lam ~ Beta(alpha, alpha) (Zhang et al. 2018), targets mixed alike."""
    return BatchMix(v2.MixUp(alpha=cfg.mix_alpha, num_classes=num_classes), num_classes, cfg.mix_prob)


@register(MIXES, "cutmix")
def cutmix(cfg, num_classes: int):
    """A box of another image pasted in (Yun et al. 2019); target weights are the pasted area (study 002)."""
    return BatchMix(v2.CutMix(alpha=cfg.mix_alpha, num_classes=num_classes), num_classes, cfg.mix_prob)


@register(MIXES, "cutmix_mixup")
def cutmix_mixup(cfg, num_classes: int):
    """Either, chosen at random per batch (the timm / torchvision reference recipe)."""
    both = v2.RandomChoice([v2.CutMix(alpha=cfg.mix_alpha, num_classes=num_classes),
                            v2.MixUp(alpha=cfg.mix_alpha, num_classes=num_classes)])
    return BatchMix(both, num_classes, cfg.mix_prob)
