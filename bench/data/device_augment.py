"""train.augment_on = "device": each image's augmentation drawn in the loader, applied to the whole batch on
the training device.

The loader keeps only what needs the host. It draws each image's random parameters with the very torchvision
transforms of `train.augment`, seeded by (seed, epoch, place) as the loader's own path seeds them, so both
placements draw the same augmentations; the transforms run on a stand-in of the image's shape that holds no
pixels, their kernels replaced by a recorder. A leading random resized crop cuts the bytes it ships: each
image's crop window, packed back to back in one uint8 buffer (pinned on a GPU), with the draws beside it.

The device then replays the draws as batched tensor operations (`APPLY`, one entry per transform class):
torchvision's own kernels where images share a parameter (flips, grey, crops, the auto-augment ops grouped
by op and magnitude), torchvision's arithmetic with one factor per image for brightness, contrast and
saturation, kornia's kernels for hue and blur, one masked write for erasing, one grid and one sampling for
the affine warps (rotate, translate, zoom, scale); the random resized crops' windows resized as one batch
(`bench.data.windows`; image by image on a CPU, where that is faster). Pixels stay uint8 between ops, as
on the loader's path. timm's policy strings are PIL code and have no entry: they stay in the loader.
"""

from __future__ import annotations

import copy
import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from bench.data import device_decode, views, windows

# transform class -> apply(leaf, x: uint8 N x C x H x W on the device, params: one per image, None if skipped)
APPLY: dict[type, Callable[[Any, torch.Tensor, list], torch.Tensor]] = {}
CHUNK = 16  # images per batched op on a CPU: a whole batch's float temporaries would leave the caches
AUTO = (v2.RandAugment, v2.TrivialAugmentWide, v2.AutoAugment)  # whose draws are a list of (op, magnitude)


def applies(*kinds: type):
    def register(fn):
        for kind in kinds:
            APPLY[kind] = fn
        return fn
    return register


def leaves(transform) -> list:
    """The transforms that draw and change pixels, in the order they run: Compose and RandomApply opened
    (a RandomApply's coin decides whether its leaves record a draw)."""
    if isinstance(transform, v2.Compose | v2.RandomApply):
        return [leaf for t in transform.transforms for leaf in leaves(t)]
    return [transform]


def check(transform) -> None:
    """ValueError naming the first transform that has no batched form."""
    for leaf in leaves(transform) if transform is not None else []:
        if type(leaf) not in APPLY:
            known = sorted({k.__name__ for k in APPLY})
            raise ValueError(f"{leaf!r} has no batched form on the device (those that have: {', '.join(known)}); "
                             'set train.augment_on = "loader", or drop it from train.augment')
        if isinstance(leaf, v2.RandomResizedCrop) and (F.InterpolationMode(leaf.interpolation).value != "bilinear"
                                                       or not leaf.antialias):  # all bench.data.windows does
            raise ValueError(f"{leaf!r}: the device resizes crops bilinear and antialiased only; "
                             'set train.augment_on = "loader"')


def _stand_in(c: int, h: int, w: int) -> torch.Tensor:
    """A C x H x W uint8 tensor of no memory: every draw reads shapes only."""
    return torch.zeros((), dtype=torch.uint8).expand(c, h, w)


class Replay:
    """`transform`'s draws for one image at a time (`draw`), its leaves to apply them to a batch. The
    recording copy is built per process (a worker's own), not pickled."""

    def __init__(self, transform):
        check(transform)
        self.transform, self.leaves = transform, leaves(transform)
        self.whole = views.draws_whole(transform)  # the first leaf's crop window cuts what the loader ships
        self._recorder = None

    def __getstate__(self):
        return {**self.__dict__, "_recorder": None}

    def _record(self):
        recorder = copy.deepcopy(self.transform)
        slots: list = [None] * len(self.leaves)

        def recording(i: int, leaf):
            if isinstance(leaf, AUTO):
                def kernel(image, transform_id, magnitude, **_):
                    slots[i].append((transform_id, magnitude))
                    return image
                leaf._apply_image_or_video_transform = kernel
            else:
                size = leaf.size if isinstance(leaf, v2.RandomResizedCrop | v2.RandomCrop) else None

                def kernel(image, params):
                    # as arrays: a tensor per image would cross from a worker through a file descriptor of its own
                    slots[i] = {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in params.items()}
                    return image if size is None else _stand_in(image.shape[0], *size)
                leaf.transform = kernel

        for i, leaf in enumerate(leaves(recorder)):
            recording(i, leaf)
        self._recorder = (recorder, slots)

    def draw(self, shape: tuple[int, int, int]) -> list:
        """One image's draws, per leaf (None where a coin skipped it), for an H x W x C image; the global
        generator seeded by the caller."""
        if self._recorder is None:
            self._record()
        recorder, slots = self._recorder
        slots[:] = [[] if isinstance(leaf, AUTO) else None for leaf in self.leaves]
        h, w, c = shape
        recorder(_stand_in(c, h, w))
        return list(slots)

    def draws(self, shapes: list[tuple[int, int, int]], seeds: list[int], seed: Callable[[int], None]) -> list[list]:
        """Each image's draws for its H x W x C shape, `seed(s)` seeding the generators before each: per leaf,
        per image."""
        drawn = []
        for shape, s in zip(shapes, seeds, strict=True):
            seed(s)
            drawn.append(self.draw(shape))
        return [list(d) for d in zip(*drawn, strict=True)]


@dataclass
class Draws:
    """A batch whose augmentation (or decoding) the device does: `pixels` (N x C x H x W uint8; with `shapes`,
    each image's crop packed flat, back to back; with `lengths` too, each image's file as read, `shapes` its
    stored size) and each leaf's draws, one per image (none without a `replay`)."""
    pixels: torch.Tensor
    shapes: np.ndarray | None  # N x 2 (height, width) of the packed crops or stored images; None: stacked
    draws: list[list]  # per leaf, per image
    replay: Replay | None
    lengths: np.ndarray | None = None  # each file's bytes (data.decode = "device")
    view: tuple[int, int] = (0, 0)  # (image_size, its evaluation's scale), for decoded images
    orientations: np.ndarray | None = None  # each file's EXIF orientation (1: as stored)

    def __len__(self) -> int:
        return len(self.shapes) if self.shapes is not None else len(self.pixels)

    def pin_memory(self, device=None) -> Draws:  # the DataLoader's pinning thread calls it
        return replace(self, pixels=self.pixels.pin_memory())

    def apply(self, device: torch.device) -> torch.Tensor:
        """The augmented batch on `device`, uint8 N x C x H x W."""
        todo = list(zip(self.replay.leaves, self.draws, strict=True)) if self.replay is not None else []
        if self.lengths is not None:  # files: decoded, shrunk to their stored size, then cut as from the cache
            images = device_decode.decode(self.pixels, self.lengths, self.shapes, self.orientations, device)
            if todo and self.replay.whole:
                leaf, drawn = todo.pop(0)
                x = windows.cropped(images, _windows(drawn), tuple(leaf.size))
            else:
                x = torch.stack([views.evaluated_tensor(im, *self.view) for im in images])
            return self._replayed(x, todo)
        x = self.pixels.to(device, non_blocking=True)
        if self.shapes is not None:  # the crop windows of a leading random resized crop
            x = windows.packed(x, self.shapes, tuple(todo.pop(0)[0].size))
        return self._replayed(x, todo)

    @staticmethod
    def _replayed(x: torch.Tensor, todo: list) -> torch.Tensor:
        if not todo:
            return x
        step = CHUNK if x.device.type == "cpu" else max(1, len(x))
        parts = []
        for at in range(0, len(x), step):
            part = x[at:at + step]
            for leaf, params in todo:
                part = APPLY[type(leaf)](leaf, part, params[at:at + step])
            parts.append(part)
        return torch.cat(parts) if len(parts) > 1 else parts[0]


def gather(replay: Replay, images: list[np.ndarray], seeds: list[int], seed: Callable[[int], None],
           evaluated: Callable[[np.ndarray], np.ndarray]) -> Draws:
    """The loader's share: each image's draws (`seed(s)` seeds the generators), and its pixels: the crop
    window of a leading random resized crop, else the evaluation view."""
    starts = images if replay.whole else [evaluated(im) for im in images]
    per_leaf = replay.draws([im.shape for im in starts], seeds, seed)
    if not replay.whole:
        return Draws(views.batch(starts), None, per_leaf, replay)
    boxes = _windows(per_leaf[0])
    shapes = boxes[:, 2:]
    flat = np.empty(int(shapes.prod(1).sum()) * 3, dtype=np.uint8)
    at = 0
    for image, (top, left, h, w) in zip(images, boxes.tolist(), strict=True):
        flat[at:at + h * w * 3].reshape(h, w, 3)[...] = image[top:top + h, left:left + w]
        at += h * w * 3
    return Draws(torch.from_numpy(flat), shapes, per_leaf, replay)


def encoded(replay: Replay | None, files: list[np.ndarray], shapes: np.ndarray, seeds: list[int],
            seed: Callable[[int], None], view: tuple[int, int]) -> Draws:
    """data.decode = "device": each file's bytes as read, its EXIF orientation, and (with a `replay`) each
    image's draws, taken on its stored shape (a leading random resized crop) or the evaluation view's."""
    per_leaf = [] if replay is None else replay.draws(
        [(h, w, 3) if replay.whole else (view[0], view[0], 3) for h, w in shapes.tolist()], seeds, seed)
    lengths = np.array([len(f) for f in files], dtype=np.int64)
    flat = np.concatenate(files) if files else np.empty(0, dtype=np.uint8)
    return Draws(torch.from_numpy(flat), shapes, per_leaf, replay, lengths, view,
                 np.array([device_decode.orientation(f) for f in files], dtype=np.int64))


# ------------------------------------------------------------------------------------------ batched kernels
def _index(members: list[int], x: torch.Tensor) -> torch.Tensor:
    """These images' indices, on x's device."""
    return windows.sent(np.array(members, dtype=np.int64), x.device)


def _chosen(x: torch.Tensor, params: list) -> torch.Tensor:
    """Indices (on x's device) of the images whose coin applied the leaf."""
    return _index([n for n, p in enumerate(params) if p is not None], x)


def _on(x: torch.Tensor, idx: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    if len(idx) == len(x):
        return fn(x)
    if len(idx):
        x = x.clone()
        x[idx] = fn(x[idx])
    return x


@applies(v2.RandomHorizontalFlip, v2.RandomVerticalFlip, v2.RandomGrayscale)
def _shared(leaf, x, params):
    """Ops whose parameters every image shares (a coin decides only whether): the leaf's own kernel, once,
    on the images it applies to."""
    drawn = next((p for p in params if p is not None), None)
    return x if drawn is None else _on(x, _chosen(x, params), lambda im: leaf.transform(im, drawn))


@applies(v2.RandomCrop)
def _crop(leaf, x, params):
    first = params[0]  # every image has the batch's size, so the padding is the same for all
    x = leaf.transform(x, {**first, "needs_crop": False})  # the leaf's own padding, the batch at once
    if not first["needs_crop"]:
        return x
    return torch.stack([x[n, :, p["top"]:p["top"] + p["height"], p["left"]:p["left"] + p["width"]]
                        for n, p in enumerate(params)])


def _each(leaf, x, params):
    """The leaf's own kernel, image by image, on the device (erasing's noise back to the tensor the recorder
    made an array): erasing with noise, and warps the batched form does not take."""
    def own(p: dict) -> dict:
        return {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in p.items()}
    return torch.stack([im if p is None else leaf.transform(im, own(p)) for im, p in zip(x, params, strict=True)])


@applies(v2.RandomRotation, v2.RandomAffine)
def _warp(leaf, x, params):
    """Each image its own rotation or affine map (rotate, translate, zoom, scale): torchvision's inverse
    matrix per image, then one grid (torch's affine_grid) and one nearest-neighbour sampling for the batch,
    black past the edges; torchvision builds the same grid in pixels, image by image. Other samplings, fills,
    centres or an expanding rotation: image by image."""
    from torchvision.transforms.v2.functional._geometry import _get_inverse_affine_matrix

    rotation = isinstance(leaf, v2.RandomRotation)
    if (F.InterpolationMode(leaf.interpolation).value != "nearest" or leaf.center is not None
            or any(np.any(v) for v in leaf._fill.values())
            or getattr(leaf, "expand", False)):
        return _each(leaf, x, params)
    h, w = x.shape[-2:]
    theta = np.tile(np.array([[1.0, 0, 0], [0, 1.0, 0]]), (len(x), 1, 1))  # a skipped image stays
    for n, p in enumerate(params):
        if p is not None:  # a rotation is torchvision's affine map of the opposite turn
            m = {"angle": -(p["angle"] % 360), "translate": (0, 0), "scale": 1.0, "shear": (0, 0)} if rotation else p
            theta[n] = np.reshape(_get_inverse_affine_matrix([0.0, 0.0], m["angle"], [float(t) for t in m["translate"]],
                                                             m["scale"], [float(s) for s in m["shear"]]), (2, 3))
    # pixels about the centre -> torch's coordinates, -1..1 over the image
    theta *= np.array([[1.0, h / w, 2 / w], [w / h, 1.0, 2 / h]])
    grid = torch.nn.functional.affine_grid(windows.sent(theta.astype(np.float32), x.device),
                                           [len(x), x.shape[1], h, w], align_corners=False)
    warped = torch.nn.functional.grid_sample(x.float(), grid, mode="nearest", padding_mode="zeros",
                                             align_corners=False)
    return warped.to(torch.uint8)  # nearest: each value a pixel's own, whole


def _windows(params: list) -> np.ndarray:
    """Random resized crops' draws as N x (top, left, height, width)."""
    return np.array([(p["top"], p["left"], p["height"], p["width"]) for p in params], dtype=np.int64).reshape(-1, 4)


@applies(v2.RandomResizedCrop)
def _resized_crop(leaf, x, params):
    """A random resized crop that does not lead: each image's window, the batch resized at once (an image a
    coin skipped keeps its size, which must be the crop's)."""
    boxes = _windows([p for p in params if p is not None])
    return _on(x, _chosen(x, params), lambda chosen: windows.cropped(chosen, boxes, tuple(leaf.size)))


@applies(v2.RandomErasing)
def _erase(leaf, x, params):
    """Each image its own rectangle set to one value per channel: one masked write for the batch (noise,
    value = "random", has each rectangle's own shape: image by image)."""
    if leaf.value is None:
        return _each(leaf, x, params)
    boxes = np.zeros((len(x), 4), dtype=np.int64)  # top, bottom, left, right: empty where nothing is erased
    values = np.zeros((len(x), x.shape[1], 1, 1), dtype=np.float32)
    for n, p in enumerate(params):
        if p is not None and p["v"] is not None:
            boxes[n] = p["i"], p["i"] + p["h"], p["j"], p["j"] + p["w"]
            values[n] = p["v"]
    box = windows.sent(boxes, x.device)
    rows, columns = (torch.arange(n, device=x.device) for n in x.shape[-2:])
    inside = (((rows >= box[:, :1]) & (rows < box[:, 1:2]))[:, :, None]
              & ((columns >= box[:, 2:3]) & (columns < box[:, 3:]))[:, None, :])
    # the value cast to uint8 as torchvision's write into a uint8 image casts it
    return torch.where(inside[:, None], windows.sent(torch.from_numpy(values).to(x.dtype), x.device), x)


def _weights(x: torch.Tensor, factor: np.ndarray) -> torch.Tensor:
    return windows.sent(np.asarray(factor, dtype=np.float32), x.device).view(-1, 1, 1, 1)


def _blend(x: torch.Tensor, other: torch.Tensor | float, factor: np.ndarray) -> torch.Tensor:
    """torchvision's blend of uint8 images (factor x image + (1 - factor) x other, truncated back to uint8),
    with one factor per image: its kernels take one per call. 1 - factor in float64, as torchvision's."""
    out = x.mul(_weights(x, factor))
    if not isinstance(other, float):  # one fused multiply-add, as torchvision's add_(other, alpha=1 - factor)
        out = torch.addcmul(out, other, _weights(x, 1 - factor))
    return out.clamp_(0, 255).to(torch.uint8)


def _hue(x: torch.Tensor, factor: np.ndarray) -> torch.Tensor:
    import kornia.enhance

    turn = _weights(x, factor).flatten() * 2 * math.pi  # kornia's hue is an angle, torchvision's a turn
    shifted = kornia.enhance.adjust_hue(F.to_dtype(x, torch.float32, scale=True), turn)
    return F.to_dtype(shifted.clamp_(0, 1), torch.uint8, scale=True)


JITTER = [("brightness_factor", lambda x, f: _blend(x, 0.0, f)),
          ("contrast_factor", lambda x, f: _blend(x, F.rgb_to_grayscale(x).float().mean((1, 2, 3), keepdim=True), f)),
          ("saturation_factor", lambda x, f: _blend(x, F.rgb_to_grayscale(x).float(), f)),
          ("hue_factor", _hue)]  # in the order of torchvision's fn_idx


@applies(v2.ColorJitter)
def _jitter(leaf, x, params):
    """torchvision's draws (each image its own order of the four adjustments, and its own factors) and its
    uint8 arithmetic (the grey of a uint8 image truncated, each adjustment truncated back to uint8), one
    factor per image; the hue through kornia's, which takes one per image too."""
    drawn = next((p for p in params if p is not None), None)
    if drawn is None:
        return x
    # an image whose coin skipped the leaf (a RandomApply around it) takes part in no slot
    order = np.stack([p["fn_idx"] if p is not None else np.full_like(drawn["fn_idx"], -1) for p in params])
    x = x.clone()
    for slot in range(order.shape[1]):
        for fn_id, (key, kernel) in enumerate(JITTER):
            members = np.flatnonzero(order[:, slot] == fn_id).tolist()
            if drawn[key] is None or not members:
                continue
            factors = np.array([params[n][key] for n in members], dtype=np.float64)
            idx = _index(members, x)
            x[idx] = kernel(x[idx], factors)
    return x


@applies(v2.GaussianBlur)
def _blur(leaf, x, params):
    """Each image its own sigma (kornia's blur takes one per image), reflected edges and rounding as
    torchvision's."""
    from kornia.filters import gaussian_blur2d

    idx = _chosen(x, params)
    sigma = windows.sent(np.array([p["sigma"] for p in params if p is not None], dtype=np.float32), x.device)

    def blur(im: torch.Tensor) -> torch.Tensor:
        out = gaussian_blur2d(im.float(), tuple(leaf.kernel_size[::-1]), sigma.flip(1), border_type="reflect")
        return out.round_().clamp_(0, 255).to(torch.uint8)
    return _on(x, idx, blur)


@applies(*AUTO)
def _auto(leaf, x, params):
    """Round r applies each image's r-th op; images that drew the same op and magnitude go as one batch
    through torchvision's own op."""
    x = x.clone()
    for r in range(max(map(len, params), default=0)):
        groups: dict[tuple, list[int]] = defaultdict(list)
        for n, ops in enumerate(params):
            if r < len(ops):
                groups[ops[r]].append(n)
        for (transform_id, magnitude), members in groups.items():
            idx = _index(members, x)
            x[idx] = leaf._apply_image_or_video_transform(x[idx], transform_id, magnitude,
                                                          interpolation=leaf.interpolation, fill=leaf._fill)
    return x
