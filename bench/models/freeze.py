"""Freezing (model.freeze): the layers its modes count, which of them a mode freezes, a training mode that
leaves frozen normalisation layers alone; and the parameter counts a result records."""

from __future__ import annotations

import copy

import torch
from torch import nn

from bench.errors import UserError
from bench.models.heads import head_name

PROBE_SIZES = (224, 299, 64, 32)  # input sides tried when the caller does not give the image size


def layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The units that first:N and last:N count: modules holding weights of their own (conv, linear, norm),
    in definition order, the classifier head excluded."""
    head = head_name(model)
    return [(n, m) for n, m in model.named_modules()
            if n and not (n == head or n.startswith(head + "."))
            and any(True for _ in m.parameters(recurse=False))]


def execution_order(model: nn.Module, image_size: int | None = None) -> list[tuple[str, nn.Module]]:
    """layers(model) in the order one forward pass first calls them: a branch defined after the main path
    but run before it (a shortcut convolution), or defined first and run last, takes its place in the
    computation. The pass runs on a copy of the model on the meta device (no memory, no arithmetic, the
    model itself untouched), at `image_size` or, without one, at the first of PROBE_SIZES the model
    accepts. A layer the pass never calls as a module (its weights used by its parent) follows the layer
    defined before it; a model that runs on none of the sizes keeps definition order."""
    units = layers(model)
    called = _first_calls(model, [m for _, m in units], (image_size,) if image_size else PROBE_SIZES)
    if called is None:
        return units
    keys, last = [], -1
    for i, (_, m) in enumerate(units):
        if m in called:
            last = called[m]
            keys.append((last, 0, i))
        else:
            keys.append((last, 1, i))
    return [units[i] for _, _, i in sorted(keys)]


def _first_calls(model: nn.Module, modules: list[nn.Module], sizes) -> dict[nn.Module, int] | None:
    """{module of `modules`: index of its first call} from a forward pass of a meta copy; None if none runs."""
    tensors = [*model.parameters(), *model.buffers()]
    try:
        memo = {id(t): (nn.Parameter(torch.empty_like(t, device="meta"), requires_grad=t.requires_grad)
                        if isinstance(t, nn.Parameter) else torch.empty_like(t, device="meta")) for t in tensors}
        twin = copy.deepcopy(model, memo)  # shares nothing with `model`; its weights are shapes only
    except Exception:  # a module that cannot be copied: definition order
        return None
    twin.eval()
    twins = dict(zip(model.modules(), twin.modules(), strict=True))
    for size in sizes:
        order: dict[nn.Module, int] = {}

        def note(m: nn.Module, order: dict = order) -> None:  # None: a pre-hook's result would replace the input
            order.setdefault(m, len(order))

        hooks = [twins[m].register_forward_pre_hook(lambda _twin, _args, m=m: note(m)) for m in modules]
        try:
            with torch.no_grad():
                twin(torch.empty(2, 3, size, size, device="meta"))
            return order
        except Exception:  # not this size (a flattening model), or an operation the meta device lacks
            continue
        finally:
            for h in hooks:
                h.remove()
    return None


def frozen_layers(model: nn.Module, mode: str, image_size: int | None = None) -> list[tuple[str, nn.Module]]:
    """The backbone layers a freeze mode freezes (see docs/models.md, "Freezing").
    first:N and last:N count layers in definition order; last_conv:N counts convolutions, and freezes the
    layers before the N-th last one, in execution order (see execution_order)."""
    if mode == "none":
        return []
    if mode in ("all_but_head", "features"):
        return layers(model)
    kind, _, n = mode.partition(":")
    count = int(n)
    if kind == "last_conv":
        backbone = execution_order(model, image_size)
        convs = [i for i, (_, m) in enumerate(backbone) if isinstance(m, nn.modules.conv._ConvNd)]
        if count > len(convs):
            raise UserError(f"'{mode}' asks for {count} convolutions but the backbone has {len(convs)}",
                            key="model.freeze", hint=f"use N <= {len(convs)}")
        return backbone[: convs[len(convs) - count]] if count else backbone
    backbone = layers(model)
    if count > len(backbone):
        raise UserError(f"'{mode}' asks for {count} layers but the backbone has {len(backbone)}",
                        key="model.freeze", hint=f"use N <= {len(backbone)}")
    return backbone[:count] if kind == "first" else backbone[: len(backbone) - count]


def apply_freeze(model: nn.Module, mode: str, image_size: int | None = None) -> None:
    """Set requires_grad per the freeze mode. The head always trains."""
    for _, module in frozen_layers(model, mode, image_size):
        for p in module.parameters(recurse=False):
            p.requires_grad_(False)


def set_train_mode(model: nn.Module) -> None:
    """train(), but normalisation layers whose weights are frozen keep their ImageNet running statistics,
    and dropout before a frozen layer does not drop: a frozen part of the network runs as it was trained
    (VGG's and AlexNet's fc6/fc7 under all_but_head, as a frozen Keras base), while the dropout that feeds
    a trainable layer, the head's own, still regularises it."""
    model.train()
    pending: list[nn.Module] = []  # dropout modules waiting for the next layer with weights
    for m in model.modules():
        params = list(m.parameters(recurse=False))
        frozen = bool(params) and not any(p.requires_grad for p in params)
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and frozen:
            m.eval()
        if isinstance(m, nn.modules.dropout._DropoutNd):
            pending.append(m)
        elif params:
            for d in pending if frozen else ():
                d.eval()
            pending = []


def count_params(model: nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable
