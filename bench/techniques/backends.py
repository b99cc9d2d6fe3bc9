"""train.deterministic and train.tf32: the backend switches that decide a GPU cell's speed and its last bits,
set for the whole cell (feature extraction, training, evaluation; a tuned trial's later test look too) and
put back after it (a cell run in this process leaves the next one as it found it), and read back into the
record (`in_force`), so a result says how it was computed.

The fast default lets cuDNN benchmark its convolution algorithms (the fastest for each shape, chosen anew
each run: the last bits may differ between runs); `deterministic` asks torch for deterministic algorithms
(an op without one fails the cell, naming itself) and cuBLAS for a fixed workspace. `tf32` unset keeps
torch's own choice (TF32 convolutions, full-fp32 matrix products); true allows TF32 for both (timm's
train.py), false for neither."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch

from bench.config import TrainConfig

CUBLAS_WORKSPACE = ":4096:8"  # what deterministic cuBLAS needs (CUDA's reproducibility notes)


def _state() -> dict[str, Any]:
    return {"deterministic": torch.are_deterministic_algorithms_enabled(),
            "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "cudnn_deterministic": torch.backends.cudnn.deterministic,
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "tf32_conv": torch.backends.cudnn.allow_tf32}


def _set(state: dict[str, Any]) -> None:
    torch.use_deterministic_algorithms(state["deterministic"], warn_only=state["warn_only"])
    torch.backends.cudnn.benchmark = state["cudnn_benchmark"]
    torch.backends.cudnn.deterministic = state["cudnn_deterministic"]
    torch.backends.cuda.matmul.allow_tf32 = state["tf32_matmul"]
    torch.backends.cudnn.allow_tf32 = state["tf32_conv"]


def in_force() -> dict[str, bool]:
    """The switches as torch has them now: what a cell's record says it ran with."""
    now = _state()
    return {k: now[k] for k in ("deterministic", "cudnn_benchmark", "tf32_matmul", "tf32_conv")}


@contextlib.contextmanager
def backend_flags(cfg: TrainConfig) -> Iterator[dict[str, bool]]:
    """The switches `cfg` asks for, while the block runs; yields what they are. cuBLAS reads its workspace
    setting when a process first uses it: a deterministic cell on a GPU must come before any other cuBLAS
    work of its process, as it does in its own (the default: one process per cell)."""
    before, workspace = _state(), os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    wanted = {**before, "deterministic": cfg.deterministic, "warn_only": False,
              "cudnn_benchmark": not cfg.deterministic, "cudnn_deterministic": cfg.deterministic}
    if cfg.tf32 is not None:
        wanted.update(tf32_matmul=cfg.tf32, tf32_conv=cfg.tf32)
    if cfg.deterministic and workspace is None:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE
    _set(wanted)
    try:
        yield in_force()
    finally:
        _set(before)
        if workspace is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
