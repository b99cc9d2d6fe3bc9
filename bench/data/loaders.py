"""Batches straight from the decoded cache: a batch is one fancy-index into a uint8 memmap.

Datasets implement `__getitems__`, so the DataLoader asks for a whole batch at once instead of N single
items plus a collate. Pixels stay uint8 until they reach the device, where Preprocess normalises them: 4x
fewer bytes through the loader and the host-to-device copy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class ArrayDataset(Dataset):
    def __init__(self, file: Path, rows: np.ndarray, labels: np.ndarray, size: int, transform=None):
        self.file, self.rows, self.size, self.transform = Path(file), np.asarray(rows), size, transform
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
        self._images = None

    @property
    def images(self) -> np.ndarray:
        if self._images is None:  # opened lazily, so worker processes map the file instead of copying it
            self._images = np.load(self.file, mmap_mode="r")
        return self._images

    def __getstate__(self):
        return {**self.__dict__, "_images": None}

    def __len__(self) -> int:
        return len(self.rows)

    def raw(self, idx) -> torch.Tensor:
        """Images `idx` as stored: uint8, N x C x S x S, S = the cache's side."""
        return torch.from_numpy(np.ascontiguousarray(self.images[self.rows[np.asarray(idx)]])).permute(0, 3, 1, 2)

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        """Centre crop to the model's size whatever a transform left of a larger stored image (C x H x W or
        N x C x H x W)."""
        if x.shape[-1] > self.size:
            o = (x.shape[-1] - self.size) // 2
            x = x[..., o:o + self.size, o:o + self.size]
        return x

    splits = 1  # > 1 (train.aug_splits): the batch holds each image clean, then splits - 1 augmented views

    def __getitems__(self, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.raw(idx)
        y = self.labels[torch.as_tensor(idx)]
        if self.splits > 1:  # timm's AugMixDataset + fast_collate layout: [clean..., view 1..., view 2...]
            views = [self.crop(x)] + [self.crop(torch.stack([self.transform(im) for im in x]))
                                      for _ in range(self.splits - 1)]
            return torch.cat(views).contiguous(), y.repeat(self.splits)
        if self.transform is not None:
            x = torch.stack([self.transform(im) for im in x])
        return self.crop(x).contiguous(), y

    def __getitem__(self, i: int):
        x, y = self.__getitems__([i])
        return x[0], y[0]


def _whole_batch(batch):
    return batch


def make_loader(ds: Dataset, batch_size: int, *, train: bool, seed: int, workers: int = 0,
                sampler=None) -> DataLoader:
    """Shuffled from `seed` for training (or drawn by `sampler`), in order for evaluation."""
    generator = torch.Generator().manual_seed(seed)
    # Training workers start afresh each epoch, seeded from `generator`: an epoch's augmentation then depends
    # on the generator's state alone, which a checkpoint restores (persistent workers would carry theirs).
    return DataLoader(ds, batch_size=batch_size, shuffle=train and sampler is None, sampler=sampler,
                      generator=generator, num_workers=workers, collate_fn=_whole_batch,
                      persistent_workers=workers > 0 and not train)


class Preprocess:
    """uint8 NCHW batch -> normalised float on the device; done there so the loader ships 4x fewer bytes.
    Float batches pass through to the device unchanged."""

    def __init__(self, device: torch.device, channels_last: bool = False):
        self.device, self.channels_last = device, channels_last
        self.mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1) * 255

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.uint8:  # already model inputs: cached features (model.freeze = "features")
            return x.to(self.device, non_blocking=True)
        x = (x.to(self.device, non_blocking=True).float() - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x
