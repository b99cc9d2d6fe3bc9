"""What a model sees of a stored image. The decoded cache keeps each image whole (its shorter side at
data.cache_size); evaluation resizes the shorter side to image_size / data.crop_pct and centre-crops
image_size, as timm's `transforms_imagenet_eval` and torchvision's Resize + CenterCrop do; a training
transform that opens with a random resized crop draws it from the whole image (torchvision's scale and ratio
rules, the recipe of the papers), any other starts from the evaluation view.
"""

from __future__ import annotations

import numpy as np
import torch


def _centre(h: int, w: int, size: int) -> tuple[int, int]:
    """Top and left of a centred size x size window, rounded as torchvision's center_crop rounds them."""
    return int(round((h - size) / 2.0)), int(round((w - size) / 2.0))


def tensor(image: np.ndarray) -> torch.Tensor:
    """An H x W x 3 uint8 array (a view into the cache, read-only) as a C x H x W tensor of its own."""
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)


def evaluation(image: np.ndarray, size: int, scale: int) -> np.ndarray:
    """H x W x 3 stored -> size x size x 3: the shorter side to `scale` (bilinear, antialiased), centre crop.
    An image stored at that scale already (the default data.cache_size) is only cropped: a view, no copy,
    no second resize."""
    h, w = image.shape[:2]
    if min(h, w) == scale:
        top, left = _centre(h, w, size)
        return image[top:top + size, left:left + size]
    return evaluated_tensor(tensor(image), size, scale).permute(1, 2, 0).numpy()


def evaluated_tensor(image: torch.Tensor, size: int, scale: int) -> torch.Tensor:
    """evaluation() of a C x H x W tensor, on its device."""
    from torchvision.transforms.v2 import functional  # here: a process that only crops need not import it

    if min(image.shape[-2:]) != scale:
        image = functional.resize(image, scale, antialias=True)
    return functional.center_crop(image, [size, size])


def batch(images: list[np.ndarray]) -> torch.Tensor:
    """Same-sized H x W x 3 arrays as one N x C x H x W uint8 tensor: one copy to stack them, one to lay them
    out channels first."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def draws_whole(transform) -> bool:
    """Whether a training transform opens with a random resized crop, which then draws from the whole image."""
    from torchvision.transforms import v2

    first = transform.transforms[0] if isinstance(transform, v2.Compose) else transform
    return isinstance(first, v2.RandomResizedCrop)
