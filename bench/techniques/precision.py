"""train.precision: fp32, or autocast (bf16, fp16) with a GradScaler for fp16."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch

from bench.errors import UserError


def precision_setup(precision: str, device: torch.device) -> tuple[Callable | None, Any]:
    """(autocast factory or None, GradScaler or None) for train.precision on `device`."""
    if precision == "fp32":
        return None, None
    if precision == "fp16":
        if device.type != "cuda":
            raise UserError(f"fp16 training needs a CUDA device, not {device.type}", key="train.precision",
                            hint="use bf16 or fp32")
        return partial(torch.autocast, "cuda", dtype=torch.float16), torch.amp.GradScaler("cuda")
    supported = {
        "cuda": lambda: torch.cuda.is_bf16_supported(including_emulation=False),  # Ampere on
        "cpu": lambda: torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported(),
    }.get(device.type, lambda: False)()
    if not supported:
        raise UserError(f"this {device.type} has no native bf16 (autocast would emulate it, many times slower "
                        "than fp32)", key="train.precision", hint="use fp32 here")
    return partial(torch.autocast, device.type, dtype=torch.bfloat16), None
