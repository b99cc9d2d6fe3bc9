"""Optimizers: name -> function(params, train_config) -> torch.optim.Optimizer."""

from __future__ import annotations

import torch

from bench.registry import register

OPTIMIZERS: dict = {}


@register(OPTIMIZERS, "sgd")
def sgd(params, cfg) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                           weight_decay=cfg.weight_decay)


@register(OPTIMIZERS, "adam")
def adam(params, cfg) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


@register(OPTIMIZERS, "adamw")
def adamw(params, cfg) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


@register(OPTIMIZERS, "rmsprop")
def rmsprop(params, cfg) -> torch.optim.Optimizer:
    # Keras' RMSprop (study 000) has no momentum by default; torch's eps sits outside the sqrt like Keras'.
    return torch.optim.RMSprop(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
