"""`[model]`: the architecture, its starting weights, the classifier head, and what trains."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator

from bench.config.base import Strict

FREEZE_MODES = ("none", "all_but_head", "features", "first:N", "last:N", "last_conv:N")  # N: a count
FREEZE_PATTERN = re.compile("^(" + "|".join(m.replace(":N", r":\d+") for m in FREEZE_MODES) + ")$")


class ModelConfig(Strict):
    """The network: architecture, starting weights, the classifier head, and what trains."""

    arch: str = Field("bench:small_cnn", description="`prefix:name`: `timm:<name>`, `tv:<name>` (torchvision) or "
                      "`bench:<name>` (the studies' own networks, see *Models, heads, freezing and staged "
                      "cells*); `bench models` lists them")
    pretrained: bool | str = Field(False, description="`false`: random initial weights; `true`: the hub's "
                                   "ImageNet weights (needs the network once, or a filled cache; offline it fails "
                                   "at once with a clear error); or a path to a local `.safetensors`/`.pt` state "
                                   "dict, whose classifier may have another class count or head")
    freeze: str = Field("none", description="what does not train: `none`; `all_but_head`; `features` (the frozen "
                        "backbone's features computed once and cached, the head trains on them); `first:N` (freeze "
                        "the first N layers); `last:N` (train only the last N layers and the head); `last_conv:N` "
                        "(train from the N-th last convolution on). For `first:N` and `last:N`, N counts *layers "
                        "with weights of their own* (convolutions, linear and normalisation layers) in definition "
                        "order, the head excluded; `last_conv:N` counts convolutions in the order the forward pass "
                        "runs them. Frozen BatchNorm layers stay in eval mode, keeping their running statistics")
    init_from: str | None = Field(None, description="the `label` of a `[[cells]]` entry: this cell starts from "
                                  "that cell's best weights (same seed, same grid values, same data set); parents "
                                  "run first. Unset: the weights `pretrained` gives")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the architecture's "
                                   "constructor (`timm.create_model`, torchvision's builders, a built-in), e.g. "
                                   "`{drop_path_rate = 0.1}`; a grid axis as "
                                   '`"model.kwargs.drop_path_rate" = [0.0, 0.1]`. One the architecture refuses '
                                   "is a one-line error listing what it accepts. Cells that differ only in "
                                   "keywords that add or reshape no weights (drop rates) share their initial "
                                   "weights")
    # the head, replacing the architecture's classifier (see the docs' *Models, heads, freezing and staged cells*)
    pool: Literal["avg", "max", "avgmax"] | None = Field(
        None, description="global pooling before the head: `avg`, `max` or `avgmax` (their mean); unset: the "
        "architecture's own. timm: any model whose `reset_classifier` takes it; torchvision and bench: models "
        "with a pooling module, an error otherwise")
    head_hidden: tuple[int, ...] = Field((), description="widths of dense layers between the pooled features and "
                                         "the class layer, e.g. `[1024]` (study 002); each ≥ 1")
    head_activation: Literal["relu", "gelu", "silu", "tanh", "elu", "leaky_relu"] = Field(
        "relu", description="the activation after each hidden layer of the head")
    head_dropout: float = Field(0.0, ge=0, lt=1, description="dropout before each linear layer of the head "
                                "(study 000: 0.5)")
    head_replaces: Literal["last", "classifier"] = Field(
        "last", description="`last`: the head replaces the class layer; `classifier`: VGG's and AlexNet's whole "
        "dense classifier (fc6, fc7) and adaptive pooling, so the head reads the convolutional base's flattened "
        "output (Keras' `include_top=False` + Flatten; study 000's feature extraction)")

    def head_options(self) -> dict[str, Any]:
        """bench.models.heads.build_head's keyword arguments."""
        return {"pool": self.pool, "hidden": self.head_hidden, "activation": self.head_activation,
                "dropout": self.head_dropout, "replaces": self.head_replaces}

    @field_validator("freeze")
    @classmethod
    def _freeze_syntax(cls, v: str) -> str:
        if not FREEZE_PATTERN.match(v):
            raise ValueError(f"'{v}' is not a freeze mode; use {', '.join(FREEZE_MODES[:-1])} or {FREEZE_MODES[-1]}")
        return v

    @field_validator("head_hidden")
    @classmethod
    def _positive_widths(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(w < 1 for w in v):
            raise ValueError("head_hidden widths must be >= 1, e.g. [256]")
        return v
