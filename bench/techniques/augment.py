"""Augmentation (torchvision.transforms.v2): presets and single ops, composed from what a suite writes.

`train.augment` is a preset name ("crop_flip"), one op ("rotate:15"), or a list of ops and presets,
each a string "name" / "name:value" (the value sets the op's first parameter) or an inline table
{op = "rotate", degrees = 15} that can set any parameter, or one of timm's policy strings
("rand-m9-mstd0.5-inc1", "augmix-m5-w4-d2", "original", "v0", "3a"), built by timm's own factories as its
train.py's --aa builds them. A transform takes one uint8 CHW tensor and
returns one uint8 CHW tensor of image_size: a list that opens with `rrc` gets the whole stored image, any
other the image_size evaluation view (bench.data.views);
it runs on the training split only, after the split, so no augmented copy can leak into val or test.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

from torchvision.transforms import v2

from bench.registry import register

AUGMENTS: dict = {}  # presets: name -> function(image_size) -> transform or None
AUGMENT_OPS: dict = {}  # single ops: name -> function(image_size, **params) -> transform


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


# ------------------------------------------------------------------------------------------ single ops
@register(AUGMENT_OPS, "hflip")
def hflip(image_size: int, p: float = 0.5):
    return v2.RandomHorizontalFlip(p)


@register(AUGMENT_OPS, "vflip")
def vflip(image_size: int, p: float = 0.5):
    return v2.RandomVerticalFlip(p)


@register(AUGMENT_OPS, "rotate")
def rotate(image_size: int, degrees: float = 15.0):
    """Uniform in [-degrees, degrees]; corners are filled with black."""
    return v2.RandomRotation(degrees)


@register(AUGMENT_OPS, "translate")
def translate(image_size: int, fraction: float = 0.1):
    """Shift by up to `fraction` of the side, in x and y."""
    return v2.RandomAffine(0, translate=(fraction, fraction))


@register(AUGMENT_OPS, "zoom")
def zoom(image_size: int, amount: float = 0.2):
    """Scale by a factor uniform in [1 - amount, 1 + amount], about the centre."""
    return v2.RandomAffine(0, scale=(1 - amount, 1 + amount))


@register(AUGMENT_OPS, "scale")
def scale(image_size: int, low: float = 0.8, high: float = 1.0):
    """Scale by a factor uniform in [low, high] (study 004: 0.8 to 1.0)."""
    return v2.RandomAffine(0, scale=(low, high))


@register(AUGMENT_OPS, "crop")
def crop(image_size: int, padding: int | None = None):
    """Reflect-pad (default 1/8 of image_size), random crop of image_size."""
    return v2.RandomCrop(image_size, padding=max(1, image_size // 8) if padding is None else padding,
                         padding_mode="reflect")


@register(AUGMENT_OPS, "rrc")
def rrc(image_size: int, min_scale: float = 0.08, max_scale: float = 1.0):
    """RandomResizedCrop (the ImageNet recipe): a crop of min_scale..max_scale of the area, resized."""
    return v2.RandomResizedCrop(image_size, scale=(min_scale, max_scale), antialias=True)


@register(AUGMENT_OPS, "jitter")
def jitter(image_size: int, strength: float = 0.2, hue: float = 0.0):
    """ColorJitter with brightness, contrast and saturation all `strength`."""
    return v2.ColorJitter(brightness=strength, contrast=strength, saturation=strength, hue=hue)


@register(AUGMENT_OPS, "brightness")
def brightness(image_size: int, amount: float = 0.2):
    return v2.ColorJitter(brightness=amount)


@register(AUGMENT_OPS, "contrast")
def contrast(image_size: int, amount: float = 0.2):
    return v2.ColorJitter(contrast=amount)


@register(AUGMENT_OPS, "saturation")
def saturation(image_size: int, amount: float = 0.2):
    return v2.ColorJitter(saturation=amount)


@register(AUGMENT_OPS, "erasing")
@register(AUGMENT_OPS, "cutout")
def erasing(image_size: int, p: float = 0.25, max_area: float = 0.33):
    """Random erasing / cutout: with probability p, a rectangle of 2%..max_area of the image set to 0."""
    return v2.RandomErasing(p=p, scale=(0.02, max_area))


@register(AUGMENT_OPS, "randaugment")
def randaugment(image_size: int, magnitude: int = 9, num_ops: int = 2):
    return v2.RandAugment(num_ops=num_ops, magnitude=magnitude)


@register(AUGMENT_OPS, "trivialaugment")
def trivialaugment(image_size: int):
    return v2.TrivialAugmentWide()


@register(AUGMENT_OPS, "autoaugment")
def autoaugment(image_size: int, policy: str = "imagenet"):
    """AutoAugment with the policy learnt on imagenet, cifar10 or svhn."""
    return v2.AutoAugment(v2.AutoAugmentPolicy(policy))


@register(AUGMENT_OPS, "grayscale")
def grayscale(image_size: int, p: float = 0.2):
    """With probability p, the image in grey (kept in three channels), as timm's --grayscale-prob."""
    return v2.RandomGrayscale(p)


@register(AUGMENT_OPS, "blur")
def blur(image_size: int, p: float = 0.5, sigma_max: float = 2.0, sigma_min: float = 0.1, kernel: int | None = None):
    """With probability p, a Gaussian blur of sigma uniform in [sigma_min, sigma_max]; the kernel (odd)
    defaults to a tenth of the side, as SimCLR's (timm's --gaussian-blur-prob uses 23 px at 224)."""
    k = kernel if kernel is not None else max(3, image_size // 10) | 1
    return v2.RandomApply([v2.GaussianBlur(k, (sigma_min, sigma_max))], p=p)


# timm's policy strings: RandAugment, AugMix, AutoAugment (timm.data.auto_augment's config grammar)
TIMM_POLICY = re.compile(r"^(rand|augmix)(-[A-Za-z0-9.]+)*$|^(original|originalr|v0|v0r|3a)(-[A-Za-z0-9.]+)*$")


class TimmPolicy:
    """One of timm's PIL transforms on a uint8 CHW tensor (PIL in between, as timm's pipeline has it), with
    the parameters timm's transforms_imagenet_train gives it for this image size."""

    def __init__(self, config: str, image_size: int):
        from timm.data import IMAGENET_DEFAULT_MEAN
        from timm.data.auto_augment import (
            augment_and_mix_transform,
            auto_augment_transform,
            rand_augment_transform,
        )

        hparams = {"translate_const": int(image_size * 0.45),
                   "img_mean": tuple(min(255, round(255 * m)) for m in IMAGENET_DEFAULT_MEAN)}
        if config.startswith("rand"):
            self.policy = rand_augment_transform(config, hparams)
        elif config.startswith("augmix"):
            self.policy = augment_and_mix_transform(config, {**hparams, "translate_pct": 0.3})
        else:
            self.policy = auto_augment_transform(config, hparams)
        _guard_posterize(self.policy)
        self.config = config

    def __call__(self, image):
        return v2.functional.pil_to_tensor(self.policy(v2.functional.to_pil_image(image)))

    def __repr__(self) -> str:
        return f"TimmPolicy({self.config!r})"


def _posterize(img, bits_to_keep, **kwargs):
    """timm's posterize, and black where no bit is kept: what Pillow gave for 0 bits before Pillow 13, which
    refuses them. timm's increasing posterize asks for 0 bits at the top of its magnitude range (m10, or m9
    with mstd0.5 on ~0.1% of images), and a refused op would fail the cell in its first epoch."""
    from timm.data.auto_augment import posterize

    return img.point(lambda _: 0) if bits_to_keep < 1 else posterize(img, bits_to_keep, **kwargs)


def _guard_posterize(policy) -> None:
    """Every posterize op of a timm policy (RandAugment's and AugMix's ops, AutoAugment's sub-policies) guarded."""
    from timm.data.auto_augment import AugmentOp, posterize

    todo = [policy]
    while todo:
        item = todo.pop()
        if isinstance(item, AugmentOp):
            if item.aug_fn is posterize:
                item.aug_fn = _posterize
        elif isinstance(item, list | tuple):
            todo.extend(item)
        else:
            todo.extend(getattr(item, name) for name in ("ops", "policy") if hasattr(item, name))


# ------------------------------------------------------------------------------------------ parsing
def op_params(name: str) -> list[str]:
    return list(inspect.signature(AUGMENT_OPS[name]).parameters)[1:]


def _scalar(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_item(item: str | dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """'rotate:15' -> ('rotate', {'degrees': 15}); {op = 'rotate', degrees = 15} -> the same."""
    from bench.errors import did_you_mean

    if isinstance(item, str) and TIMM_POLICY.match(item):
        return item, {}
    if isinstance(item, dict):
        params = dict(item)
        name = params.pop("op", None)
        if not isinstance(name, str):
            raise ValueError(f"inline table {item} needs op = \"<name>\"")
    else:
        name, _, value = item.partition(":")
        params = {}
    if name in AUGMENTS:
        if params or (isinstance(item, str) and ":" in item):
            raise ValueError(f"preset '{name}' takes no parameters")
        return name, {}
    if name not in AUGMENT_OPS:
        raise ValueError(f"unknown augment '{name}'; {did_you_mean(name, [*AUGMENTS, *AUGMENT_OPS], limit=30)}")
    names = op_params(name)
    if isinstance(item, str) and value:
        if not names:
            raise ValueError(f"augment '{name}' takes no value (got '{item}')")
        params = {names[0]: _scalar(value)}
    defaults = {k: p.default for k, p in inspect.signature(AUGMENT_OPS[name]).parameters.items()}
    for key, v in params.items():
        if key not in names:
            raise ValueError(f"augment '{name}' has no parameter '{key}'; "
                             f"its parameters: {', '.join(names) or 'none'}")
        numeric = isinstance(defaults[key], int | float) or defaults[key] is None
        if numeric and not isinstance(v, int | float) or isinstance(v, bool):
            raise ValueError(f"augment '{name}': {key} must be a number (got {v!r})")
    return name, params


def check_augment(spec: str | list) -> None:
    """Build it once, so a bad value fails at load time (torchvision checks the ranges)."""
    build_augment(spec, 32)


def build_augment(spec: str | list, image_size: int):
    """The transform for train.augment, or None when there is nothing to do."""
    items = [spec] if isinstance(spec, str) else spec
    transforms = []
    for item in items:
        name, params = parse_item(item)
        try:
            if TIMM_POLICY.match(name):
                t = TimmPolicy(name, image_size)
            else:
                t = AUGMENTS[name](image_size) if name in AUGMENTS else AUGMENT_OPS[name](image_size, **params)
        except (TypeError, ValueError, KeyError, AssertionError) as e:  # timm's parser asserts and looks up
            raise ValueError(f"augment '{name}'" + (f" with {params}" if params else "") + f": {e!r}") from None
        if t is not None:
            transforms.append(t)
    if not transforms:
        return None
    return transforms[0] if len(transforms) == 1 else v2.Compose(transforms)
