"""Which device a run trains on: `--device auto` picks CUDA, then MPS, then the CPU; a device asked for by
name that torch cannot see is the user's to fix, said before anything is written."""

from __future__ import annotations

import torch

from bench.errors import UserError


def _mps() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps() else torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda, but torch sees no CUDA device", hint="use --device auto or cpu")
    if name == "mps" and not _mps():
        raise UserError("--device mps, but torch sees no MPS device", hint="use --device auto or cpu")
    return torch.device(name)


def synchronize(device: torch.device | None) -> None:
    """Wait for the work queued on `device`, so that a timer read next times the work, not its launch."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device is not None and device.type == "mps":
        torch.mps.synchronize()
