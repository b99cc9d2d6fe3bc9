"""model.freeze = "last_conv:N" counts convolutions in the order the forward pass runs them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bench.models.freeze import apply_freeze, execution_order, frozen_layers, layers


def _trainable_modules(model: nn.Module) -> set[str]:
    return {n.rsplit(".", 1)[0] for n, p in model.named_parameters() if p.requires_grad}


def _convs(units) -> list[str]:
    return [n for n, m in units if isinstance(m, nn.modules.conv._ConvNd)]


class ShortcutFirst(nn.Module):
    """A residual block whose shortcut convolution is defined after the main path but runs before it."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.shortcut = nn.Conv2d(4, 4, 1)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        x = self.stem(x)
        s = self.shortcut(x)
        x = self.conv2(self.conv1(x)) + s
        return self.head(x.mean((2, 3)))


def test_last_conv_follows_execution_not_definition_order():
    model = ShortcutFirst()
    assert _convs(layers(model)) == ["stem", "conv1", "conv2", "shortcut"]  # definition order
    assert _convs(execution_order(model)) == ["stem", "shortcut", "conv1", "conv2"]
    apply_freeze(model, "last_conv:2")
    # the last two convolutions run are conv1 and conv2; the shortcut ran before them and is frozen
    assert _trainable_modules(model) == {"conv1", "conv2", "head"}


def test_torchvision_resnet18_last_conv():
    """torchvision's BasicBlock defines and runs its downsample convolution after conv1 and conv2, so in
    layer4 the convolutions run conv1, conv2, downsample.0 (block 0), then conv1, conv2 (block 1)."""
    import torchvision

    model = torchvision.models.resnet18(weights=None, num_classes=3)
    order = _convs(execution_order(model, 32))
    assert order[-5:] == ["layer4.0.conv1", "layer4.0.conv2", "layer4.0.downsample.0",
                          "layer4.1.conv1", "layer4.1.conv2"]
    apply_freeze(model, "last_conv:1")
    assert _trainable_modules(model) == {"layer4.1.conv2", "layer4.1.bn2", "fc"}
    model = torchvision.models.resnet18(weights=None, num_classes=3)
    apply_freeze(model, "last_conv:3")
    assert _trainable_modules(model) == {"layer4.0.downsample.0", "layer4.0.downsample.1", "layer4.1.conv1",
                                         "layer4.1.bn1", "layer4.1.conv2", "layer4.1.bn2", "fc"}


def test_timm_shortcut_defined_first_runs_last():
    """timm's ByobNet bottleneck (gernet_s) defines its shortcut convolution before conv1-conv3 and adds it
    after them: last_conv:2 is that shortcut (then final_conv), where definition order would give conv3."""
    from bench.models.factory import skeleton

    model = skeleton("timm:gernet_s", 3, 64)  # meta device: shapes only
    assert _convs(layers(model))[-5:-1] == ["stages.4.0.shortcut.conv", "stages.4.0.conv1_1x1.conv",
                                            "stages.4.0.conv2_kxk.conv", "stages.4.0.conv3_1x1.conv"]
    frozen = {n for n, _ in frozen_layers(model, "last_conv:2", 64)}
    assert "stages.4.0.shortcut.conv" not in frozen and "final_conv.conv" not in frozen
    assert {"stages.4.0.conv1_1x1.conv", "stages.4.0.conv2_kxk.conv", "stages.4.0.conv3_1x1.conv"} <= frozen


def test_the_probe_leaves_the_model_alone_and_falls_back_to_definition_order():
    model = ShortcutFirst().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    execution_order(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training and all(p.device.type == "cpu" for p in model.parameters())

    class Broken(ShortcutFirst):
        def forward(self, x):
            raise RuntimeError("no forward")

    broken = Broken()
    assert [n for n, _ in execution_order(broken)] == [n for n, _ in layers(broken)]
    with pytest.raises(Exception, match="backbone has 4"):
        apply_freeze(Broken(), "last_conv:5")
