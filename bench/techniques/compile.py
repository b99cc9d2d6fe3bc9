"""train.compile: torch.compile's graphs built, and timed, before training starts."""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable

import torch
from torch import nn

from bench.data.loaders import Preprocess
from bench.models.freeze import set_train_mode


def compile_warm_up(net: nn.Module, model: nn.Module, loaders: dict, prep: Preprocess, autocast: Callable | None,
                    batch_size: int) -> float:
    """torch.compile compiles on first use; left there, the compilation would count as training time (and
    evaluation time) and make a compiled cell look slower than it trains. So the graphs are built here, on a
    validation batch at the training batch size and one image less (which makes the shape dynamic, as the
    last, shorter batch would), forward and backward in training mode and forward in eval mode, and timed
    apart (cost.compile_time_s). Every state it touches is put back: the weights and running statistics,
    the gradients, and the random generators (dropout draws), so the run trains as it would without it."""
    x, _ = next(iter(loaders["val"]))
    device = prep.device
    x = prep(x)  # a batch the device decodes (data.decode = "device") is no tensor until then
    state = copy.deepcopy(model.state_dict())
    start = time.perf_counter()
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        for n in sorted({min(batch_size, len(x)), max(1, min(batch_size, len(x)) - 1)}, reverse=True):
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
