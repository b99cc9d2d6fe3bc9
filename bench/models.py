"""Architectures from three registries behind one name: `timm:<name>`, `tv:<name>`, `bench:<name>`.

Also owns what every architecture needs alike: hub weights (with a clear error offline), the
classifier head (found and replaced for the class count), and freezing.
"""

from __future__ import annotations

import fnmatch
import os
import socket
from collections.abc import Callable
from functools import cache

import torch
from torch import nn

from bench.errors import UserError, did_you_mean
from bench.registry import register

PREFIXES = ("timm", "tv", "bench")
BUILTINS: dict[str, Callable[..., nn.Module]] = {}


# --------------------------------------------------------------------------------------------- built-ins
@register(BUILTINS, "mlp")
class MLP(nn.Module):
    """Study 004's baseline: the flattened image into one hidden layer of 255 ReLU units."""

    def __init__(self, num_classes: int, image_size: int, hidden: int = 255):
        super().__init__()
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(3 * image_size * image_size, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@register(BUILTINS, "cifar_cnn")
class CifarCNN(nn.Module):
    """Study 004's CNN from the PyTorch CIFAR-10 tutorial: two 5x5 convs with max-pooling, then 120-84-n."""

    def __init__(self, num_classes: int, image_size: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        )
        side = ((image_size - 4) // 2 - 4) // 2
        if side < 1:
            raise UserError(f"bench:cifar_cnn needs image_size >= 14, got {image_size}", key="data.image_size")
        self.classifier = nn.Sequential(nn.Linear(16 * side * side, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU())
        self.head = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.classifier(self.features(x)))


@register(BUILTINS, "small_cnn")
class SmallCNN(nn.Module):
    """A from-scratch baseline that works at any size: three conv-BN-ReLU stages (32-64-128), global pooling."""

    def __init__(self, num_classes: int, width: int = 32):
        super().__init__()

        def stage(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.features = nn.Sequential(
            *stage(3, width), nn.MaxPool2d(2),
            *stage(width, 2 * width), nn.MaxPool2d(2),
            *stage(2 * width, 4 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


# --------------------------------------------------------------------------------------------- names
def split_arch(arch: str) -> tuple[str, str]:
    prefix, sep, name = arch.partition(":")
    if not sep or prefix not in PREFIXES:
        raise ValueError(f"'{arch}' needs a registry prefix: timm:<name>, tv:<name> or bench:<name>")
    return prefix, name


@cache
def _tv_names() -> tuple[str, ...]:
    import torchvision

    return tuple(torchvision.models.list_models(module=torchvision.models))


def _names(prefix: str) -> list[str]:
    if prefix == "bench":
        return list(BUILTINS)
    if prefix == "tv":
        return list(_tv_names())
    import timm

    return timm.list_models()


def check_arch(arch: str) -> None:
    """Raise ValueError (pydantic turns it into a load-time error) for an unknown architecture."""
    prefix, name = split_arch(arch)
    if prefix == "timm":
        import timm

        if timm.is_model(name):
            return
    elif name in _names(prefix):
        return
    raise ValueError(f"unknown architecture '{arch}'; {did_you_mean(name, _names(prefix))} (see `bench models`)")


def list_archs(pattern: str = "*") -> list[str]:
    return [f"{p}:{n}" for p in PREFIXES for n in _names(p) if fnmatch.fnmatch(f"{p}:{n}", pattern)]


def accepts_image_size(arch: str) -> bool:
    """Built-ins whose weights depend on the input size (MLP, flattening CNNs) get it at construction."""
    prefix, name = split_arch(arch)
    if prefix != "bench":
        return False
    import inspect

    return "image_size" in inspect.signature(BUILTINS[name]).parameters


# --------------------------------------------------------------------------------------------- creation
def create_model(arch: str, num_classes: int, image_size: int, pretrained: bool = False) -> nn.Module:
    """A model with a fresh `num_classes` head; `pretrained=True` fetches hub weights for the backbone."""
    prefix, name = split_arch(arch)
    if prefix == "bench":
        if pretrained:
            raise UserError(f"{arch} has no hub weights", key="model.pretrained",
                            hint="use false, or the path to a weights file")
        kwargs = {"image_size": image_size} if accepts_image_size(arch) else {}
        return BUILTINS[name](num_classes=num_classes, **kwargs)
    if prefix == "timm":
        import timm

        if pretrained:
            _require_hub(arch, _timm_cached(name), "huggingface.co")
        try:
            return timm.create_model(name, pretrained=pretrained, num_classes=num_classes)
        except (OSError, RuntimeError) as e:
            if not pretrained:
                raise
            raise _download_error(arch, e) from None
    import torchvision

    extra = {"aux_logits": False} if name in ("inception_v3", "googlenet") else {}
    if not pretrained:
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **extra)
    weights = torchvision.models.get_model_weights(name).DEFAULT
    cached = os.path.exists(os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url)))
    _require_hub(arch, cached, "download.pytorch.org")
    try:
        model = torchvision.models.get_model(name, weights=weights, **extra)
    except OSError as e:
        raise _download_error(arch, e) from None
    replace_head(model, num_classes)
    return model


def _timm_cached(name: str) -> bool:
    import timm
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(name)
    hub_id = getattr(cfg, "hf_hub_id", None)
    return bool(hub_id) and any(isinstance(try_to_load_from_cache(hub_id, f), str)
                                for f in ("model.safetensors", "pytorch_model.bin"))


def _require_hub(arch: str, cached: bool, host: str) -> None:
    """Fail at once, not after minutes of retries, when the weights are neither cached nor reachable."""
    if cached:
        return
    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError:
        raise _download_error(arch, f"{host} is unreachable and the weights are not in the local cache") from None


def _download_error(arch: str, cause: object) -> UserError:
    first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    return UserError(f"cannot fetch pretrained weights for {arch} ({first})", key="model.pretrained",
                     hint="connect to the network once to fill the cache, or set it to a local weights file or false")


# --------------------------------------------------------------------------------------------- head
def head_name(model: nn.Module) -> str:
    """Dotted name of the classifier layer: timm's own answer, else the last Linear/Conv2d with weights."""
    if hasattr(model, "get_classifier") and hasattr(model, "reset_classifier"):
        classifier = model.get_classifier()
        for name, module in model.named_modules():
            if module is classifier and name:
                return name
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear | nn.Conv2d):
            last = name
    if last is None:
        raise UserError(f"cannot find a classifier layer in {type(model).__name__}", key="model.arch")
    return last


def replace_head(model: nn.Module, num_classes: int) -> None:
    if hasattr(model, "reset_classifier"):
        model.reset_classifier(num_classes)
        return
    name = head_name(model)
    old = model.get_submodule(name)
    if isinstance(old, nn.Conv2d):  # SqueezeNet classifies with a 1x1 conv
        new: nn.Module = nn.Conv2d(old.in_channels, num_classes, old.kernel_size, old.stride, old.padding)
    else:
        new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


# --------------------------------------------------------------------------------------------- freezing
def layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The units that first:N and last:N count: modules holding weights of their own (conv, linear, norm),
    in definition order, the classifier head excluded."""
    head = head_name(model)
    return [(n, m) for n, m in model.named_modules()
            if n and not (n == head or n.startswith(head + "."))
            and any(True for _ in m.parameters(recurse=False))]


def apply_freeze(model: nn.Module, mode: str) -> None:
    """Set requires_grad per the freeze mode. The head always trains."""
    if mode == "none":
        return
    backbone = layers(model)
    if mode == "all_but_head":
        frozen = backbone
    else:
        kind, _, n = mode.partition(":")
        count = int(n)
        if count > len(backbone):
            raise UserError(f"'{mode}' asks for {count} layers but the backbone has {len(backbone)}",
                            key="model.freeze", hint=f"use N <= {len(backbone)}")
        frozen = backbone[:count] if kind == "first" else backbone[: len(backbone) - count]
    for _, module in frozen:
        for p in module.parameters(recurse=False):
            p.requires_grad_(False)


def set_train_mode(model: nn.Module) -> None:
    """train(), but normalisation layers whose weights are frozen keep their ImageNet running statistics."""
    model.train()
    for m in model.modules():
        params = list(m.parameters(recurse=False))
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and params and not any(p.requires_grad for p in params):
            m.eval()


def count_params(model: nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable
