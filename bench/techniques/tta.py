"""Test-time augmentation (study 002): `train.tta` names views of the normalised batch; the softmax
outputs of the original and every view are averaged.

"hflip", "vflip", "rotate:D" (two views, +D and -D degrees), "shift:P" (four views, P px left, right,
up, down), "identity" (the original alone: equal to plain evaluation).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torchvision.transforms.v2 import functional as TF

from bench.errors import did_you_mean
from bench.registry import register

TTA_VIEWS: dict = {}  # name -> function(value or None) -> list of view functions


@register(TTA_VIEWS, "identity")
def identity(value):
    return []


@register(TTA_VIEWS, "hflip")
def hflip(value):
    return [TF.horizontal_flip]


@register(TTA_VIEWS, "vflip")
def vflip(value):
    return [TF.vertical_flip]


@register(TTA_VIEWS, "rotate")
def rotate(value):
    d = float(value if value is not None else 10)
    return [lambda x, a=a: TF.rotate(x, a) for a in (d, -d)]


@register(TTA_VIEWS, "shift")
def shift(value):
    p = int(value if value is not None else 3)
    moves = ((p, 0), (-p, 0), (0, p), (0, -p))
    return [lambda x, m=m: TF.affine(x, angle=0.0, translate=list(m), scale=1.0, shear=[0.0, 0.0]) for m in moves]


def build_tta(spec: list[str]) -> list[Callable[[torch.Tensor], torch.Tensor]]:
    """The views for train.tta, the original first; empty when TTA is off."""
    if not spec:
        return []
    views: list[Callable] = [lambda x: x]
    for item in spec:
        name, _, value = item.partition(":")
        if name not in TTA_VIEWS:
            raise ValueError(f"unknown tta view '{name}'; {did_you_mean(name, TTA_VIEWS)}")
        try:
            views += TTA_VIEWS[name](value or None)
        except ValueError:
            raise ValueError(f"tta view '{item}': '{value}' is not a number") from None
        if name in ("identity", "hflip", "vflip") and value:
            raise ValueError(f"tta view '{name}' takes no value (got '{item}')")
    return views
