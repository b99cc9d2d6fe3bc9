"""train.compile: torch.compile's graphs built, and timed, before training starts."""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable

import torch
from torch import nn

from bench import distributed
from bench.data.loaders import Preprocess
from bench.models.freeze import set_train_mode


def compile_warm_up(net: nn.Module, model: nn.Module, loaders: dict, prep: Preprocess, autocast: Callable | None,
                    batch_size: int) -> float:
    """torch.compile compiles on first use; left there, the compilation would count as training time (and
    evaluation time) and make a compiled cell look slower than it trains. So the graphs are built here, on a
    validation batch at the training batch size and one image less (which makes the shape dynamic, as the
    last, shorter batch would), forward and backward in training mode and forward in eval mode, and timed
    apart (cost.compile_time_s). Every state it touches is put back: the weights and running statistics,
    the gradients, and the random generators (dropout draws), so the run trains as it would without it.

    The ranks of a cell warm up on the same batch sizes (the smallest rank's first validation batch): a
    SyncBatchNorm's training forward and backward are collectives, which ranks must make alike or wait for
    each other forever."""
    first = next(iter(loaders["val"]), None)
    device = prep.device
    x = prep(first[0]) if first is not None else None  # a batch the device decodes is no tensor until then
    size = min(distributed.gather_objects(0 if x is None else min(batch_size, len(x))))
    if size == 0:  # a rank without validation images: the graphs are built as training starts
        return 0.0
    state = copy.deepcopy(model.state_dict())
    start = time.perf_counter()
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        for n in sorted({size, max(1, size - 1)}, reverse=True):
            batch = x[:n]
            set_train_mode(model)
            with autocast() if autocast is not None else contextlib.nullcontext():
                out = net(batch)
            out.float().sum().backward()
            model.eval()
            with torch.no_grad(), autocast() if autocast is not None else contextlib.nullcontext():
                net(batch)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    model.load_state_dict(state)
    return seconds
