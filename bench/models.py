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

    min_size = 1  # smallest image side its forward accepts (the registry test checks it)

    def __init__(self, num_classes: int, image_size: int, hidden: int = 255):
        super().__init__()
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(3 * image_size * image_size, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@register(BUILTINS, "cifar_cnn")
class CifarCNN(nn.Module):
    """Study 004's CNN from the PyTorch CIFAR-10 tutorial: two 5x5 convs with max-pooling, then 120-84-n."""

    min_size = 16

    def __init__(self, num_classes: int, image_size: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        )
        side = ((image_size - 4) // 2 - 4) // 2
        if side < 1:
            raise UserError(f"bench:cifar_cnn needs image_size >= 16, got {image_size}", key="data.image_size")
        self.classifier = nn.Sequential(nn.Linear(16 * side * side, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU())
        self.head = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.classifier(self.features(x)))


@register(BUILTINS, "small_cnn")
class SmallCNN(nn.Module):
    """A from-scratch baseline that works at any size: three conv-BN-ReLU stages (32-64-128), global pooling."""

    min_size = 4

    def __init__(self, num_classes: int, width: int = 32):
        super().__init__()

        def stage(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.features = nn.Sequential(
            *stage(3, width), nn.MaxPool2d(2),
            *stage(width, 2 * width), nn.MaxPool2d(2),
            *stage(2 * width, 4 * width),
        )
        self.global_pool = nn.AdaptiveAvgPool2d(1)  # a module of its own, so that model.pool can swap it
        self.head = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.global_pool(self.features(x)).flatten(1))


def _flat_side(arch: str, image_size: int, pools: int) -> int:
    side = image_size >> pools
    if side < 1:
        raise UserError(f"{arch} needs image_size >= {1 << pools}, got {image_size}", key="data.image_size")
    return side


def _conv_relu(cin: int, cout: int, k: int = 3) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, padding=k // 2), nn.ReLU(inplace=True)]  # 'same' padding, stride 1


@register(BUILTINS, "shallow_cnn")
class ShallowCNN(nn.Module):
    """Study 000's first CNN: two 3x3 conv layers (8, 16 filters) with max-pooling, a 16-unit dense layer.
    Most weights sit in that dense layer, which reads the flattened maps (620k params at 200 px, 100 classes)."""

    min_size = 4

    def __init__(self, num_classes: int, image_size: int):
        super().__init__()
        side = _flat_side("bench:shallow_cnn", image_size, 2)
        self.features = nn.Sequential(*_conv_relu(3, 8), nn.MaxPool2d(2), *_conv_relu(8, 16), nn.MaxPool2d(2),
                                      nn.Flatten())
        self.classifier = nn.Sequential(nn.Linear(16 * side * side, 16), nn.ReLU(inplace=True))
        self.head = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.classifier(self.features(x)))


@register(BUILTINS, "deep_cnn")
class DeepCNN(nn.Module):
    """Study 000's chosen deeper CNN: four 3x3 conv layers (16-32-64-128 filters), each followed by
    max-pooling, then a 256-unit dense layer (4.8M params at 200 px, 100 classes; the study: "almost 5M").
    Its regularised version adds dropout 0.5 after the dense layers: model.head_dropout = 0.5."""

    min_size = 16

    def __init__(self, num_classes: int, image_size: int):
        super().__init__()
        side = _flat_side("bench:deep_cnn", image_size, 4)
        convs: list[nn.Module] = []
        for cin, cout in ((3, 16), (16, 32), (32, 64), (64, 128)):
            convs += [*_conv_relu(cin, cout), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*convs, nn.Flatten())
        self.classifier = nn.Sequential(nn.Linear(128 * side * side, 256), nn.ReLU(inplace=True))
        self.head = nn.Linear(256, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.classifier(self.features(x)))


class InceptionModule(nn.Module):
    """GoogLeNet's module: 1x1, 1x1->3x3, 1x1->5x5 and 3x3-maxpool->1x1 branches, concatenated.
    (torchvision's own Inception block uses 3x3 where the paper has 5x5, so it is not reused here.)"""

    def __init__(self, cin: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, cp: int):
        super().__init__()
        self.b1 = nn.Sequential(*_conv_relu(cin, c1, 1))
        self.b3 = nn.Sequential(*_conv_relu(cin, c3r, 1), *_conv_relu(c3r, c3, 3))
        self.b5 = nn.Sequential(*_conv_relu(cin, c5r, 1), *_conv_relu(c5r, c5, 5))
        self.bp = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), *_conv_relu(cin, cp, 1))
        self.out_channels = c1 + c3 + c5 + cp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(x)], 1)


@register(BUILTINS, "inception_cnn")
class InceptionCNN(nn.Module):
    """Study 002's inception-like CNN: a conv stem, two inception modules (1x1 reductions before the 3x3
    and 5x5 convolutions), global average pooling and a dense softmax layer. The study put dropout before
    that layer: model.head_dropout."""

    min_size = 4

    def __init__(self, num_classes: int):
        super().__init__()
        m1 = InceptionModule(32, 32, 48, 64, 8, 16, 16)
        m2 = InceptionModule(m1.out_channels, 64, 64, 96, 16, 48, 32)
        self.features = nn.Sequential(*_conv_relu(3, 32), nn.MaxPool2d(2), m1, nn.MaxPool2d(2), m2)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(m2.out_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.global_pool(self.features(x)).flatten(1))


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
HEAD_ACTIVATIONS = ("relu", "gelu", "silu", "tanh", "elu", "leaky_relu")  # parameter-free, via timm
POOLS = ("avg", "max", "avgmax")  # timm's SelectAdaptivePool2d types; avgmax = (avg + max) / 2


class Head(nn.Sequential):
    """The classifier when model.head_hidden or model.head_dropout is set: [dropout, linear, activation]
    per hidden layer, then dropout and the class layer (Keras-style dense head, as in studies 000 and 002)."""

    def __init__(self, in_features: int, num_classes: int, hidden: tuple[int, ...] = (),
                 activation: str = "relu", dropout: float = 0.0):
        from timm.layers import get_act_layer

        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Dropout(dropout), nn.Linear(in_features, width), get_act_layer(activation)()]
            in_features = width
        super().__init__(*layers, nn.Dropout(dropout), nn.Linear(in_features, num_classes))

    @property
    def out_features(self) -> int:  # as a Linear classifier's, for code that asks the class count
        return self[-1].out_features


def head_name(model: nn.Module) -> str:
    """Dotted name of the classifier: a bench Head, else timm's own answer, else the last Linear/Conv2d."""
    for name, module in model.named_modules():
        if isinstance(module, Head):
            return name
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


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


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
    _set(model, name, new)


def set_pool(model: nn.Module, arch: str, num_classes: int, pool: str) -> None:
    """Global pooling of the backbone's last feature map. timm models take it through reset_classifier;
    torchvision and bench models where it is a module of its own (`avgpool`, `global_pool`) have it replaced
    by timm's SelectAdaptivePool2d. Models that flatten a spatial map (AlexNet, VGG, the flattening
    built-ins) or pool inside forward() (DenseNet, MobileNetV2, ShuffleNet, SqueezeNet) have no such
    module: a UserError."""
    from timm.layers import SelectAdaptivePool2d

    if split_arch(arch)[0] == "timm":
        try:
            model.reset_classifier(num_classes, global_pool=pool)
        except (AssertionError, ValueError, TypeError, NotImplementedError) as e:
            raise UserError(f"{arch} does not take pool '{pool}' ({e or type(e).__name__})", key="model.pool",
                            hint="leave model.pool unset for the architecture's own pooling") from None
        return
    for attr in ("avgpool", "global_pool"):
        old = getattr(model, attr, None)
        if isinstance(old, nn.AdaptiveAvgPool2d) and old.output_size in (1, (1, 1)):
            setattr(model, attr, SelectAdaptivePool2d(pool_type=pool, flatten=False))
            return
    raise UserError(f"{arch} has no global pooling module to replace", key="model.pool",
                    hint="leave model.pool unset: this architecture flattens or pools inside forward()")


def build_head(model: nn.Module, arch: str, num_classes: int, *, pool: str | None = None,
               hidden: tuple[int, ...] = (), activation: str = "relu", dropout: float = 0.0) -> None:
    """Apply the model.pool / model.head_* options to a model that already has a `num_classes` classifier.
    With none set the model is left as created (a plain Linear classifier)."""
    if pool is not None:
        set_pool(model, arch, num_classes, pool)
    if not hidden and dropout == 0:
        return
    name = head_name(model)
    old = model.get_submodule(name)
    if not isinstance(old, nn.Linear):
        raise UserError(f"{arch} classifies with a {type(old).__name__}, not a linear layer",
                        key="model.head_hidden", hint="leave model.head_hidden and model.head_dropout unset")
    _set(model, name, Head(old.in_features, num_classes, tuple(hidden), activation, dropout))


# --------------------------------------------------------------------------------------------- freezing
FREEZE_MODES = "none, all_but_head, features, first:N, last:N or last_conv:N"


def layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The units that first:N and last:N count: modules holding weights of their own (conv, linear, norm),
    in definition order, the classifier head excluded."""
    head = head_name(model)
    return [(n, m) for n, m in model.named_modules()
            if n and not (n == head or n.startswith(head + "."))
            and any(True for _ in m.parameters(recurse=False))]


def frozen_layers(model: nn.Module, mode: str) -> list[tuple[str, nn.Module]]:
    """The backbone layers a freeze mode freezes (see README, "Models, heads, freezing and staged cells")."""
    backbone = layers(model)
    if mode == "none":
        return []
    if mode in ("all_but_head", "features"):
        return backbone
    kind, _, n = mode.partition(":")
    count = int(n)
    if kind == "last_conv":
        convs = [i for i, (_, m) in enumerate(backbone) if isinstance(m, nn.modules.conv._ConvNd)]
        if count > len(convs):
            raise UserError(f"'{mode}' asks for {count} convolutions but the backbone has {len(convs)}",
                            key="model.freeze", hint=f"use N <= {len(convs)}")
        return backbone[: convs[len(convs) - count]] if count else backbone
    if count > len(backbone):
        raise UserError(f"'{mode}' asks for {count} layers but the backbone has {len(backbone)}",
                        key="model.freeze", hint=f"use N <= {len(backbone)}")
    return backbone[:count] if kind == "first" else backbone[: len(backbone) - count]


def apply_freeze(model: nn.Module, mode: str) -> None:
    """Set requires_grad per the freeze mode. The head always trains."""
    for _, module in frozen_layers(model, mode):
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
