"""Random resized crops' windows resized as one batch (bench.data.windows): torch's own filter weights, the
pixels of torchvision's resize in floats (what it does on a GPU) within rounding, every way a batch's
windows arrive, and the device's augmentation through them against the loader's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as tnf
from torchvision.transforms.v2 import functional as F

from bench.data import windows

RNG = np.random.default_rng(5)
# sides from 1 px to 4x the output's, and windows of every shape inside them
IMAGES = [torch.from_numpy(RNG.integers(0, 256, (3, h, w), dtype=np.uint8))
          for h, w in [(1, 1), (1, 90), (90, 1), (17, 23), (56, 64), (64, 56), (120, 90), (224, 250), (240, 30)]]
BOXES = np.array([(0, 0, 1, 1), (0, 3, 1, 80), (5, 0, 80, 1), (2, 1, 15, 20), (0, 0, 56, 64), (10, 7, 40, 30),
                  (3, 4, 117, 86), (0, 0, 224, 250), (13, 2, 220, 28)], dtype=np.int64)
SIZE = (56, 48)


@pytest.fixture
def batched(monkeypatch):
    """The accelerators' path, on the CPU."""
    monkeypatch.setattr(windows, "PER_IMAGE_ON", ())


def _torch_weights(length: int, out: int) -> torch.Tensor:
    """out x length: torch's antialiased bilinear resize of each unit row (a wide one: torch takes a shortcut
    for one-pixel-wide images)."""
    unit = torch.eye(length).view(1, length, 1, length).expand(1, length, 2, length).contiguous()
    return tnf.interpolate(unit, size=(2, out), mode="bilinear", antialias=True, align_corners=False)[0, :, 0].T


@pytest.mark.parametrize("out", [7, 56, 224])
def test_the_taps_are_torchs_own_filter_weights(out):
    lengths = sorted({1, 2, out - 1, out, out + 1, 2 * out, 4 * out + 3, *range(3, 5 * out, max(1, out // 3))})
    index, weight = windows.taps(torch.tensor(lengths), out, windows._count(max(lengths), out))
    for n, length in enumerate(lengths):
        dense = torch.zeros(out, length)
        dense.scatter_add_(1, index[n], weight[n])
        assert index[n].max() < length, f"a tap past the window's end ({length} -> {out})"
        assert torch.allclose(dense, _torch_weights(length, out), atol=1e-6), (length, out)


def _expected(images, boxes, uint8: bool) -> torch.Tensor:
    def one(im, box):
        if uint8:  # the CPU's uint8 kernel
            return F.resized_crop(im, *box, list(SIZE))
        return F.resized_crop(im.float(), *box, list(SIZE)).round_().clamp_(0, 255).to(torch.uint8)
    return torch.stack([one(im, box) for im, box in zip(images, boxes.tolist(), strict=True)])


def _same_size(boxes):
    """The images at one size and the boxes kept inside it, as a stacked batch gets them."""
    h, w = 60, 70
    batch = torch.stack([F.resize(im, [h, w]) for im in IMAGES])
    top, left = np.minimum(boxes[:, 0], h - 1), np.minimum(boxes[:, 1], w - 1)
    return batch, np.stack([top, left, np.minimum(boxes[:, 2], h - top), np.minimum(boxes[:, 3], w - left)], 1)


def _packed(images, boxes) -> torch.Tensor:
    return torch.cat([im[:, top:top + h, left:left + w].permute(1, 2, 0).reshape(-1)
                      for im, (top, left, h, w) in zip(images, boxes.tolist(), strict=True)])


def _decoded(device):
    return windows.cropped([im.to(device) for im in IMAGES], BOXES, SIZE), IMAGES, BOXES


def _stacked(device):
    batch, boxes = _same_size(BOXES)
    return windows.cropped(batch.to(device), boxes, SIZE), list(batch), boxes


def _shipped(device):
    return windows.packed(_packed(IMAGES, BOXES).to(device), BOXES[:, 2:], SIZE), IMAGES, BOXES


# how a batch's windows come -> (resized on a device, the images and boxes it resized)
ARRIVALS = {"files decoded, each its own size": _decoded, "a stacked batch": _stacked,
            "crops packed by the loader": _shipped}


@pytest.mark.parametrize("arrival", ARRIVALS)
def test_per_image_on_a_cpu_is_torchvisions_uint8_resize_bit_for_bit(arrival):
    got, images, boxes = ARRIVALS[arrival]("cpu")
    assert torch.equal(got, _expected(images, boxes, uint8=True))


@pytest.mark.parametrize("chunk", [windows.BUDGET, 3 * 56 * 240], ids=["one chunk", "chunks of a few images"])
@pytest.mark.parametrize("arrival", ARRIVALS)
def test_batched_is_torchvisions_resize_in_floats_within_rounding(batched, monkeypatch, arrival, chunk):
    monkeypatch.setattr(windows, "BUDGET", chunk)
    got, images, boxes = ARRIVALS[arrival]("cpu")
    diff = (got.int() - _expected(images, boxes, uint8=False).int()).abs()
    assert got.shape == (len(boxes), 3, *SIZE) and got.dtype == torch.uint8
    assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-3, (int(diff.max()), float((diff > 0).float().mean()))
    # against the CPU's uint8 kernel (fixed-point weights): off by one here and there, never more
    assert (got.int() - _expected(images, boxes, uint8=True).int()).abs().max() <= 1


# spec -> the largest difference: the resize's rounding, one grey level, which ColorJitter's factors and
# truncations then carry (to 4 levels on under 2% of pixels)
SPECS = {'["rrc", "hflip"]': 1, '["hflip", "rrc"]': 1, '["rrc", "hflip", "jitter"]': 4}


@pytest.mark.parametrize("spec", SPECS)
def test_the_devices_batched_crops_are_the_loaders_within_rounding(batched, spec):
    from tests.test_device_augment import _both

    on_loader, on_device, _ = _both(spec)
    diff = (on_loader.int() - on_device.int()).abs()
    assert diff.max() <= SPECS[spec] and diff.float().mean() < 0.25, (int(diff.max()), float(diff.float().mean()))


def test_a_batch_costs_a_few_dozen_operations_not_four_per_image(monkeypatch):
    """What a GPU pays for, launches: counted as the aten operations dispatched, on the meta device (no
    data, the accelerators' float path of torchvision's resize)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.calls += not func.is_view  # a view launches nothing
            return func(*args, **(kwargs or {}))

    def calls(n: int, per_image: tuple) -> int:
        monkeypatch.setattr(windows, "PER_IMAGE_ON", per_image)
        shapes = np.tile(np.array([[200, 150], [120, 256]]), (n // 2, 1))
        flat = torch.empty(int(shapes.prod(1).sum()) * 3, dtype=torch.uint8, device="meta")
        Count.calls = 0
        with Count():
            windows.packed(flat, shapes, (224, 224))
        return Count.calls

    assert calls(256, ()) == calls(16, ())  # the same count whatever the batch size (one chunk)
    assert calls(256, ("meta",)) >= 4 * 256 > 8 * calls(256, ())


def test_a_crop_resized_other_than_bilinear_and_antialiased_stays_in_the_loader():
    from torchvision.transforms import v2

    from bench.data.device_augment import Replay

    with pytest.raises(ValueError, match='bilinear and antialiased only; set train.augment_on = "loader"'):
        Replay(v2.RandomResizedCrop(56, interpolation=v2.InterpolationMode.BICUBIC))
    Replay(v2.RandomResizedCrop(56, antialias=True))  # bench's own
