"""Offline augmentation (study 004): the training set enlarged to K times its size, fixed for the run.

The set is a list of fixed copies (`train.offline = ["identity", "hflip", "vflip", "hvflip"]`), each
followed by `offline_random` versions of itself augmented by train.augment; `offline = K` is the list
["identity"] with K-1 augmented versions. Each augmented image is drawn from its own seed (cell seed,
index), so the enlarged set is the same in every epoch and every run, whatever the order or the worker
that reads it. It is not held in memory (K copies of iNat at 224 px would
not fit): an augmented image is recomputed, identically, each time it is read, so the transform costs what
online augmentation costs per epoch.
"""

from __future__ import annotations

import numpy as np
import torch

from bench.data import views
from bench.data.loaders import ArrayDataset, own_draws

COPIES = {  # the deterministic copies of an offline list, of a whole stored image (H x W x 3): views, no copy
    "identity": lambda im: im,
    "hflip": lambda im: im[:, ::-1],
    "vflip": lambda im: im[::-1],
    "hvflip": lambda im: im[::-1, ::-1],
    "rot90": lambda im: np.rot90(im, 1),
    "rot180": lambda im: np.rot90(im, 2),
    "rot270": lambda im: np.rot90(im, 3),
}


def copies(offline: int | list[str], offline_random: int = 0) -> list[tuple[str, bool]]:
    """(fixed copy, augmented?) for each block of the enlarged set, in order."""
    if isinstance(offline, int):
        return [("identity", False)] + [("identity", True)] * (offline - 1)
    return [(name, r > 0) for name in offline for r in range(1 + offline_random)]


class OfflineAugmented(torch.utils.data.Dataset):
    def __init__(self, base: ArrayDataset, blocks: list[tuple[str, bool]], transform, seed: int):
        self.base, self.blocks, self.transform, self.seed = base, blocks, transform, seed
        self.whole = transform is not None and views.draws_whole(transform)
        self.labels = base.labels.repeat(len(blocks))

    def __len__(self) -> int:
        return len(self.base) * len(self.blocks)

    def __getitems__(self, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self.base)
        out = []
        with own_draws() as seed:
            for i, row in zip(idx, self.base.rows[np.asarray(idx) % n], strict=True):
                fixed, augmented = self.blocks[i // n]
                im = COPIES[fixed](self.base.stored(row))
                if augmented and self.transform is not None:  # augment = ["none"] leaves nothing to do
                    seed(self.seed * 1_000_003 + i)  # the same in every epoch: the set is fixed
                    out.append(self.base.trained(im, self.transform, self.whole))
                else:
                    out.append(views.tensor(self.base.evaluated(im)))
        return torch.stack(out).contiguous(), self.labels[torch.as_tensor(idx)]

    def __getitem__(self, i: int):
        x, y = self.__getitems__([i])
        return x[0], y[0]
