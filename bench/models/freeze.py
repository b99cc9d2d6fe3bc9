"""Freezing (model.freeze): the layers its modes count, which of them a mode freezes, a training mode that
leaves frozen normalisation layers alone; and the parameter counts a result records."""

from __future__ import annotations

from torch import nn

from bench.errors import UserError
from bench.models.heads import head_name


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
