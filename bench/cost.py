"""Compute cost: forward FLOPs of a model, and DAWNBench-style time to a target accuracy.

FLOPs are counted by torch.utils.flop_counter.FlopCounterMode, which counts a multiply and an add as two
operations (a ResNet-50 at 224 px is ~8.2 GFLOPs here; papers that quote "4.1 GFLOPs" count
multiply-adds). Only the forward pass is counted: FlopCounterMode's backward count is wrong for grouped
convolutions. Training cost is derived as ~3x forward (forward + backward for activations and weights).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

TRAIN_FLOPS_PER_FORWARD = 3  # forward + backward (~2x forward) per training image


def forward_gflops(model: nn.Module, image_size: int | tuple[int, int], channels: int = 3) -> float:
    """GFLOPs of one forward pass of one image at `image_size` (batch 1, eval mode, no grad).

    Counted on the meta device (shapes only: no arithmetic, no copy of the weights), with a CPU copy of
    the model as the fallback for a model whose forward cannot run on meta tensors. Either way the
    caller's model (its device, train/eval modes, weights, BatchNorm statistics) and the RNG are untouched.
    """
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    try:
        return _count(model, channels, h, w, "meta")
    except (NotImplementedError, RuntimeError):
        return _count(model, channels, h, w, "cpu")


def _count(model: nn.Module, channels: int, h: int, w: int, device: str) -> float:
    counter = FlopCounterMode(display=False)
    modes = {m: m.training for m in model.modules()}
    with torch.random.fork_rng(devices=[]):
        try:
            if device == "meta":  # the model's own tensors swapped for shape-only stand-ins, for this call only
                probe = model.eval()
                state = {k: torch.empty_like(v, device="meta")
                         for k, v in [*model.named_parameters(), *model.named_buffers()]}
                with torch.no_grad(), counter:
                    functional_call(probe, state, (torch.zeros(1, channels, h, w, device="meta"),))
            else:
                probe = copy.deepcopy(model).cpu().eval()
                with torch.no_grad(), counter:
                    probe(torch.zeros(1, channels, h, w))
        finally:
            for m, training in modes.items():
                m.training = training
    return counter.get_total_flops() / 1e9


def achieved_gflops_per_s(gflops_forward: float | None, train_images_per_s: float | None) -> float | None:
    """Training throughput in GFLOP/s: 3 x forward GFLOPs x images per second of training."""
    if gflops_forward is None or not train_images_per_s:
        return None
    return TRAIN_FLOPS_PER_FORWARD * gflops_forward * train_images_per_s


def time_to_accuracy(history_rows: Iterable[Mapping[str, Any]], target_error: float) -> float | None:
    """Training seconds (summed over epochs, evaluation excluded) until validation error first reaches
    `target_error` or below; None if it never does. Rows are history.csv's, in epoch order."""
    seconds = 0.0
    for row in history_rows:
        seconds += float(row["train_seconds"])
        if float(row["val_error"]) <= target_error:
            return seconds
    return None



