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
from torchvision.transforms import v2

from bench.data.loaders import ArrayDataset, own_draws

F = v2.functional
COPIES = {  # the deterministic copies of an offline list
    "identity": lambda im: im,
    "hflip": F.horizontal_flip,
    "vflip": F.vertical_flip,
    "hvflip": lambda im: F.vertical_flip(F.horizontal_flip(im)),
    "rot90": lambda im: torch.rot90(im, 1, (-2, -1)),
    "rot180": lambda im: torch.rot90(im, 2, (-2, -1)),
    "rot270": lambda im: torch.rot90(im, 3, (-2, -1)),
}


def copies(offline: int | list[str], offline_random: int = 0) -> list[tuple[str, bool]]:
    """(fixed copy, augmented?) for each block of the enlarged set, in order."""
    if isinstance(offline, int):
        return [("identity", False)] + [("identity", True)] * (offline - 1)
    return [(name, r > 0) for name in offline for r in range(1 + offline_random)]


class OfflineAugmented(torch.utils.data.Dataset):
    def __init__(self, base: ArrayDataset, blocks: list[tuple[str, bool]], transform, seed: int):
        self.base, self.blocks, self.transform, self.seed = base, blocks, transform, seed
        self.labels = base.labels.repeat(len(blocks))

    def __len__(self) -> int:
        return len(self.base) * len(self.blocks)

    def __getitems__(self, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self.base)
        out = []
        with own_draws() as seed:
            for i, im in zip(idx, self.base.raw(np.asarray(idx) % n), strict=True):
                fixed, augmented = self.blocks[i // n]
                im = COPIES[fixed](im)
                if augmented and self.transform is not None:  # augment = ["none"] leaves nothing to do
                    seed(self.seed * 1_000_003 + i)  # the same in every epoch: the set is fixed
                    im = self.transform(im)
                out.append(self.base.crop(im))
        return torch.stack(out).contiguous(), self.labels[torch.as_tensor(idx)]

    def __getitem__(self, i: int):
        x, y = self.__getitems__([i])
        return x[0], y[0]
