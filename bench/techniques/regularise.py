"""Gradient clipping (train.clip_grad, clip_mode) and the head's weight penalty (train.head_l1, head_l2)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from timm.utils import dispatch_clip_grad
from torch import nn

from bench.models.heads import head_module, head_param_ids


def head_penalty(model: nn.Module, l1: float, l2: float) -> Callable[[], torch.Tensor] | None:
    """l1 * sum|W| + l2 * sum W^2 over the head's weight tensors (not biases), as Keras' kernel_regularizer."""
    if not (l1 or l2):
        return None
    weights = [p for n, p in head_module(model).named_parameters() if n.endswith("weight")]

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
        head = head_param_ids(model)
        params = [p for p in params if id(p) not in head] or params
    return partial(dispatch_clip_grad, params, threshold, mode=mode), len(params)
