"""The studies' own networks, `bench:<name>`, written from their reports, and bench's default baseline.

Each registers in BUILTINS under its name and states `min_size`, the smallest image side its forward
accepts. The ones that flatten a feature map take `image_size` at construction (factory.accepts_image_size).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from bench.errors import UserError
from bench.registry import register

BUILTINS: dict[str, Callable[..., nn.Module]] = {}


class FlatteningCNN(nn.Module):
    """The Keras-era networks of the studies: `features` (convolutions, pooling, Flatten), a dense
    `classifier`, and the class layer `head` (the name bench's head and freeze code look for)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.classifier(self.features(x)))


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
class CifarCNN(FlatteningCNN):
    """Study 004's CNN from the PyTorch CIFAR-10 tutorial: two 5x5 convs with max-pooling, then 120-84-n;
    with `dropout` (model.kwargs), the study's two Dropout layers: after the second pooling and after the
    84-wide layer (its summary's Dropout-5 and Dropout-8)."""

    min_size = 16

    def __init__(self, num_classes: int, image_size: int, dropout: float = 0.0):
        super().__init__()
        drop = [nn.Dropout(dropout)] if dropout else []  # no module at 0: the weights keep their names
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), *drop, nn.Flatten(),
        )
        side = ((image_size - 4) // 2 - 4) // 2
        if side < 1:
            raise UserError(f"bench:cifar_cnn needs image_size >= 16, got {image_size}", key="data.image_size")
        self.classifier = nn.Sequential(nn.Linear(16 * side * side, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                                        *drop)
        self.head = nn.Linear(84, num_classes)


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
class ShallowCNN(FlatteningCNN):
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


@register(BUILTINS, "deeper_cnn")
class DeeperCNN(FlatteningCNN):
    """Study 000's second deep CNN, "even deeper", with "almost 6 million parameters, and a much deeper
    convolutional base": ten 3x3 convs in five stages (32-64-128-256-512 filters, two convs each), each
    stage max-pooled, then a 64-unit dense layer (5,898,436 params at 200 px, 100 classes). The report gives
    neither widths nor depth: these are bench's, chosen to match its two figures."""

    min_size = 32

    def __init__(self, num_classes: int, image_size: int):
        super().__init__()
        side = _flat_side("bench:deeper_cnn", image_size, 5)
        convs: list[nn.Module] = []
        cin = 3
        for cout in (32, 64, 128, 256, 512):
            convs += [*_conv_relu(cin, cout), *_conv_relu(cout, cout), nn.MaxPool2d(2)]
            cin = cout
        self.features = nn.Sequential(*convs, nn.Flatten())
        self.classifier = nn.Sequential(nn.Linear(512 * side * side, 64), nn.ReLU(inplace=True))
        self.head = nn.Linear(64, num_classes)


@register(BUILTINS, "plain_cnn")
class PlainCNN(FlatteningCNN):
    """Study 002's first CNN: three 3x3 conv layers (32-64-128 filters, 'same' padding) each followed by
    max-pooling, Flatten, a 128-unit dense layer, Dropout, and the class layer: 2.45M parameters at 96 px
    and 8 classes (the study: "almost 2.5 million"; it does not give the widths, these are the Keras
    tutorial's). The dropout rate is not given either: Keras' customary 0.5."""

    min_size = 8

    def __init__(self, num_classes: int, image_size: int, dropout: float = 0.5):
        super().__init__()
        side = _flat_side("bench:plain_cnn", image_size, 3)
        convs: list[nn.Module] = []
        for cin, cout in ((3, 32), (32, 64), (64, 128)):
            convs += [*_conv_relu(cin, cout), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*convs, nn.Flatten())
        self.classifier = nn.Sequential(nn.Linear(128 * side * side, 128), nn.ReLU(inplace=True), nn.Dropout(dropout))
        self.head = nn.Linear(128, num_classes)


@register(BUILTINS, "deep_cnn")
class DeepCNN(FlatteningCNN):
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
