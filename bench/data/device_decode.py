"""data.decode = "device": a batch's JPEG files decoded on the training device (nvJPEG on a GPU, through
TorchCodec), turned as the host's decoding leaves them, and resized to their stored size."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import torch
from torchvision.transforms.v2 import functional as F

from bench.data import views


def orientation(file: np.ndarray) -> int:
    """A JPEG's EXIF orientation (1: as stored), read by Pillow from the APP1 segment that holds EXIF among
    those that open the file; walking the segments' lengths reads a few bytes, and Pillow that segment alone."""
    at = 2 if file[:2].tobytes() == b"\xff\xd8" else len(file)
    while at + 10 <= len(file) and file[at] == 0xFF and 0xE0 <= file[at + 1] <= 0xEF:
        end = at + 2 + (int(file[at + 2]) << 8 | int(file[at + 3]))
        if file[at + 1] == 0xE1 and file[at + 4:at + 10].tobytes() == b"Exif\x00\x00":
            from PIL import Image

            exif = Image.Exif()
            try:
                exif.load(file[at + 4:end].tobytes())
                return int(exif.get(0x0112, 1))
            except Exception:  # an unreadable EXIF block: as stored, as the host's decoding reads it
                return 1
        at = end
    return 1


# TorchCodec's decoders turn an image as its EXIF orientation says; the host's (Pillow without
# exif_transpose) and the stored sizes (the header's) do not: each orientation's turn, undone
UNTURN: dict[int, Callable[[torch.Tensor], torch.Tensor]] = {
    2: lambda im: im.flip(-1), 3: lambda im: im.flip(-2, -1), 4: lambda im: im.flip(-2),
    5: lambda im: im.transpose(-2, -1), 6: lambda im: torch.rot90(im, 1, (-2, -1)),
    7: lambda im: im.transpose(-2, -1).flip(-2, -1), 8: lambda im: torch.rot90(im, -1, (-2, -1))}


def decode(data: torch.Tensor, lengths: np.ndarray, shapes: np.ndarray, orientations: np.ndarray,
            device: torch.device) -> list[torch.Tensor]:
    """Files' bytes -> each image, RGB, at its stored (height, width) on `device`: JPEGs through TorchCodec's
    decode_jpeg on the device, as one batch (nvJPEG on a GPU; TorchCodec, whose image decoders torchvision
    0.29 deprecates its own for), their EXIF turn undone; any other format, or every JPEG of a batch the
    device's decoder refuses, by the host's own decoding (cache.load_image, its very pixels); the device's
    JPEGs are then resized there to their stored size (bilinear, antialiased)."""
    from torchcodec.decoders import decode_jpeg

    from bench.data.cache import load_image

    files = list(torch.split(data, lengths.tolist()))
    jpeg = [i for i, f in enumerate(files) if f[:2].tolist() == [0xFF, 0xD8]]
    images: list[torch.Tensor | None] = [None] * len(files)
    where = torch.device("cpu")  # TorchCodec's devices: the CPU, or a GPU named by its index
    if device.type == "cuda":
        where = torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)
    try:
        decoded = decode_jpeg([files[i] for i in jpeg], mode="RGB", device=where) if jpeg else []
        for i, im in zip(jpeg, decoded, strict=True):
            turn = UNTURN.get(int(orientations[i]))
            images[i] = (im if turn is None else turn(im)).to(device)
    except torch.OutOfMemoryError:
        raise
    except (RuntimeError, ValueError):  # a file the device's decoder refuses (a CMYK JPEG on nvJPEG) fails
        pass  # the batch: each is decoded below
    out = []
    for im, f, (h, w) in zip(images, files, shapes.tolist(), strict=True):
        if im is None:  # the stored size's shorter side is the size load_image keeps (or the image's own)
            im = views.tensor(load_image(io.BytesIO(f.numpy().tobytes()), min(h, w))).to(device)
        out.append(im if tuple(im.shape[-2:]) == (h, w) else F.resize(im, [h, w], antialias=True))
    return out
