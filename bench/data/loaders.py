"""Batches straight from the decoded cache: each image a slice of one uint8 memmap, cropped to its view.

Datasets implement `__getitems__`, so the DataLoader asks for a whole batch at once instead of N single
items plus a collate. Pixels stay uint8 until they reach the device, where Preprocess normalises them: 4x
fewer bytes through the loader and the host-to-device copy.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler

from bench import distributed
from bench.data import views

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_MASK = 2**63 - 1


def draw_seed(*parts: int) -> int:
    """One draw's seed from (seed, epoch, place in the epoch, view): each part folded in through splitmix64's
    finaliser, so that neighbouring parts give unrelated seeds (torch's CPU generator keeps their low 32 bits),
    in microseconds where a hash of a tuple would not be stable across processes."""
    x = 0
    for part in parts:
        x = (x ^ part) + 0x9E3779B97F4A7C15 & _MASK
        x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & _MASK
        x = (x ^ (x >> 27)) * 0x94D049BB133111EB & _MASK
        x ^= x >> 31
    return x


@contextlib.contextmanager
def own_draws() -> Iterator[Callable[[int], None]]:
    """The global generators an augmentation draws from — torch's CPU one (the v2 ops), Python's and numpy's
    (timm's policy strings) — lent out to be seeded image by image (`seed(s)`), and restored after, so that
    what an image gets depends on its seed alone, not on the process, worker or images before it."""
    saved = torch.default_generator.get_state(), random.getstate(), np.random.get_state()

    def seed(s: int) -> None:
        torch.default_generator.manual_seed(s)  # torch.manual_seed would seed every device too: 100x slower
        random.seed(s)
        np.random.seed(s % 2**32)

    try:
        yield seed
    finally:
        torch.default_generator.set_state(saved[0])
        random.setstate(saved[1])
        np.random.set_state(saved[2])


class Numbered(Sampler):
    """The indices another sampler draws, each with its epoch and its place in the epoch's draws: an augmented
    dataset seeds each draw by them, so an image drawn twice in one epoch (the balanced and square-root
    samplers draw with replacement) gets two augmentations, and the sampler, run in the main process, decides
    them whatever the worker that loads them — a persistent worker too, since the epoch travels with the
    index (`set_epoch` before each epoch)."""

    def __init__(self, base: Sampler):
        self.base, self.epoch = base, 0
        self.generator = getattr(base, "generator", None)  # what a checkpoint saves of the sampler's draws

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        return ((self.epoch, place, i) for place, i in enumerate(self.base))

    def __len__(self) -> int:
        return len(self.base)


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """The epoch a training loader's Numbered sampler hands its draws (directly, or under a rank's batches)."""
    for sampler in (loader.sampler, getattr(loader.batch_sampler, "sampler", None)):
        if isinstance(sampler, Numbered):
            sampler.set_epoch(epoch)
    if loader.persistent_workers and loader._iterator is not None:
        # A new epoch's iterator draws its workers' base seed from the loader's generator before the shuffle
        # does; a persistent loader's reused one does not. Drawn here, so that the order (the same generator's
        # next draws) is the one of every worker count, and of a resumed run, whose first iterator is new.
        torch.empty((), dtype=torch.int64).random_(generator=loader.generator)


def _places(items: list) -> tuple[list[int], list[int], list[int]]:
    """(indices, places in the epoch, epochs) of what a Numbered sampler gave, or of plain indices (their
    own places, epoch 0)."""
    if items and isinstance(items[0], tuple):
        epochs, places, idx = zip(*items, strict=True)
        return list(idx), list(places), list(epochs)
    return list(items), list(items), [0] * len(items)


class ArrayDataset(Dataset):
    """A split's images from the decoded cache (whole images, bench.data.views says what a model sees of
    them); a training split's `transform` draws each image's augmentation from (seed, epoch, place in the
    epoch's draws, view) alone (a Numbered sampler gives the epoch and the place), so neither the worker
    count nor a resume changes a bit of it."""

    def __init__(self, folder: Path | None, rows: np.ndarray, labels: np.ndarray, size: int, scale: int,
                 transform=None, seed: int = 0):
        self.folder, self.rows, self.size, self.scale = folder, np.asarray(rows), size, scale
        self.transform, self.seed = transform, seed
        self.whole = transform is not None and views.draws_whole(transform)  # decided once, not per image
        self.replay = None  # train.augment_on = "device": a device_augment.Replay of `transform` (on_device)
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
        self._pixels = self._index = None

    def _open(self) -> None:
        if self._pixels is None:  # opened lazily, so worker processes map the file instead of copying it
            # plain arrays over the mapped files: slicing a memmap object costs more than copying a small image
            self._pixels = np.load(self.folder / "pixels.npy", mmap_mode="r").view(np.ndarray)
            self._index = np.load(self.folder / "index.npy", mmap_mode="r").view(np.ndarray)

    def __getstate__(self):
        return {**self.__dict__, "_pixels": None, "_index": None}

    def __len__(self) -> int:
        return len(self.rows)

    def stored(self, row: int) -> np.ndarray:
        """Cache row `row` as stored: H x W x 3 uint8, whole, a view into the cache."""
        self._open()
        offset, h, w = self._index[row]
        return self._pixels[offset:offset + h * w * 3].reshape(h, w, 3)

    def evaluated(self, image: np.ndarray) -> np.ndarray:
        return views.evaluation(image, self.size, self.scale)

    def trained(self, image: np.ndarray, transform, whole: bool) -> torch.Tensor:
        """One training view: `transform` on the whole image when it opens with a random resized crop (`whole`,
        views.draws_whole), on the evaluation view otherwise; the global generators seeded by the caller."""
        return transform(views.tensor(image if whole else self.evaluated(image)))

    def on_device(self) -> None:
        """Leave the augmentation's pixels to the training device: batches become device_augment.Draws."""
        from bench.data.device_augment import Replay

        self.replay = Replay(self.transform) if self.transform is not None else None

    splits = 1  # > 1 (train.aug_splits): the batch holds each image clean, then splits - 1 augmented views

    def seeds(self, places: list[int], epochs: list[int], view: int = 0) -> list[int]:
        """Each draw's seed, from (seed, epoch, place in the epoch's draws, view) alone."""
        return [draw_seed(self.seed, int(epoch), int(place), view) for place, epoch in zip(places, epochs, strict=True)]

    def augmented(self, images: list[np.ndarray], places: list[int], epochs: list[int], view: int = 0) -> torch.Tensor:
        with own_draws() as seed:
            out = []
            for im, s in zip(images, self.seeds(places, epochs, view), strict=True):
                seed(s)
                out.append(self.trained(im, self.transform, self.whole))
        return torch.stack(out)

    def __getitems__(self, items: list) -> tuple[torch.Tensor, torch.Tensor]:
        idx, places, epochs = _places(items)
        images = [self.stored(r) for r in self.rows[np.asarray(idx)]]
        y = self.labels[torch.as_tensor(idx)]
        if self.splits > 1:  # timm's AugMixDataset + fast_collate layout: [clean..., view 1..., view 2...]
            views_ = [views.batch([self.evaluated(im) for im in images])]
            views_ += [self.augmented(images, places, epochs, v) for v in range(1, self.splits)]
            return torch.cat(views_).contiguous(), y.repeat(self.splits)
        if self.replay is not None:
            from bench.data.device_augment import gather

            with own_draws() as seed:
                return gather(self.replay, images, self.seeds(places, epochs), seed, self.evaluated), y
        if self.transform is not None:
            return self.augmented(images, places, epochs).contiguous(), y
        return views.batch([self.evaluated(im) for im in images]), y

    def __getitem__(self, i: int):
        x, y = self.__getitems__([i])
        return x[0], y[0]


class FileDataset(ArrayDataset):
    """data.cache = "none": a split's images decoded from their files whenever a batch needs them, to the
    pixels the decoded cache would hold (bench.data.cache.load_image: reduced-scale JPEG decoding, whole,
    the shorter side to `stored`); everything after is ArrayDataset's. With `shapes` (data.decode =
    "device": each row's stored height and width) a batch is its files' bytes, decoded on the training
    device (device_augment.Draws). With `stats` (each row's file's size and mtime, as listed) a file that
    changed since is a one-line error (bench.data.listing.opened), not other pixels."""

    def __init__(self, files: list[str], stored: int, rows: np.ndarray, labels: np.ndarray, size: int, scale: int,
                 transform=None, seed: int = 0, shapes: np.ndarray | None = None, stats: np.ndarray | None = None):
        super().__init__(None, rows, labels, size, scale, transform, seed)
        self.files, self.stored_size, self.shapes, self.stats = files, stored, shapes, stats

    def _opened(self, row: int):
        from bench.data.listing import opened

        return opened(self.files[row], None if self.stats is None else self.stats[row])

    def stored(self, row: int) -> np.ndarray:
        from bench.data.cache import load_image

        with self._opened(row) as f:
            return load_image(f, self.stored_size)

    def __getitems__(self, items: list):
        if self.shapes is None:
            return super().__getitems__(items)
        from bench.data.device_augment import encoded

        idx, places, epochs = _places(items)
        rows = self.rows[np.asarray(idx)]
        files = []
        for r in rows:
            with self._opened(r) as f:
                files.append(np.frombuffer(f.read(), dtype=np.uint8))
        with own_draws() as seed:
            draws = encoded(self.replay, files, self.shapes[rows], self.seeds(places, epochs), seed,
                            (self.size, self.scale))
        return draws, self.labels[torch.as_tensor(idx)]


def _whole_batch(batch):
    return batch


def make_loader(ds: Dataset, batch_size: int, *, train: bool, seed: int, workers: int = 0,
                sampler=None, pin: bool = False) -> DataLoader:
    """Shuffled from `seed` for training (or drawn by `sampler`), in order for evaluation. Workers persist
    from epoch to epoch (the epoch travels with each index); `pin`: batches in pinned memory, so that the
    copy to a GPU is asynchronous."""
    common = {"generator": torch.Generator().manual_seed(seed), "num_workers": workers, "collate_fn": _whole_batch,
              "persistent_workers": workers > 0, "pin_memory": pin}
    generator = common["generator"]
    if train and isinstance(ds, ArrayDataset) and ds.transform is not None:  # each draw seeded by its place
        sampler = Numbered(sampler if sampler is not None else RandomSampler(ds, generator=generator))
    if distributed.world() > 1:  # a rank of a cell: its share of every global batch, its shard of a split
        if not train:
            sampler = distributed.eval_shard(len(ds))
        else:
            drawn = sampler if sampler is not None else RandomSampler(ds, generator=generator)
            batches = distributed.RankBatches(drawn, batch_size, distributed.rank(), distributed.world())
            return DataLoader(ds, batch_sampler=batches, **common)
    # the order comes from `generator`, which a checkpoint restores
    return DataLoader(ds, batch_size=batch_size, shuffle=train and sampler is None, sampler=sampler, **common)


class Preprocess:
    """uint8 NCHW batch -> normalised float on the device; done there so the loader ships 4x fewer bytes.
    Float batches pass through to the device unchanged; a batch whose augmentation the device applies
    (device_augment.Draws) is augmented there first."""

    def __init__(self, device: torch.device, channels_last: bool = False):
        self.device, self.channels_last = device, channels_last
        self.mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1) * 255

    def __call__(self, x) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            x = x.apply(self.device)
        if x.dtype != torch.uint8:  # already model inputs: cached features (model.freeze = "features")
            return x.to(self.device, non_blocking=True)
        x = (x.to(self.device, non_blocking=True).float() - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x
