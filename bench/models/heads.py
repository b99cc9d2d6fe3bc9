"""The classifier head: found the same way in every registry's models, replaced for the class count, and
rebuilt from the model.pool and model.head_* options."""

from __future__ import annotations

from torch import nn

from bench.errors import UserError
from bench.models.names import split_arch


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
    def out_features(self) -> int:  # as a Linear classifier's: callers need not know which head it is
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


def head_module(model: nn.Module) -> nn.Module:
    """The classifier itself (see head_name)."""
    return model.get_submodule(head_name(model))


def head_param_ids(model: nn.Module) -> set[int]:
    """The ids of the head's parameters: what a technique that treats the head apart tells it by."""
    return {id(p) for p in head_module(model).parameters()}


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
               hidden: tuple[int, ...] = (), activation: str = "relu", dropout: float = 0.0,
               replaces: str = "last", image_size: int | None = None) -> None:
    """Apply the model.pool / model.head_* options to a model that already has a `num_classes` classifier.
    With none set the model is left as created (a plain Linear classifier)."""
    if pool is not None:
        set_pool(model, arch, num_classes, pool)
    if replaces == "classifier":
        replace_classifier(model, arch, num_classes, hidden, activation, dropout, image_size)
        return
    if not hidden and dropout == 0:
        return
    name = head_name(model)
    old = model.get_submodule(name)
    if not isinstance(old, nn.Linear):
        raise UserError(f"{arch} classifies with a {type(old).__name__}, not a linear layer",
                        key="model.head_hidden", hint="leave model.head_hidden and model.head_dropout unset")
    _set(model, name, Head(old.in_features, num_classes, tuple(hidden), activation, dropout))


def replace_classifier(model: nn.Module, arch: str, num_classes: int, hidden: tuple[int, ...], activation: str,
                       dropout: float, image_size: int | None) -> None:
    """model.head_replaces = "classifier": VGG's and AlexNet's dense classifier (fc6, fc7 and the class
    layer) and the adaptive pooling before it make way for bench's Head, which then reads the convolutional
    base's output flattened as it is — Keras' include_top=False and Flatten, the study-000 "presence maps"
    (torchvision's pooling would stretch a 6x6 map of a 200 px image to 7x7)."""
    import torch

    classifier = getattr(model, "classifier", None)
    linears = [m for m in classifier.modules() if isinstance(m, nn.Linear)] if isinstance(classifier, nn.Module) else []
    if len(linears) < 2 or not isinstance(getattr(model, "features", None), nn.Module) \
            or not hasattr(model, "avgpool"):
        raise UserError(f"{arch} has no multi-layer dense classifier after a convolutional base (VGG's, AlexNet's)",
                        key="model.head_replaces", hint='use "last": the head then replaces its class layer')
    if image_size is None:
        raise ValueError("replace_classifier needs the image size to size the head")
    with torch.no_grad():
        channels, h, w = model.features(torch.zeros(1, 3, image_size, image_size, device="meta")).shape[1:]
    model.avgpool = nn.Identity()
    model.classifier = Head(channels * h * w, num_classes, tuple(hidden), activation, dropout)
