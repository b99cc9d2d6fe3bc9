"""Windows of images, each of its own size, resized to one size as one batch on an accelerator: the random
resized crop of train.augment_on = "device" (bilinear, antialiased: torchvision's default and bench's).

torch resizes one shape per call, so a batch of crop windows costs a resize (four kernels: to float, the
filter, round, back to uint8) per image; on a GPU those launches, not the arithmetic, are the cost. Here the
whole batch is two gathers of weighted taps, one per axis, with the very weights of torch's antialiased
bilinear filter (a triangle widened by the shrink factor, clipped at the window's edges, normalised), and
torchvision's rounding of a uint8 image resized in floats, which is what its resize does on a GPU. On a CPU
torchvision's uint8 kernel stays, image by image: it is many times faster than gathers there
(`benchmarks/test_device_augment.py`), and it keeps the device's pixels the loader's, bit for bit.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torchvision.transforms.v2 import functional as F

PER_IMAGE_ON = ("cpu",)  # device types where each window is resized alone, by torchvision's uint8 kernel
# (window, row, output column) places of the first pass per chunk, about 23 bytes each at the peak (its
# three floats, a tap's int64 index and its three pixels): 16.8 M, 385 MB, a batch of 256 crops of 256 px
BUDGET = 1 << 24


def sent(array: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host array on `device`, the host not waiting for the work queued there: CUDA stages pageable
    memory before the call returns, so the copy need not be blocking (elsewhere it is)."""
    tensor = array if isinstance(array, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(array))
    return tensor.to(device, non_blocking=device.type == "cuda")


def taps(length: torch.Tensor, out: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For windows `length` long resized to `out`: each output pixel's `count` taps, as indices into its
    window (N x out x count int64) and weights (float32, zero past the window's end, where the index repeats
    its last pixel). torch's antialiased bilinear filter: support and width scale with the shrink factor
    (never below one pixel), the window's edges clip the taps, the weights are normalised to sum to one."""
    length = length.to(torch.float32)[:, None]
    scale = length / out
    support = scale.clamp(min=1.0)
    center = scale * (torch.arange(out, device=length.device, dtype=torch.float32) + 0.5)
    first = (center - support + 0.5).trunc().clamp(min=0)
    end = torch.minimum((center + support + 0.5).trunc(), length)
    at = first[..., None] + torch.arange(count, device=length.device, dtype=torch.float32)
    weight = (1 - ((at - center[..., None] + 0.5) / support[..., None]).abs()).clamp(min=0)
    weight = torch.where(at < end[..., None], weight, 0.0)
    return torch.minimum(at, length[..., None] - 1).long(), weight / weight.sum(-1, keepdim=True)


def _count(longest: int, out: int) -> int:
    """Taps enough for any window up to `longest` resized to `out` (the filter spans 2 x support + 1)."""
    return math.ceil(2 * max(longest / out, 1.0)) + 1


def packed(flat: torch.Tensor, shapes: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """Windows packed back to back, each H x W x 3, in a flat uint8 buffer: resized, N x 3 x H x W."""
    starts = _starts(shapes)
    if flat.device.type in PER_IMAGE_ON:
        images = [flat[3 * at:3 * (at + h * w)].view(h, w, 3).permute(2, 0, 1)
                  for at, (h, w) in zip(starts.tolist(), shapes.tolist(), strict=True)]
        return cropped(images, np.concatenate([np.zeros_like(shapes), shapes], axis=1), size)
    return _resized(flat.view(-1, 3), starts, shapes[:, 1], shapes, size)


def cropped(images: torch.Tensor | list[torch.Tensor], boxes: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """Each C x H x W image's window (`boxes`: N x (top, left, height, width)) resized: N x C x H x W.
    `images` a batch (N x C x H x W) or a list of images each of its own size."""
    if images[0].device.type in PER_IMAGE_ON:
        return torch.stack([F.resized_crop(im, *box, list(size))
                            for im, box in zip(images, boxes.tolist(), strict=True)])
    if isinstance(images, list):
        shapes = np.array([im.shape[-2:] for im in images], dtype=np.int64)
        widths, starts = shapes[:, 1], _starts(shapes)
        # every image's channel planes end to end, one copy for the batch: pixel p's channel c at p + c x P
        pixels = torch.cat([im.flatten(1) for im in images], dim=1).T
    else:
        n, c, h, w = images.shape
        widths = np.full(n, w, dtype=np.int64)
        pixels = images.permute(0, 2, 3, 1).reshape(-1, c)  # one copy, channels last
        starts = np.arange(n, dtype=np.int64) * h * w
    return _resized(pixels, starts + boxes[:, 0] * widths + boxes[:, 1], widths, boxes[:, 2:], size)


def _starts(shapes: np.ndarray) -> np.ndarray:
    """The first pixel of each of images laid end to end, `shapes` their (height, width)."""
    return np.concatenate([[0], np.cumsum(shapes.prod(1))[:-1]]).astype(np.int64)


def _resized(pixels: torch.Tensor, base: np.ndarray, row: np.ndarray, shapes: np.ndarray,
             size: tuple[int, int]) -> torch.Tensor:
    """N windows resized to `size` on an accelerator, N x C x H x W uint8, in chunks of BUDGET. `pixels`
    is a P x C view of the images; window n starts at pixel `base[n]`, its image's rows are `row[n]` pixels
    apart, and it is `shapes[n]` (height, width)."""
    step = max(1, BUDGET // max(1, int(shapes[:, 0].max()) * size[1]))
    return torch.cat([_gathered(pixels, base[at:at + step], row[at:at + step], shapes[at:at + step], size)
                      for at in range(0, len(base), step)])


def _gathered(pixels, base, row, shapes, size):
    (oh, ow), device, n = size, pixels.device, len(base)
    hmax = int(shapes[:, 0].max())
    h, w, base, row = sent(np.stack([shapes[:, 0], shapes[:, 1], base, row]), device)
    xs, wx = taps(w, ow, _count(int(shapes[:, 1].max()), ow))
    ys, wy = taps(h, oh, _count(hmax, oh))
    # across first, as torch's filter runs: every row of each window (rows past its height repeat its last)
    rows = torch.arange(hmax, device=device).minimum(h[:, None] - 1)[..., None]
    rows = base[:, None, None] + rows * row[:, None, None]
    across = torch.zeros(n, hmax, ow, pixels.shape[1], device=device)
    for t in range(wx.shape[-1]):
        across.addcmul_(pixels[rows + xs[:, None, :, t]], wx[:, None, :, t, None])  # uint8 read as float
    images, columns = torch.arange(n, device=device)[:, None, None], torch.arange(ow, device=device)
    out = torch.zeros(n, oh, ow, pixels.shape[1], device=device)
    for t in range(wy.shape[-1]):
        out.addcmul_(across[images, ys[:, :, t, None], columns], wy[:, :, t, None, None])
    return out.round_().clamp_(0, 255).to(torch.uint8).permute(0, 3, 1, 2).contiguous()
