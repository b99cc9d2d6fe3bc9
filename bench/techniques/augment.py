"""Augmentation presets (torchvision.transforms.v2): name -> function(image_size) -> transform or None.

A transform takes one uint8 CHW tensor and returns one of the same size; it runs on the training
split only, after the split, so no augmented copy of an image can leak into validation or test.
"""

from __future__ import annotations

from torchvision.transforms import v2

from bench.registry import register

AUGMENTS: dict = {}


@register(AUGMENTS, "none")
def none(image_size: int):
    return None


@register(AUGMENTS, "flip")
def flip(image_size: int):
    return v2.RandomHorizontalFlip()


@register(AUGMENTS, "crop_flip")
def crop_flip(image_size: int):
    """The CIFAR recipe: pad by 1/8 with reflection, random crop back, horizontal flip."""
    return v2.Compose([
        v2.RandomCrop(image_size, padding=max(1, image_size // 8), padding_mode="reflect"),
        v2.RandomHorizontalFlip(),
    ])
