"""Epoch checkpoints: what a cell needs to go on after its last complete epoch as if it had never stopped.

`fit` hands `Checkpoint.save` its whole state after every epoch (weights, optimizer, schedule, scaler, EMA,
early stopping, best weights, history) plus every random state the rest of the run draws from: torch's,
numpy's and Python's global generators and the training loader's and sampler's own. Restored, a CPU run
continues bitwise as the uninterrupted one would have. The file is written atomically, so a kill leaves the
previous epoch's checkpoint or this one, never half of either; it is read with weights_only=True, so a
checkpoint file can never run code.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench import SCHEMA_VERSION
from bench.errors import UserError
from bench.store import CHECKPOINT, CHECKPOINT_INFO, atomic_path, read_json, write_json


def loader_generators(loader) -> dict[str, torch.Generator]:
    """The training loader's own random generators: its shuffle and worker seeds, and a sampler's draws."""
    found = {"loader": loader.generator}
    # a sampler's own, or (a rank of a cell) the one its global batches are drawn from
    sampler = getattr(loader.sampler, "generator", None) or getattr(loader.batch_sampler, "generator", None)
    if sampler is not None and sampler is not loader.generator:
        found["sampler"] = sampler
    return {k: g for k, g in found.items() if g is not None}


def rng_state(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    """Every random state a training epoch draws from (the global ones and `generators`), as tensors and
    plain Python values that weights_only loading accepts."""
    np_state = np.random.get_state(legacy=False)
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "python": random.getstate(),
        "generators": {name: g.get_state() for name, g in generators.items()},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        # the training device's alone: the resumed process may see fewer GPUs (one per cell, Slurm's binding)
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state({"bit_generator": "MT19937",
                         "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    random.setstate(state["python"])
    for name, g in generators.items():
        g.set_state(state["generators"][name])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if isinstance(cuda, list):  # a checkpoint of a bench that saved every visible GPU's state
            cuda = cuda[min(torch.cuda.current_device(), len(cuda) - 1)]
        torch.cuda.set_rng_state(cuda)


# Writing checkpoints may take at most 5% of a cell's training time; half of it is aimed at, since the time
# between two saves includes validation, which the 5% does not count.
MAX_SHARE = 0.025


class Checkpoint:
    """The epoch checkpoint of one cell folder. `fingerprint` names what the checkpoint is valid for (the
    cell's config, the split, the initial weights, the record schema): one written for anything else is
    refused rather than continued from.

    A checkpoint follows every epoch once 1 / MAX_SHARE times as long as writing the last checkpoint took
    has passed since it: every epoch of any real cell (a 100 MB checkpoint takes a fraction of a second, an
    iNat epoch minutes); for epochs of a fraction of a second, every few epochs, so that checkpoints never
    cost more than 5% of the training, and a kill loses at most one epoch or 1 / MAX_SHARE writes' worth of
    time, whichever is longer."""

    def __init__(self, cell_dir: Path, fingerprint: str, epochs: int):
        self.path, self.info = Path(cell_dir) / CHECKPOINT, Path(cell_dir) / CHECKPOINT_INFO
        self.fingerprint, self.epochs = fingerprint, epochs
        self.last_end, self.last_cost = time.perf_counter(), 0.0
        self.seconds, self.saves = 0.0, 0  # what checkpointing cost this cell, for its record

    def due(self) -> bool:
        """Whether to checkpoint the epoch that just ended."""
        return time.perf_counter() - self.last_end >= self.last_cost / MAX_SHARE

    def load(self) -> dict[str, Any] | None:
        """The saved state, or None when the cell has none."""
        if not self.path.is_file():
            return None
        fix = f"delete it, or rerun the cell from epoch 1 with --force (bench run SUITE --only {self.path.parent.name} --force)"
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:  # weights_only refuses anything but tensors and plain data: no code runs
            raise UserError(f"not a readable bench checkpoint ({type(e).__name__})", file=self.path,
                            hint=fix) from None
        if not isinstance(state, dict) or state.get("fingerprint") != self.fingerprint:
            raise UserError("checkpoint written for another config, split, initial weights or bench schema "
                            f"(this bench writes schema {SCHEMA_VERSION})", file=self.path, hint=fix)
        return state

    def save(self, epoch: int, state: dict[str, Any]) -> None:
        start = time.perf_counter()
        with atomic_path(self.path) as tmp:
            torch.save({**state, "epoch": epoch, "fingerprint": self.fingerprint}, tmp)
        # a few bytes for `bench status`, which should not unpickle weights to say "resumable at epoch k"
        write_json(self.info, {"epoch": epoch, "epochs": self.epochs})
        self.last_end = time.perf_counter()
        self.last_cost = self.last_end - start
        self.seconds, self.saves = self.seconds + self.last_cost, self.saves + 1

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
        self.info.unlink(missing_ok=True)


def saved_epoch(cell_dir: Path) -> int | None:
    """The last complete epoch a cell's checkpoint holds, as its info file says; None without one."""
    try:
        return int(read_json(Path(cell_dir) / CHECKPOINT_INFO)["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
