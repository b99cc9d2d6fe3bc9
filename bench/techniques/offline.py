"""Offline augmentation (study 004): the training set enlarged to K times its size, fixed for the run.

Copy 0 is the original set; copies 1..K-1 hold every image augmented once. Each augmented image is drawn
from its own seed (cell seed, index), so the enlarged set is the same in every epoch and every run,
whatever the order or the worker that reads it. It is not held in memory (K copies of iNat at 224 px would
not fit): an augmented image is recomputed, identically, each time it is read, so the transform costs what
online augmentation costs per epoch.
"""

from __future__ import annotations

import numpy as np
import torch

from bench.data.loaders import ArrayDataset


class OfflineAugmented(torch.utils.data.Dataset):
    def __init__(self, base: ArrayDataset, copies: int, transform, seed: int):
        self.base, self.copies, self.transform, self.seed = base, copies, transform, seed
        self.labels = base.labels.repeat(copies)

    def __len__(self) -> int:
        return len(self.base) * self.copies

    def __getitems__(self, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self.base)
        out = []
        for i, im in zip(idx, self.base.raw(np.asarray(idx) % n), strict=True):
            if i >= n and self.transform is not None:  # augment = ["none"] leaves nothing to do
                with torch.random.fork_rng(devices=[]):  # a fixed draw per (seed, index), global RNG untouched
                    torch.manual_seed(self.seed * 1_000_003 + i)
                    im = self.transform(im)
            out.append(self.base.crop(im))
        return torch.stack(out).contiguous(), self.labels[torch.as_tensor(idx)]

    def __getitem__(self, i: int):
        x, y = self.__getitems__([i])
        return x[0], y[0]
