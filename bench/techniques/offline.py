"""Offline augmentation (study 004): the training set enlarged K times once, then reused every epoch.

Copy 0 is the original set; copies 1..K-1 hold every image augmented once. Each augmented image is
drawn from its own seed (cell seed, copy, index), so the enlarged set is fixed: the same in every epoch
and every run, whatever the order or the worker that reads it. Images are augmented when first read
and not kept in memory: the cost is the transform, not K times the RAM.
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
        n, size = len(self.base), self.base.size
        idx_t = torch.as_tensor(idx)
        rows = self.base.rows[np.asarray(idx) % n]
        raw = torch.from_numpy(np.ascontiguousarray(self.base.images[rows])).permute(0, 3, 1, 2)
        out = []
        for i, im in zip(idx, raw, strict=True):
            if i >= n and self.transform is not None:
                with torch.random.fork_rng(devices=[]):  # a fixed draw per (seed, index), global RNG untouched
                    torch.manual_seed(self.seed * 1_000_003 + i)
                    im = self.transform(im)
            if im.shape[-1] > size:
                o = (im.shape[-1] - size) // 2
                im = im[..., o:o + size, o:o + size]
            out.append(im)
        return torch.stack(out).contiguous(), self.labels[idx_t]

    def __getitem__(self, i: int):
        x, y = self.__getitems__([i])
        return x[0], y[0]
