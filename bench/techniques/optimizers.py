"""Optimizers: name -> function(params, train_config) -> torch.optim.Optimizer, all by timm's factory.

The registry is filled by one loop over `timm.optim.list_optimizers()`: each name builds through
`timm.optim.create_optimizer_v2` with the suite's lr, weight_decay, momentum and, when set, betas and eps.
As in timm's own train script, the factory hands each setting only to optimizers that take it (momentum to
SGD-, LARS-, RMSprop-like ones, betas to Adam-like ones), so one [train] table serves a grid over optimizers.

timm's names `sgd`, `adam`, `adamw` and `rmsprop` were bench's own before timm's factory, and keep bench's
behaviour where timm's defaults differ (BENCH_SETTINGS): timm's sgd is Nesterov by default, bench's only with
train.nesterov; timm's rmsprop decays at alpha 0.9, bench's at torch's 0.99. Every number is otherwise the
torch constructor's, as before.

Left out (EXCLUDED), so that every registered name trains in bench's loop on any machine: timm's entries for
apex and bitsandbytes kernels (third-party, CUDA-only packages, not timm's implementations) and second-order
optimizers (adahessian: its backward needs create_graph=True, which bench's loop does not do).

Parameter groups (which tensors get weight decay, per-layer learning rates) come from timm's helpers too:
`no_decay_split` and `layer_decay_groups` below; `build_optimizer` puts them together with the schedule.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import timm.optim
import torch
from torch import nn

from bench.config import TrainConfig
from bench.errors import UserError
from bench.models.heads import head_param_ids
from bench.registry import register
from bench.techniques.schedules import SCHEDULES, BatchSchedule

OPTIMIZERS: dict = {}

_RMSPROPS = (torch.optim.RMSprop, timm.optim.RMSpropTF)  # the optimizers train.rmsprop_alpha sets

# name -> settings where bench's behaviour predates timm's factory and differs from its defaults
BENCH_SETTINGS: dict[str, Callable[[Any], dict[str, Any]]] = {
    "sgd": lambda cfg: {"nesterov": cfg.nesterov and cfg.momentum > 0},  # torch: no nesterov without momentum
    # Keras' RMSprop (study 000) uses rho = 0.9; bench has always run torch's default, 0.99, unless told
    "rmsprop": lambda cfg: {"alpha": 0.99 if cfg.rmsprop_alpha is None else cfg.rmsprop_alpha},
}


def _excluded(name: str) -> str | None:
    info = timm.optim.get_optimizer_info(name)
    if isinstance(info.opt_class, str):
        return f"needs {info.opt_class.split('.')[0]} (a CUDA-only third-party package)"
    if info.second_order:
        return "second order: its backward needs create_graph=True, which bench's training loop does not do"
    return None


EXCLUDED = {name: why for name in timm.optim.list_optimizers() if (why := _excluded(name))}


def optimizer_settings(name: str, cfg) -> dict[str, Any]:
    """The optimizer-specific keyword arguments a suite sets for `name`, beyond lr, weight_decay, momentum."""
    info = timm.optim.get_optimizer_info(name)
    kwargs: dict[str, Any] = {}
    if cfg.betas is not None and info.has_betas:
        if len(cfg.betas) != info.num_betas:
            raise UserError(f"{name} takes {info.num_betas} betas, not {len(cfg.betas)}", key="train.betas")
        kwargs["betas"] = tuple(cfg.betas)
    if cfg.eps is not None:
        kwargs["eps"] = cfg.eps  # timm's factory drops it for optimizers without one
    if cfg.rmsprop_alpha is not None and info.opt_class in _RMSPROPS:
        kwargs["alpha"] = cfg.rmsprop_alpha
    return {**kwargs, **BENCH_SETTINGS.get(name, lambda cfg: {})(cfg)}


def _timm_optimizer(name: str) -> Callable[..., torch.optim.Optimizer]:
    def build(params, cfg) -> torch.optim.Optimizer:
        return timm.optim.create_optimizer_v2(params, opt=name, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                              momentum=cfg.momentum, **optimizer_settings(name, cfg))

    build.__doc__ = timm.optim.get_optimizer_info(name).description
    return build


for _name in timm.optim.list_optimizers():
    if _name not in EXCLUDED:
        register(OPTIMIZERS, _name)(_timm_optimizer(_name))


# ----------------------------------------------------------------------------------------- parameter groups
def _no_weight_decay(model: nn.Module) -> set[str]:
    """The model's own list of tensors never to decay (a ViT's pos_embed, cls_token), as timm's factory."""
    return set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()


def no_decay_split(model: nn.Module, groups: list[dict[str, Any]], weight_decay: float
                   ) -> list[dict[str, Any]]:
    """Split each group in two with timm's param_groups_weight_decay: biases, norm weights (every tensor of
    one dimension) and the model's no_weight_decay() list at weight_decay 0, in "<name>/no_decay"; the rest
    at weight_decay. timm's filter_bias_and_bn."""
    timm_groups = timm.optim.param_groups_weight_decay(model, weight_decay, weight_decay_exclude_1d=True,
                                                       no_weight_decay_list=_no_weight_decay(model))
    split = []
    for group in groups:
        for t in timm_groups:
            ids = {id(p) for p in t["params"]}
            params = [p for p in group["params"] if id(p) in ids]
            if params:
                name = group["name"] if t["weight_decay"] else f"{group['name']}/no_decay"
                split.append({**group, "params": params, "weight_decay": t["weight_decay"], "name": name})
    return split


def layer_decay_groups(model: nn.Module, cfg) -> list[dict[str, Any]]:
    """timm's layer-wise lr decay (BEiT's): the head at lr, each layer below it at lr x layer_decay^depth, the
    layers as the model's group_matcher() defines them. wd_norm_bias = false also keeps biases, norm weights
    and no_weight_decay() out of weight decay, in "/no_decay" groups, as timm's factory does."""
    if not hasattr(model, "group_matcher"):
        raise UserError(f"layer-wise lr decay needs a model that names its layers (timm's group_matcher); "
                        f"{type(model).__name__} does not", key="train.layer_decay",
                        hint="use a timm: architecture, or backbone_lr for one lower rate below the head")
    groups = timm.optim.param_groups_layer_decay(
        model, weight_decay=cfg.weight_decay, layer_decay=cfg.layer_decay,
        no_weight_decay_list=() if cfg.wd_norm_bias else _no_weight_decay(model),
        weight_decay_exclude_1d=not cfg.wd_norm_bias)
    # timm's groups carry lr_scale for its own schedulers to apply; bench's schedules scale each group's
    # initial lr, so the scale goes into the lr here (lr_scale stays, for the record)
    top = max(g["lr_scale"] for g in groups)
    for g in groups:
        depth = 0 if cfg.layer_decay == 1 else round(math.log(g["lr_scale"] / top, cfg.layer_decay))
        no_decay = "/no_decay" if cfg.weight_decay and not g["weight_decay"] else ""
        g.update(lr=cfg.lr * g["lr_scale"], name=f"depth_{depth}{no_decay}")
    return groups


def optimizer_record(optimizer: torch.optim.Optimizer, name: str) -> dict[str, Any]:
    """What result.json keeps of the optimizer: its class, the settings it ran with, and each group's lr
    (before the schedule), weight decay and size."""
    def plain(v: Any) -> bool:
        return isinstance(v, bool | int | float | str) or (
            isinstance(v, tuple) and all(isinstance(x, int | float) for x in v))

    cls = type(optimizer)
    return {
        "optimizer": {"name": name, "class": f"{cls.__module__}.{cls.__qualname__}",
                      "settings": {k: v for k, v in optimizer.defaults.items() if plain(v)}},
        "param_groups": [{"name": g.get("name", str(i)), "lr": g.get("initial_lr", g["lr"]),
                          "weight_decay": g["weight_decay"], "params": sum(p.numel() for p in g["params"])}
                         for i, g in enumerate(optimizer.param_groups)],
    }


# ----------------------------------------------------------------------------------------- the optimizer
def build_optimizer(model: nn.Module, cfg: TrainConfig, steps_per_epoch: int
                    ) -> tuple[torch.optim.Optimizer, BatchSchedule]:
    """Optimizer over the trainable parameters, by timm's factory, and a BatchSchedule (a LambdaLR stepped
    per optimizer step) that applies the schedule's multiplier, with warmup, to every group's lr.

    Groups: one ("all"); with backbone_lr the head at lr and the rest ("backbone") at backbone_lr; with
    layer_decay timm's per-layer groups ("depth_<d>", lr x layer_decay^d). wd_norm_bias = false moves
    biases, norm weights and the model's no_weight_decay() into "/no_decay" groups at weight_decay 0."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: every parameter is frozen")
    groups: list[dict[str, Any]] = [{"params": params, "lr": cfg.lr, "name": "all"}]
    if cfg.layer_decay is not None:
        groups = layer_decay_groups(model, cfg)
    elif cfg.backbone_lr is not None:
        head = head_param_ids(model)
        groups = [{"params": [p for p in params if id(p) not in head], "lr": cfg.backbone_lr, "name": "backbone"},
                  {"params": [p for p in params if id(p) in head], "lr": cfg.lr, "name": "head"}]
        groups = [g for g in groups if g["params"]]
    if not cfg.wd_norm_bias and cfg.layer_decay is None:  # timm's layer groups already split by decay
        groups = no_decay_split(model, groups, cfg.weight_decay)
    optimizer = OPTIMIZERS[cfg.optimizer](groups, cfg)
    steps_per_epoch = max(1, steps_per_epoch)
    total = steps_per_epoch * cfg.epochs
    schedule = SCHEDULES[cfg.schedule](cfg, steps_per_epoch, total)
    return optimizer, BatchSchedule(optimizer, schedule, round(cfg.warmup_epochs * steps_per_epoch))
